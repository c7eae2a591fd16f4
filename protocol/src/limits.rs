//! The size of everything that comes from outside, in one place. Each limit is enforced where the
//! value enters (the CLI and the master's `Submit`, the master's `Hello` check, the worker and the
//! master's `Finished` check), so nothing built from accepted values can outgrow a frame.

use crate::messages::{TaskKind, TaskOutcome, TaskSpec};

/// Worker names, host names and group names, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A job's name, in bytes: the CLI names a job after its command line, cut to this.
pub const MAX_JOB_NAME_BYTES: usize = 1 << 10;

/// A command's argv, environment and working directory together, in bytes. Linux allows 2 MiB of
/// argv and environment per `exec` (128 KiB per string); a spec this size still fits a frame
/// many times over.
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// Arguments of one command. Bounds the allocation of a spec of many empty strings.
pub const MAX_ARGS: usize = 32_768;

/// Environment variables of one command.
pub const MAX_ENV_VARS: usize = 4_096;

/// A task's working directory, in bytes (Linux's `PATH_MAX`).
pub const MAX_CWD_BYTES: usize = 4_096;

/// The tail of a task's stdout or stderr kept in its outcome, in bytes, after any lossy UTF-8
/// conversion.
pub const MAX_TAIL_BYTES: usize = 64 << 10;

/// A failure message (`Failed { error }`), in bytes.
pub const MAX_ERROR_BYTES: usize = 4 << 10;

/// Entries of one spec's `after` (each a range, or a reference within the submission).
pub const MAX_AFTER: usize = 4_096;
/// One `OutputChunk`'s bytes. The worker sends at most this per stream per frame; the master
/// drops (and logs) a bigger chunk rather than store it, since only a broken or hostile worker
/// sends one.
pub const MAX_OUTPUT_CHUNK_BYTES: usize = 1 << 20;

/// `master --log-limit`'s default: bytes of each stream of a task kept in its log. A worker sends
/// no more than this of a stream unless the master says another limit (`FromMaster::LogLimit`).
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 64 << 20;

/// The bytes of one `Log` answer: a client reads a large log in pieces of this size, one request
/// at a time, so an answer never waits in the master's memory beside others of its kind.
pub const MAX_LOG_READ_BYTES: usize = 1 << 20;

/// A `Forgotten` reply lists at most this many jobs, and this many unfinished and unknown ids
/// each (the counts beside say how many there were): the reply stays a few KiB whatever was
/// asked.
pub const MAX_FORGET_LISTED: usize = 1_000;

