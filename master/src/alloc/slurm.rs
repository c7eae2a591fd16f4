//! Slurm's side of an allocation queue: the job script a queue submits, the `sbatch`, `squeue`
//! and `scancel` command lines, and reading their answers. Plain functions of their inputs.

use super::queues::Listed;
use protocol::QueueParams;
use std::path::{Path, PathBuf};

/// What every job script of a master needs beside the queue's settings.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The worker program (an absolute path where known).
    pub program: String,
    /// The address workers dial.
    pub master_addr: String,
    /// The token file (mode 0600, in the master's data dir), if the master has a token.
    pub token_file: Option<PathBuf>,
    /// The master's certificate, for `worker --tls-ca`, if it serves TLS.
    pub tls_ca: Option<PathBuf>,
}

/// The batch script of job `job_name`: one worker per node through `srun`.
pub fn job_script(
    job_name: &str,
    queue_name: &str,
    params: &QueueParams,
    launch: &WorkerLaunch,
) -> String {
    let mut argv: Vec<String> = vec![
        "srun".into(),
        "--ntasks-per-node=1".into(),
        launch.program.clone(),
        "--master".into(),
        launch.master_addr.clone(),
        "--idle-timeout".into(),
        format!("{}ms", params.idle_timeout_ms),
    ];
    if let Some(g) = &params.group {
        argv.extend(["--group".into(), g.clone()]);
    }
    if let Some(f) = &launch.token_file {
        argv.extend(["--token-file".into(), f.display().to_string()]);
    }
    if let Some(ca) = &launch.tls_ca {
        argv.extend(["--tls-ca".into(), ca.display().to_string()]);
    }
    if let (Some(cert), Some(key)) = (&params.worker_tls_cert, &params.worker_tls_key) {
        argv.extend([
            "--tls-cert".into(),
            cert.clone(),
            "--tls-key".into(),
            key.clone(),
        ]);
    }
    let line: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    format!(
        "#!/bin/sh\n# Written by the Ballast master: allocation queue {queue_name}, job {job_name}.\n\
         # The token, if any, is read from its file by the worker; it is never on a command line.\n\
         exec {}\n",
        line.join(" ")
    )
}

/// `sbatch` for the script at `script`.
pub fn sbatch_argv(
    job_name: &str,
    workers: u32,
    params: &QueueParams,
    script: &Path,
    output: &Path,
) -> Vec<String> {
    let mut argv = vec![
        "sbatch".to_string(),
        "--parsable".into(),
        format!("--job-name={job_name}"),
        format!("--nodes={workers}"),
        "--ntasks-per-node=1".into(),
        format!("--output={}", output.display()),
    ];
    if let Some(ms) = params.time_limit_ms {
        argv.push(format!("--time={}", slurm_time(ms)));
    }
    argv.extend(params.sbatch_args.iter().cloned());
    argv.push(script.display().to_string());
    argv
}

/// `squeue` listing these job names, one `id|name|state` line each.
pub fn squeue_argv(job_names: &[String]) -> Vec<String> {
    vec![
        "squeue".into(),
        "-h".into(),
        "-o".into(),
        "%i|%j|%T".into(),
        format!("--name={}", job_names.join(",")),
    ]
}

pub fn scancel_argv(job_ids: &[String]) -> Vec<String> {
    let mut argv = vec!["scancel".to_string()];
    argv.extend(job_ids.iter().cloned());
    argv
}

/// The job id in `sbatch --parsable`'s answer (`ID` or `ID;CLUSTER`).
pub fn parse_sbatch(stdout: &str) -> Result<String, String> {
    let line = stdout.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let id = line.trim().split(';').next().unwrap_or("");
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Err(format!(
            "sbatch printed no job id (stdout: {:?})",
            cut(stdout)
        ));
    }
    Ok(id.to_string())
}

/// `squeue -o %i|%j|%T` lines. Array or het jobs print one line per part: the first wins.
pub fn parse_squeue(stdout: &str) -> Vec<Listed> {
    let mut listed: Vec<Listed> = Vec::new();
    for line in stdout.lines() {
        let mut parts = line.trim().splitn(3, '|');
        let (Some(id), Some(name), Some(state)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if listed.iter().any(|l| l.job_name == name) {
            continue;
        }
        listed.push(Listed {
            job_name: name.to_string(),
            job_id: id.to_string(),
            state: state.to_string(),
        });
    }
    listed
}

/// Slurm's `--time` form, `D-HH:MM:SS`, rounded up to the second.
pub fn slurm_time(ms: u64) -> String {
    let s = ms.div_ceil(1_000).max(1);
    format!(
        "{}-{:02}:{:02}:{:02}",
        s / 86_400,
        s / 3_600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// A shell word that stands for `s` exactly.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The first 200 characters, for error messages.
pub fn cut(s: &str) -> &str {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Manager;

    fn params() -> QueueParams {
        QueueParams {
            manager: Manager::Slurm,
            max_workers: 2,
            workers_per_alloc: 1,
            time_limit_ms: Some(90_500),
            backlog: 1,
            idle_timeout_ms: 10_000,
            name: None,
            group: Some("gpu nodes".into()),
            sbatch_args: vec!["--partition=debug".into()],
            worker_program: None,
            master_addr: None,
            worker_tls_cert: Some("/home/u/w.pem".into()),
            worker_tls_key: Some("/home/u/w.key".into()),
        }
    }

    #[test]
    fn the_script_quotes_and_keeps_the_token_off_the_command_line() {
        let launch = WorkerLaunch {
            program: "/opt/ballast/worker".into(),
            master_addr: "head:7700".into(),
            token_file: Some("/data/alloc/token".into()),
            tls_ca: Some("/etc/it's.pem".into()),
        };
        let script = job_script("ballast-ab-1-1", "slurm-1", &params(), &launch);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(
            "exec srun --ntasks-per-node=1 /opt/ballast/worker --master head:7700 --idle-timeout \
             10000ms --group 'gpu nodes' --token-file /data/alloc/token --tls-ca '/etc/it'\\''s.pem' \
             --tls-cert /home/u/w.pem --tls-key /home/u/w.key"
        ), "{script}");
    }

    #[test]
    fn sbatch_gets_the_limits_then_the_extra_arguments_then_the_script() {
        let argv = sbatch_argv(
            "j",
            3,
            &params(),
            Path::new("/d/j.sh"),
            Path::new("/d/j.out"),
        );
        assert_eq!(
            argv,
            [
                "sbatch",
                "--parsable",
                "--job-name=j",
                "--nodes=3",
                "--ntasks-per-node=1",
                "--output=/d/j.out",
                "--time=0-00:01:31",
                "--partition=debug",
                "/d/j.sh"
            ]
        );
        assert_eq!(slurm_time(2 * 86_400_000 + 3_600_000), "2-01:00:00");
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_sbatch("123\n"), Ok("123".into()));
        assert_eq!(parse_sbatch("77;cluster\n"), Ok("77".into()));
        assert!(parse_sbatch("").is_err());
        assert!(parse_sbatch("Submitted batch job 5").is_err());
        let listed = parse_squeue("12|ballast-x-1-1|RUNNING\ngarbage\n13|ballast-x-1-2|PENDING\n");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].job_id, "13");
        assert_eq!(listed[1].state, "PENDING");
    }
}
