//! The Prometheus text exposition (format 0.0.4) of the core's [`MetricsSnapshot`]: a pure
//! function, served as `GET /metrics`. Names follow Prometheus conventions: the `ballast_`
//! prefix, `_total` on counters, base units (seconds, ratios). The list with meanings is in
//! `docs/HTTP.md` ("Metrics").

use crate::core::metrics::{Histogram, MetricsSnapshot};
use crate::core::Core;
use protocol::TaskState;
use std::fmt::Write as _;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What only the shell knows: its HTTP side.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShellGauges {
    /// Open HTTP connections (SSE subscribers included).
    pub http_connections: u64,
    pub sse_subscribers: u64,
    /// SSE subscribers dropped for falling behind, since start.
    pub sse_dropped_total: u64,
}

/// `GET /metrics`: the body (serve it with [`CONTENT_TYPE`], status 200). O(workers + groups).
pub fn metrics_body(core: &Core, shell: &ShellGauges) -> String {
    render(&core.metrics(), shell)
}

/// `GET /api/v1/report`: the JSON body (`application/json`, status 200): the figures of
/// `master simulate --json` for the real cluster (`ClusterReport`), from what the core kept as
/// it went: O(workers), whatever the number of tasks.
pub fn report_body(core: &Core) -> Vec<u8> {
    serde_json::to_vec(&core.report()).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode the report: {e}") })
            .to_string()
            .into_bytes()
    })
}