/// Why a task spec breaks a limit. Each names the field, and the offending key or size, so a
/// user can find the line in a task file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// argv, environment and cwd together are too large.
    #[error("the command (argv, env and cwd) is {len} bytes, more than the limit of {max}")]
    CommandTooLarge { len: usize, max: usize },
    /// Too many arguments.
    #[error("the command has {count} arguments, more than the limit of {max}")]
    TooManyArgs { count: usize, max: usize },
    /// Too many environment variables.
    #[error("the command sets {count} environment variables, more than the limit of {max}")]
    TooManyEnvVars { count: usize, max: usize },
    /// The working directory is too long.
    #[error("cwd is {len} bytes, more than the limit of {max}")]
    CwdTooLong { len: usize, max: usize },
    /// An environment key that `exec` could not pass on as written.
    #[error("env key {key:?} {why}")]
    BadEnvKey { key: String, why: &'static str },
    /// A string the kernel cannot take (argv, env value or cwd with a NUL byte).
    #[error("{field} contains a NUL byte")]
    Nul { field: &'static str },
    /// A group name is too long (or empty).
    #[error("group name must be 1 to {max} bytes, not {len}")]
    BadGroup { len: usize, max: usize },
    /// A task name is too long (or empty).
    #[error("name must be 1 to {max} bytes, not {len}")]
    BadTaskName { len: usize, max: usize },
    /// Too many entries in `after`.
    #[error("after lists {count} entries, more than the limit of {max}")]
    TooManyAfter { count: usize, max: usize },
}

/// Checks every size limit of a task spec: the argv, environment and cwd of a command, and the
/// group name. The CLI calls it before it sends anything; the master calls it on every `Submit`
/// and on every task it recovers from its journal.
pub fn check_spec(spec: &TaskSpec) -> Result<(), LimitError> {
    if let Some(name) = &spec.name {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(LimitError::BadTaskName {
                len: name.len(),
                max: MAX_NAME_BYTES,
            });
        }
    }
    if spec.after.len() > MAX_AFTER {
        return Err(LimitError::TooManyAfter {
            count: spec.after.len(),
            max: MAX_AFTER,
        });
    }
    if let Some(group) = &spec.group {
        if group.is_empty() || group.len() > MAX_NAME_BYTES {
            return Err(LimitError::BadGroup {
                len: group.len(),
                max: MAX_NAME_BYTES,
            });
        }
    }
    let TaskKind::Command { argv, env, cwd } = &spec.kind else {
        return Ok(());
    };
    if argv.len() > MAX_ARGS {
        return Err(LimitError::TooManyArgs {
            count: argv.len(),
            max: MAX_ARGS,
        });
    }
    if env.len() > MAX_ENV_VARS {
        return Err(LimitError::TooManyEnvVars {
            count: env.len(),
            max: MAX_ENV_VARS,
        });
    }
    if let Some(cwd) = cwd {
        if cwd.len() > MAX_CWD_BYTES {
            return Err(LimitError::CwdTooLong {
                len: cwd.len(),
                max: MAX_CWD_BYTES,
            });
        }
        if cwd.contains('\0') {
            return Err(LimitError::Nul { field: "cwd" });
        }
    }
    // Each string as exec sees it: its bytes and a NUL; an env entry is `KEY=VALUE`.
    let mut len = cwd.as_ref().map_or(0, |c| c.len() + 1);
    for arg in argv {
        if arg.contains('\0') {
            return Err(LimitError::Nul {
                field: "an argument",
            });
        }
        len += arg.len() + 1;
    }
    for (key, value) in env {
        let why = if key.is_empty() {
            Some("is empty")
        } else if key.contains('=') {
            Some("contains '='")
        } else if key.contains('\0') {
            Some("contains a NUL byte")
        } else {
            None
        };
        if let Some(why) = why {
            // The key goes into the message: cut it so the message itself stays small.
            let mut key = key.clone();
            truncate_with_marker(&mut key, MAX_NAME_BYTES);
            return Err(LimitError::BadEnvKey { key, why });
        }
        if value.contains('\0') {
            return Err(LimitError::Nul {
                field: "an env value",
            });
        }
        len += key.len() + value.len() + 2;
    }
    if len > MAX_COMMAND_BYTES {
        return Err(LimitError::CommandTooLarge {
            len,
            max: MAX_COMMAND_BYTES,
        });
    }
    Ok(())
}

