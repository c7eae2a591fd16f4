//! One line per task for the person watching the worker's terminal (started or on standby, and how
//! it ended), at most `PER_SECOND` a second at info: beyond that they go to debug, and one info
//! line says how many, as the master's log does. A worker running thousands of tiny tasks a second must not
//! spend its loop writing a terminal.

use log::{info, log, log_enabled, Level};
use protocol::{Assignment, Completion, TaskKind, TaskOutcome};
use std::time::{Duration, Instant};

const PER_SECOND: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// A command is shown up to this many characters.
const SHOWN_CHARS: usize = 80;

#[derive(Debug, Default)]
pub struct TaskLog {
    window_start: Option<Instant>,
    lines: u32,
    moved: u64,
}

impl TaskLog {
    /// Closes the rate window once it has passed, saying how many lines went to debug in it.
    pub fn tick(&mut self, now: Instant) {
        let open = matches!(self.window_start, Some(s) if now.duration_since(s) < WINDOW);
        if !open {
            if self.moved > 0 {
                info!(
                    "... and {} more task lines in the last second at debug level \
                     (RUST_LOG=debug shows them)",
                    self.moved
                );
            }
            self.window_start = Some(now);
            self.lines = 0;
            self.moved = 0;
        }
    }

    pub fn started(&mut self, now: Instant, a: &Assignment) {
        self.assignment_line(now, a, "started");
    }

    /// Every slot is busy: the command waits on the IO thread, which starts it the moment a slot
    /// frees, with no line of its own then. Found by an adversarial run: this said "started",
    /// so two tasks showed as started on one slot, and a retract could give back a "started" one.
    pub fn standing_by(&mut self, now: Instant, a: &Assignment) {
        self.assignment_line(now, a, "on standby, starts when a slot frees");
    }

    fn assignment_line(&mut self, now: Instant, a: &Assignment, what: &str) {
        if let Some(level) = self.admit(now) {
            let kind = describe(&a.spec.kind);
            log!(
                level,
                "task {} (attempt {}) {what}: {kind}",
                a.task,
                a.attempt
            );
        }
    }

    pub fn finished(&mut self, now: Instant, c: &Completion) {
        if let Some(level) = self.admit(now) {
            let end = ending(&c.outcome);
            log!(
                level,
                "task {} (attempt {}) {end} after {} ms",
                c.task,
                c.attempt,
                c.run_ms
            );
        }
    }

    /// The level of the next line, or `None` when it would go nowhere: past the rate at a debug
    /// level that is off, a line is not even formatted (the hot path of tiny tasks).
    fn admit(&mut self, now: Instant) -> Option<Level> {
        self.tick(now);
        self.lines += 1;
        if self.lines <= PER_SECOND {
            return Some(Level::Info);
        }
        self.moved += 1;
        log_enabled!(Level::Debug).then_some(Level::Debug)
    }
}

fn describe(kind: &TaskKind) -> String {
    match kind {
        TaskKind::Command { argv, .. } => {
            let mut shown = String::new();
            for arg in argv {
                if !shown.is_empty() {
                    shown.push(' ');
                }
                // Debug quoting escapes control characters, so a line stays one line.
                if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    shown.push_str(&format!("{arg:?}"));
                } else {
                    shown.push_str(arg);
                }
                if shown.chars().count() > SHOWN_CHARS {
                    break;
                }
            }
            cut(shown)
        }
        TaskKind::Sleep { ms } => format!("sleep {ms} ms"),
        TaskKind::Spin { ms } => format!("spin {ms} ms"),
    }
}

fn ending(outcome: &TaskOutcome) -> String {
    match outcome {
        TaskOutcome::Exited { code: 0, .. } => "succeeded".into(),
        TaskOutcome::Exited { code, .. } => format!("exited with {code}"),
        TaskOutcome::Failed { error } => format!("could not start ({})", cut(error.clone())),
        TaskOutcome::TimedOut { .. } => "timed out".into(),
        TaskOutcome::Cancelled => "was cancelled".into(),
        TaskOutcome::WorkerLost => "was lost".into(),
    }
}

fn cut(mut text: String) -> String {
    if let Some((i, _)) = text.char_indices().nth(SHOWN_CHARS) {
        text.truncate(i);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_on_one_short_line() {
        let kind = TaskKind::Command {
            argv: vec!["sh".into(), "-c".into(), "echo hi\nrm x".into()],
            env: Vec::new(),
            cwd: None,
        };
        assert_eq!(describe(&kind), r#"sh -c "echo hi\nrm x""#);
        let long = TaskKind::Command {
            argv: vec!["x".repeat(10_000)],
            env: Vec::new(),
            cwd: None,
        };
        let shown = describe(&long);
        assert_eq!(shown.chars().count(), SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(describe(&TaskKind::Sleep { ms: 20 }), "sleep 20 ms");
    }

    #[test]
    fn outcomes_read_as_a_person_would_say_them() {
        let exited = |code| TaskOutcome::Exited {
            code,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        assert_eq!(ending(&exited(0)), "succeeded");
        assert_eq!(ending(&exited(7)), "exited with 7");
        let failed = TaskOutcome::Failed {
            error: "e".repeat(500),
        };
        assert!(ending(&failed).chars().count() < 120);
    }

    #[test]
    fn lines_beyond_the_rate_go_to_debug_and_are_counted() {
        let mut log = TaskLog::default();
        let t0 = Instant::now();
        let levels: Vec<Option<Level>> = (0..PER_SECOND + 5).map(|_| log.admit(t0)).collect();
        assert!(levels[..PER_SECOND as usize]
            .iter()
            .all(|l| *l == Some(Level::Info)));
        assert!(levels[PER_SECOND as usize..]
            .iter()
            .all(|l| *l != Some(Level::Info)));
        assert_eq!(log.moved, 5);
        log.tick(t0 + WINDOW);
        assert_eq!((log.lines, log.moved), (0, 0), "a new window");
    }
}
