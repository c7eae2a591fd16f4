//! What a worker started inside a batch-system allocation knows of it: Slurm's job id, the CPUs
//! the job has on this node, and how long the job has left (the master places a task with a
//! time request only where it fits).

use log::warn;
use protocol::{AllocationInfo, Manager};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `squeue` gets this long to say how much time the job has left.
const SQUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Slurm job this process runs in, from its environment (`SLURM_JOB_ID`), if any.
pub fn detect() -> Option<AllocationInfo> {
    let job_id = std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|id| !id.is_empty())?;
    let time_left_ms = match end_from_env() {
        Some(end) => Some(end),
        None => match squeue_time_left(&job_id) {
            Ok(left) => left,
            Err(e) => {
                warn!("slurm job {job_id}: cannot learn its time left ({e}); taken as unlimited");
                None
            }
        },
    };
    Some(AllocationInfo {
        manager: Manager::Slurm,
        job_id,
        time_left_ms,
    })
}

/// The CPUs Slurm gave this job on this node (`SLURM_CPUS_ON_NODE`): a worker's default slots.
pub fn cpus_on_node() -> Option<u32> {
    std::env::var("SLURM_CPUS_ON_NODE")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// Newer Slurm (23.02 and later) exports the job's end as Unix seconds.
fn end_from_env() -> Option<u64> {
    let end: u64 = std::env::var("SLURM_JOB_END_TIME")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(end.saturating_sub(now).saturating_mul(1_000))
}

/// `squeue -h -j ID -o %L`: the time the job has left, `None` when it has no limit.
fn squeue_time_left(job_id: &str) -> Result<Option<u64>, String> {
    let mut child = Command::new("squeue")
        .args(["-h", "-j", job_id, "-o", "%L"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run squeue: {}", protocol::Cause(&e)))?;
    let deadline = Instant::now() + SQUEUE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => return Err(format!("squeue failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("squeue gave no answer in {SQUEUE_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for squeue: {}", protocol::Cause(&e))),
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        // One short line; a longer answer is not the one asked for.
        let _ = out.by_ref().take(256).read_to_string(&mut text);
    }
    parse_time_left(text.trim())
}

/// Slurm's time format (`squeue %L`): `[days-]hours:minutes:seconds`, `minutes:seconds`, or
/// `UNLIMITED`/`NOT_SET` (no limit).
pub fn parse_time_left(text: &str) -> Result<Option<u64>, String> {
    if matches!(text, "UNLIMITED" | "NOT_SET" | "INFINITE") {
        return Ok(None);
    }
    let bad = || format!("unexpected time left {text:?}");
    let (days, clock) = match text.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().map_err(|_| bad())?, rest),
        None => (0, text),
    };
    let parts: Vec<u64> = clock
        .split(':')
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (h, m, s) = match parts[..] {
        [h, m, s] => (h, m, s),
        [m, s] => (0, m, s),
        [s] if days == 0 => (0, 0, s),
        _ => return Err(bad()),
    };
    let secs = ((days * 24 + h) * 60 + m) * 60 + s;
    Ok(Some(secs.saturating_mul(1_000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_times_parse() {
        assert_eq!(parse_time_left("4:59"), Ok(Some(299_000)));
        assert_eq!(parse_time_left("1:00:00"), Ok(Some(3_600_000)));
        assert_eq!(
            parse_time_left("2-03:04:05"),
            Ok(Some(((51 * 60 + 4) * 60 + 5) * 1_000))
        );
        assert_eq!(parse_time_left("UNLIMITED"), Ok(None));
        assert_eq!(parse_time_left("NOT_SET"), Ok(None));
        assert!(parse_time_left("soon").is_err());
        assert!(parse_time_left("1:2:3:4").is_err());
        assert!(parse_time_left("").is_err());
    }
}