/// Caps what a worker reports about one run, in place: tails keep their last
/// [`MAX_TAIL_BYTES`], an error its first [`MAX_ERROR_BYTES`] with a marker. Returns whether
/// anything was cut. The master applies it to every `Finished` before it keeps or journals it.
pub fn cap_outcome(outcome: &mut TaskOutcome) -> bool {
    match outcome {
        TaskOutcome::Exited {
            stdout_tail,
            stderr_tail,
            ..
        }
        | TaskOutcome::TimedOut {
            stdout_tail,
            stderr_tail,
        } => keep_tail(stdout_tail, MAX_TAIL_BYTES) | keep_tail(stderr_tail, MAX_TAIL_BYTES),
        TaskOutcome::Failed { error } => truncate_with_marker(error, MAX_ERROR_BYTES),
        TaskOutcome::Cancelled | TaskOutcome::WorkerLost => false,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, keeping the start and ending with
/// a marker that says how much was cut. Returns whether it cut.
pub fn truncate_with_marker(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let cut = text.len();
    // The marker's length depends on the count, which is at most `cut`: reserve for that.
    let marker_room = format!(" [... {cut} bytes cut]").len();
    let mut keep = max.saturating_sub(marker_room);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let marker = format!(" [... {} bytes cut]", cut - keep);
    text.truncate(keep);
    if text.len() + marker.len() <= max {
        text.push_str(&marker);
    }
    true
}

/// Cuts an argv to its first `max` bytes, each argument counting its length plus one (the space
/// between words in a command line, so a list of empty strings is cut too). A cut ends with a
/// marker element, `[... N bytes cut]`, N counting the bytes of the arguments dropped or cut; the
/// argument that crosses the limit keeps the part that fits. Returns whether it cut.
pub fn cut_argv(argv: &mut Vec<String>, max: usize) -> bool {
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if total <= max {
        return false;
    }
    let mut room = max;
    let mut keep = 0;
    let mut cut = 0;
    for arg in argv.iter_mut() {
        if room > arg.len() {
            room -= arg.len() + 1;
            keep += 1;
            continue;
        }
        // The first argument that does not fit whole: keep what fits of it, if anything.
        let mut end = room.saturating_sub(1);
        while !arg.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            cut += arg.len() - end;
            arg.truncate(end);
            keep += 1;
        }
        break;
    }
    cut += argv[keep..].iter().map(String::len).sum::<usize>();
    argv.truncate(keep);
    argv.push(format!("[... {cut} bytes cut]"));
    true
}

/// Keeps the last `max` bytes of `text` (a tail), cut on a character boundary.
pub fn keep_tail(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.drain(..start);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argv_is_cut_to_its_start_with_a_marker_element() {
        let mut short = vec!["sh".to_string(), "-c".into(), "echo hi".into()];
        assert!(!cut_argv(&mut short, 1024));
        assert_eq!(short, ["sh", "-c", "echo hi"]);

        let mut long = vec!["sh".to_string(), "-c".into(), "é".repeat(2000)];
        assert!(cut_argv(&mut long, 20));
        assert_eq!(long.len(), 4);
        assert_eq!(&long[..2], ["sh", "-c"]);
        // 20 bytes: "sh " and "-c " take 6, the last argument keeps 13 bytes rounded down to a
        // whole character.
        assert_eq!(long[2], "é".repeat(6));
        assert_eq!(long[3], format!("[... {} bytes cut]", 4000 - 12));

        let mut empties = vec![String::new(); 32_768];
        assert!(cut_argv(&mut empties, 1024));
        assert_eq!(empties.len(), 1025, "each argument costs at least one byte");
        assert_eq!(empties[1024], "[... 0 bytes cut]");

        let mut one_big = vec!["x".repeat(1 << 20)];
        assert!(cut_argv(&mut one_big, 1024));
        assert_eq!(one_big[0].len(), 1023);
        assert_eq!(one_big[1], format!("[... {} bytes cut]", (1 << 20) - 1023));
    }

    #[test]
    fn truncation_keeps_the_start_marks_the_cut_and_fits() {
        for max in [0, 5, 30, 100, 4096] {
            let mut s = "é".repeat(3000);
            let before = s.len();
            assert!(truncate_with_marker(&mut s, max));
            assert!(s.len() <= max, "{} > {max}", s.len());
            if max >= 30 {
                assert!(s.starts_with('é') && s.ends_with("bytes cut]"), "{s}");
                let kept = s.find(" [...").unwrap();
                assert!(s.contains(&format!("{} bytes cut", before - kept)));
            }
        }
        let mut short = String::from("short");
        assert!(!truncate_with_marker(&mut short, 5));
        assert_eq!(short, "short");
    }

    fn command(argv: &[&str], env: &[(&str, &str)], cwd: Option<&str>) -> TaskSpec {
        TaskSpec::new(TaskKind::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: cwd.map(str::to_string),
        })
    }

    #[test]
    fn env_keys_that_exec_cannot_pass_are_refused_by_name() {
        for (key, why) in [
            ("A=B", "contains '='"),
            ("", "is empty"),
            ("A\0B", "contains a NUL byte"),
        ] {
            let err = check_spec(&command(&["true"], &[(key, "x")], None)).unwrap_err();
            assert_eq!(
                err,
                LimitError::BadEnvKey {
                    key: key.into(),
                    why
                }
            );
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        // A huge bad key is named, cut.
        let long = format!("{}=", "K".repeat(100_000));
        let err = check_spec(&command(&["true"], &[(&long, "x")], None)).unwrap_err();
        assert!(err.to_string().len() < 1_000, "{}", err.to_string().len());
        assert!(check_spec(&command(&["true"], &[("A", "B=C")], Some("/tmp"))).is_ok());
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let big = "x".repeat(MAX_COMMAND_BYTES);
        assert!(matches!(
            check_spec(&command(&[&big], &[], None)),
            Err(LimitError::CommandTooLarge { .. })
        ));
        let program = "p".repeat(120_000);
        assert!(check_spec(&command(&[&program], &[], None)).is_ok());
        let many = vec!["a"; MAX_ARGS + 1];
        assert!(matches!(
            check_spec(&command(&many, &[], None)),
            Err(LimitError::TooManyArgs { .. })
        ));
        let vars: Vec<(String, String)> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert!(matches!(
            check_spec(&command(&["true"], &vars, None)),
            Err(LimitError::TooManyEnvVars { .. })
        ));
        let cwd = "/".repeat(MAX_CWD_BYTES + 1);
        assert!(matches!(
            check_spec(&command(&["true"], &[], Some(&cwd))),
            Err(LimitError::CwdTooLong { .. })
        ));
        assert!(matches!(
            check_spec(&command(&["a\0b"], &[], None)),
            Err(LimitError::Nul { .. })
        ));
        let mut grouped = TaskSpec::new(TaskKind::Sleep { ms: 1 });
        grouped.group = Some("g".repeat(100 << 10));
        assert_eq!(
            check_spec(&grouped),
            Err(LimitError::BadGroup {
                len: 100 << 10,
                max: MAX_NAME_BYTES
            })
        );
        grouped.group = Some("g".repeat(MAX_NAME_BYTES));
        assert_eq!(check_spec(&grouped), Ok(()));
        assert!(grouped.validate().is_ok());
        grouped.group = Some(String::new());
        assert!(grouped.validate().is_err());
    }

    #[test]
    fn outcomes_are_capped_to_their_limits() {
        let mut o = TaskOutcome::Failed {
            error: format!("cannot run `{}`", "p".repeat(120_000)),
        };
        assert!(cap_outcome(&mut o));
        let TaskOutcome::Failed { error } = &o else {
            unreachable!()
        };
        assert!(error.len() <= MAX_ERROR_BYTES && error.starts_with("cannot run `ppp"));
        let mut o = TaskOutcome::Exited {
            code: 1,
            stdout_tail: "\u{fffd}".repeat(MAX_TAIL_BYTES),
            stderr_tail: "e".repeat(10),
        };
        assert!(cap_outcome(&mut o));
        let TaskOutcome::Exited {
            stdout_tail,
            stderr_tail,
            ..
        } = &o
        else {
            unreachable!()
        };
        assert!(stdout_tail.len() <= MAX_TAIL_BYTES && stderr_tail.len() == 10);
        assert!(!cap_outcome(&mut TaskOutcome::Cancelled));
    }

    proptest::proptest! {
        /// Whatever a worker sends, what the master keeps is within the limits, valid text, and
        /// the start of an error / the end of a tail.
        #[test]
        fn capped_outcomes_are_within_the_limits(
            text in "(.|\\PC|\u{fffd}){0,300}",
            repeat in 0usize..400,
            code in proptest::prelude::any::<i32>(),
        ) {
            let long = text.repeat(repeat);
            let mut failed = TaskOutcome::Failed { error: long.clone() };
            cap_outcome(&mut failed);
            let TaskOutcome::Failed { error } = &failed else { unreachable!() };
            proptest::prop_assert!(error.len() <= MAX_ERROR_BYTES);
            if long.len() <= MAX_ERROR_BYTES {
                proptest::prop_assert_eq!(error, &long);
            }
            let mut exited = TaskOutcome::Exited {
                code,
                stdout_tail: long.clone(),
                stderr_tail: long.repeat(3),
            };
            cap_outcome(&mut exited);
            let TaskOutcome::Exited { stdout_tail, stderr_tail, .. } = &exited else {
                unreachable!()
            };
            proptest::prop_assert!(stdout_tail.len() <= MAX_TAIL_BYTES);
            proptest::prop_assert!(stderr_tail.len() <= MAX_TAIL_BYTES);
            proptest::prop_assert!(long.ends_with(stdout_tail.as_str()));
        }
    }

    #[test]
    fn tails_keep_the_end_on_a_char_boundary() {
        let mut s = format!("{}end", "é".repeat(100));
        assert!(keep_tail(&mut s, 8));
        assert!(s.len() <= 8 && s.ends_with("end"), "{s}");
        let mut t = String::from("abc");
        assert!(!keep_tail(&mut t, 3));
    }
}
