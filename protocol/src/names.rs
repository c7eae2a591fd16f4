//! Default job names: what a person would call a submission that was given no `--name`. Shared
//! by the CLI (which names every job it submits) and the master (which names a `Submit` that
//! came without one, e.g. from the HTTP API).

use crate::limits::MAX_JOB_NAME_BYTES;
use crate::messages::{TaskKind, TaskSpec};

/// The command line shell-quoted (`sh -c 'echo x'`), or `sleep 200ms` / `spin 1.5s` for a
/// synthetic task; cut to [`MAX_JOB_NAME_BYTES`] with `…` last.
pub fn job_name(spec: &TaskSpec) -> String {
    let mut name = String::new();
    match &spec.kind {
        TaskKind::Command { argv, .. } => {
            for arg in argv {
                if !name.is_empty() {
                    name.push(' ');
                }
                push_quoted(&mut name, arg, MAX_JOB_NAME_BYTES);
                if name.len() > MAX_JOB_NAME_BYTES {
                    break; // an argv may be a MiB: quote no more than is kept
                }
            }
        }
        TaskKind::Sleep { ms } => name = format!("sleep {}", duration(*ms)),
        TaskKind::Spin { ms } => name = format!("spin {}", duration(*ms)),
    }
    cut_name(&mut name);
    name
}

/// Cuts `name` to [`MAX_JOB_NAME_BYTES`] at a character boundary, `…` last, if it is longer.
pub fn cut_name(name: &mut String) {
    if name.len() <= MAX_JOB_NAME_BYTES {
        return;
    }
    let ellipsis = '…';
    let mut end = MAX_JOB_NAME_BYTES - ellipsis.len_utf8();
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name.push(ellipsis);
}

/// `250ms`, `3s`, `1.5s`, `2m`: as `--sleep` takes it.
fn duration(ms: u64) -> String {
    if ms >= 60_000 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms >= 1_000 && ms % 100 == 0 {
        format!("{}s", ms as f64 / 1e3)
    } else {
        format!("{ms}ms")
    }
}

/// Appends `arg` quoted for a POSIX shell: bare if made of safe characters, `'...'` if it has no
/// control characters, `$'...'` with escapes otherwise (a name or a table cell stays one line).
/// Only its first `max_chars` characters are quoted: a caller that keeps no more than that of a
/// long argument does not pay for the rest.
pub fn push_quoted(out: &mut String, arg: &str, max_chars: usize) {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    let shown = arg.chars().take(max_chars);
    if !arg.is_empty() && arg.chars().all(safe) {
        out.extend(shown);
    } else if !arg.chars().any(char::is_control) {
        out.push('\'');
        for c in shown {
            match c {
                '\'' => out.push_str(r"'\''"),
                c => out.push(c),
            }
        }
        out.push('\'');
    } else {
        out.push_str("$'");
        for c in shown {
            match c {
                '\\' => out.push_str(r"\\"),
                '\'' => out.push_str(r"\'"),
                '\n' => out.push_str(r"\n"),
                '\t' => out.push_str(r"\t"),
                '\r' => out.push_str(r"\r"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('\'');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(argv: &[&str]) -> TaskSpec {
        TaskSpec::new(TaskKind::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
        })
    }

    #[test]
    fn a_command_is_named_as_a_shell_would_take_it_back() {
        assert_eq!(
            job_name(&command(&["sh", "-c", "echo x"])),
            "sh -c 'echo x'"
        );
        assert_eq!(job_name(&command(&["echo", "it's"])), r"echo 'it'\''s'");
        assert_eq!(job_name(&command(&["printf", "a\nb"])), r"printf $'a\nb'");
        assert_eq!(job_name(&command(&["true", ""])), "true ''");
    }

    #[test]
    fn synthetic_tasks_are_named_by_kind_and_duration() {
        assert_eq!(
            job_name(&TaskSpec::new(TaskKind::Sleep { ms: 200 })),
            "sleep 200ms"
        );
        assert_eq!(
            job_name(&TaskSpec::new(TaskKind::Spin { ms: 1_500 })),
            "spin 1.5s"
        );
        assert_eq!(
            job_name(&TaskSpec::new(TaskKind::Sleep { ms: 120_000 })),
            "sleep 2m"
        );
    }

    #[test]
    fn a_long_command_line_is_cut_to_the_limit() {
        let long = "é".repeat(MAX_JOB_NAME_BYTES);
        let name = job_name(&command(&["echo", &long]));
        assert!(name.len() <= MAX_JOB_NAME_BYTES, "{}", name.len());
        assert!(name.starts_with("echo ") && name.ends_with('…'));
        let many: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(job_name(&command(&refs)).len() <= MAX_JOB_NAME_BYTES);
    }
}