/// Renders the whole exposition. Every family has its `HELP` and `TYPE`; label values are
/// escaped; a family with no series (no workers yet) is still declared.
pub fn render(m: &MetricsSnapshot, shell: &ShellGauges) -> String {
    let mut out = Exposition::default();
    out.family(
        "ballast_tasks",
        "gauge",
        "Tasks the master holds, by state.",
    );
    for &(state, n) in &m.tasks {
        out.sample("ballast_tasks", &[("state", state.as_str())], n as f64);
    }
    out.family(
        "ballast_tasks_submitted_total",
        "counter",
        "Tasks accepted (ids handed out), those read back from the journal included.",
    );
    out.sample(
        "ballast_tasks_submitted_total",
        &[],
        m.submitted_total as f64,
    );
    out.family(
        "ballast_tasks_finished_total",
        "counter",
        "Tasks that reached a final state, by outcome.",
    );
    for state in TaskState::ALL.iter().filter(|s| s.is_final()) {
        out.sample(
            "ballast_tasks_finished_total",
            &[("outcome", state.as_str())],
            m.count(*state) as f64,
        );
    }
    out.family(
        "ballast_tasks_requeued_total",
        "counter",
        "Times a task went back to the queue because its worker was lost.",
    );
    out.sample("ballast_tasks_requeued_total", &[], m.requeued_total as f64);
    out.family(
        "ballast_task_retries_total",
        "counter",
        "Failed runs run again (retry_failed).",
    );
    out.sample("ballast_task_retries_total", &[], m.retried_total as f64);

    let alive = m.workers.iter().filter(|w| w.alive).count();
    out.family(
        "ballast_workers",
        "gauge",
        "Workers the master knows, by state.",
    );
    out.sample("ballast_workers", &[("state", "alive")], alive as f64);
    out.sample(
        "ballast_workers",
        &[("state", "dead")],
        (m.workers.len() - alive) as f64,
    );
    type Field = fn(&crate::core::metrics::WorkerMetrics) -> f64;
    let per_worker: [(&str, &str, &str, Field); 5] = [
        (
            "ballast_worker_slots",
            "gauge",
            "Slots a worker offers.",
            |w| f64::from(w.slots),
        ),
        (
            "ballast_worker_running",
            "gauge",
            "Tasks handed to a worker and not yet ended (prefetched ones included).",
            |w| f64::from(w.running),
        ),
        (
            "ballast_worker_cpu_ratio",
            "gauge",
            "Whole-host CPU use a worker last reported, 0 to 1.",
            |w| f64::from(w.cpu_percent) / 100.0,
        ),
        (
            "ballast_worker_load1",
            "gauge",
            "The 1-minute load average a worker last reported.",
            |w| f64::from(w.load_avg_1m),
        ),
        (
            "ballast_worker_tasks_done_total",
            "counter",
            "Attempts a worker finished.",
            |w| w.done as f64,
        ),
    ];
    for (name, kind, help, field) in per_worker {
        out.family(name, kind, help);
        for w in &m.workers {
            out.sample(name, &[("worker", &w.name), ("group", &w.group)], field(w));
        }
    }
    out.family(
        "ballast_worker_up",
        "gauge",
        "1 while a worker is connected and alive, 0 once lost.",
    );
    for w in &m.workers {
        out.sample(
            "ballast_worker_up",
            &[("worker", &w.name), ("group", &w.group)],
            if w.alive { 1.0 } else { 0.0 },
        );
    }
    out.family(
        "ballast_queue_length",
        "gauge",
        "Tasks waiting in a group's queue (group=\"\": the default pool); retries in backoff not included.",
    );
    for (group, n) in &m.queue {
        out.sample("ballast_queue_length", &[("group", group)], *n as f64);
    }
    out.family(
        "ballast_queue_unlisted_length",
        "gauge",
        "Tasks waiting in groups beyond the ones ballast_queue_length lists (it lists 100 at most).",
    );
    out.sample(
        "ballast_queue_unlisted_length",
        &[],
        m.queue_unlisted_tasks as f64,
    );
    out.family(
        "ballast_queue_unlisted_groups",
        "gauge",
        "Groups with waiting tasks that ballast_queue_length does not list.",
    );
    out.sample(
        "ballast_queue_unlisted_groups",
        &[],
        m.queue_unlisted_groups as f64,
    );
    out.histogram(
        "ballast_dispatch_latency_seconds",
        "Submission to the first handout of a task to a worker.",
        &m.dispatch_latency,
    );
    out.histogram(
        "ballast_start_latency_seconds",
        "Submission to the worker's report that the first attempt started.",
        &m.start_latency,
    );
    out.histogram(
        "ballast_journal_commit_duration_seconds",
        "One journal commit (SQLite commit, fsync and the marks).",
        &m.commit_latency,
    );
    out.family("ballast_connections", "gauge", "Open connections, by kind.");
    for (kind, n) in [
        ("worker", m.worker_connections),
        ("client", m.client_connections),
        ("handshake", m.handshake_connections),
        ("http", shell.http_connections),
    ] {
        out.sample("ballast_connections", &[("kind", kind)], n as f64);
    }
    out.family(
        "ballast_sse_subscribers",
        "gauge",
        "Clients reading /api/v1/events.",
    );
    out.sample("ballast_sse_subscribers", &[], shell.sse_subscribers as f64);
    out.family(
        "ballast_sse_dropped_total",
        "counter",
        "Event subscribers dropped because they fell behind.",
    );
    out.sample(
        "ballast_sse_dropped_total",
        &[],
        shell.sse_dropped_total as f64,
    );
    out.family(
        "ballast_policy_info",
        "gauge",
        "The placement policy in use, as a label; always 1.",
    );
    out.sample("ballast_policy_info", &[("policy", &m.policy)], 1.0);
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            self.sample(&bucket, &[("le", &number(le))], n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count() as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum());
        self.sample(&format!("{name}_count"), &[], h.count() as f64);
    }
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`; Rust's shortest round trip
/// otherwise).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `HELP` text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metrics::{Histogram, WorkerMetrics, COMMIT_LATENCY_BOUNDS_S};
    use protocol::TaskState;
    use std::collections::BTreeMap;

    /// One parsed sample: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A strict reader of the text format, enough to check what `render` writes: every sample
    /// belongs to a family declared by `HELP` and `TYPE` before it, names and label names are
    /// valid, label values are properly escaped and quoted, values parse, no family twice.
    fn parse(text: &str) -> Vec<Sample> {
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = None;
        let mut samples = Vec::new();
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
                })
        };
        assert!(text.ends_with('\n'), "ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has text");
                assert!(name_ok(name), "{name}");
                helped = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert_eq!(helped.as_deref(), Some(name), "HELP before TYPE");
                assert!(["counter", "gauge", "histogram"].contains(&kind));
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name}");
                } else {
                    assert!(!name.ends_with("_total"), "{kind} {name}");
                }
                assert!(
                    families.insert(name.into(), kind.into()).is_none(),
                    "{name} declared twice"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line}");
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value {v}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    (name.to_string(), parse_labels(body))
                }
            };
            assert!(name_ok(&name), "{name}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| families.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(families.contains_key(&family), "{name} not declared");
            samples.push((name, labels, value));
        }
        samples
    }

    fn parse_labels(body: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label {key} is quoted");
            let mut value = String::new();
            loop {
                match chars.next().expect("label value closes") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}"),
                    },
                    '\n' => panic!("raw line feed in a label"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(key, value).is_none(), "label twice");
            match chars.next() {
                None | Some(',') => {}
                Some(c) => panic!("after a label value: {c:?}"),
            }
        }
        labels
    }

    fn snapshot() -> MetricsSnapshot {
        let mut commit = Histogram::new(COMMIT_LATENCY_BOUNDS_S);
        for v in [0.0001, 0.003, 0.003, 5.0] {
            commit.observe(v);
        }
        MetricsSnapshot {
            tasks: TaskState::ALL.iter().map(|&s| (s, 3)).collect(),
            submitted_total: 21,
            requeued_total: 1,
            retried_total: 2,
            workers: vec![
                WorkerMetrics {
                    name: "w\"1\\\nx".into(),
                    group: "gpu".into(),
                    alive: true,
                    slots: 4,
                    running: 2,
                    cpu_percent: 35.5,
                    load_avg_1m: 0.75,
                    done: 9,
                },
                WorkerMetrics {
                    name: "w2".into(),
                    group: String::new(),
                    alive: false,
                    slots: 1,
                    running: 0,
                    cpu_percent: f32::NAN,
                    load_avg_1m: 0.0,
                    done: 0,
                },
            ],
            queue: vec![(String::new(), 3), ("gpu".into(), 0)],
            queue_unlisted_groups: 0,
            queue_unlisted_tasks: 0,
            dispatch_latency: Histogram::new(&[0.1, 1.0]),
            start_latency: Histogram::new(&[0.1, 1.0]),
            commit_latency: commit,
            worker_connections: 1,
            client_connections: 2,
            handshake_connections: 0,
            policy: "least-loaded".into(),
        }
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .unwrap_or_else(|| panic!("{name} {labels:?}"))
            .2
    }

    #[test]
    fn the_exposition_parses_and_says_what_the_snapshot_holds() {
        let text = render(&snapshot(), &ShellGauges::default());
        let s = parse(&text);
        assert_eq!(value(&s, "ballast_tasks", &[("state", "succeeded")]), 3.0);
        assert_eq!(value(&s, "ballast_workers", &[("state", "alive")]), 1.0);
        assert_eq!(value(&s, "ballast_workers", &[("state", "dead")]), 1.0);
        // The worker's name came back through the escaping intact.
        assert_eq!(
            value(
                &s,
                "ballast_worker_cpu_ratio",
                &[("worker", "w\"1\\\nx"), ("group", "gpu")]
            ),
            0.355
        );
        assert!(value(
            &s,
            "ballast_worker_cpu_ratio",
            &[("worker", "w2"), ("group", "")]
        )
        .is_nan());
        let bucket = "ballast_journal_commit_duration_seconds_bucket";
        assert_eq!(value(&s, bucket, &[("le", "0.0005")]), 1.0);
        assert_eq!(value(&s, bucket, &[("le", "0.005")]), 3.0);
        assert_eq!(value(&s, bucket, &[("le", "1")]), 3.0);
        assert_eq!(value(&s, bucket, &[("le", "+Inf")]), 4.0);
        assert_eq!(
            value(&s, "ballast_journal_commit_duration_seconds_count", &[]),
            4.0
        );
        assert_eq!(
            value(
                &s,
                "ballast_tasks_finished_total",
                &[("outcome", "worker_lost")]
            ),
            3.0
        );
        assert_eq!(value(&s, "ballast_queue_length", &[("group", "")]), 3.0);
        assert!(
            !s.iter().any(|(n, l, _)| n == "ballast_tasks_finished_total"
                && l.get("outcome").map(String::as_str) == Some(TaskState::Queued.as_str()))
        );
    }

    #[test]
    fn an_empty_master_still_declares_every_family() {
        let mut m = snapshot();
        m.workers.clear();
        let text = render(&m, &ShellGauges::default());
        parse(&text);
        assert!(text.contains("# TYPE ballast_worker_slots gauge\n"));
    }

    /// `promtool check metrics` finds nothing to say (skipped, with a line, without promtool;
    /// CI installs it).
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let text = render(&snapshot(), &ShellGauges::default());
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: skipping `promtool check metrics`");
            return;
        };
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("promtool reads its input");
        let out = child.wait_with_output().expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );
    }

    #[test]
    fn a_fresh_core_serves_both_bodies() {
        let core = Core::new(crate::core::CoreConfig::default());
        let text = metrics_body(&core, &ShellGauges::default());
        let s = parse(&text);
        assert_eq!(value(&s, "ballast_tasks", &[("state", "queued")]), 0.0);
        let report: serde_json::Value = serde_json::from_slice(&report_body(&core)).expect("JSON");
        for field in [
            "policy",
            "tasks",
            "completed",
            "makespan_s",
            "utilisation",
            "p50_completion_s",
            "p99_completion_s",
            "per_worker",
        ] {
            assert!(report.get(field).is_some(), "{field} in {report}");
        }
        assert_eq!(report["policy"], "least-loaded");
    }

    #[test]
    fn escaping_follows_the_format() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
    }
}
