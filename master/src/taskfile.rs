//! Task files, as `master submit --file` and `master simulate --workload FILE` read them: one task
//! per JSON line, `{"cmd": [...], "priority": 0, "size": 1, "timeout": "5s", "sleep": "20ms",
//! "spin": "20ms", "retries": 3, "retry_failed": 0, "group": "g", "replicas": 1, "env": {"K": "V"},
//! "cwd": "/tmp", "name": "fetch", "after": ["fetch", 12]}`.
//! Each line names exactly one of `cmd`, `sleep`, `spin`; fields it leaves out come from the
//! defaults (the command line). Blank lines and lines starting with `#` are skipped. Every error
//! names the line.
//!
//! `after` lists what a line waits for: names of other lines of the same file (`"name"`), or ids
//! of tasks submitted before. The whole file is one DAG: an unknown name, a name used twice or a
//! cycle refuses the whole file, naming the line.

use protocol::dag::DagError;
use protocol::duration::parse_duration;
use protocol::limits::MAX_AFTER;
use protocol::{After, TaskId, TaskKind, TaskSpec, DEFAULT_MAX_RETRIES};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One line as written. Unknown fields are refused so a typo (`"priorty"`) is not silently ignored.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Line {
    cmd: Option<Vec<String>>,
    priority: Option<i32>,
    size: Option<f64>,
    /// Durations are `Value`s so both `"250ms"` and a bare number of seconds work, and the error
    /// can name the field.
    timeout: Option<Value>,
    sleep: Option<Value>,
    spin: Option<Value>,
    retries: Option<u32>,
    retry_failed: Option<u32>,
    group: Option<String>,
    replicas: Option<u32>,
    /// Ordered, so the same file always produces the same spec.
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    /// How other lines of the file name this one in their `after`; results show it.
    name: Option<String>,
    /// Names of lines of the same file, or ids of existing tasks.
    after: Option<Vec<Value>>,
}

/// Spec fields the command line sets and a task file line may override.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecDefaults {
    pub priority: i32,
    pub size: f64,
    pub timeout_ms: Option<u64>,
    pub max_retries: u32,
    pub retry_failed: u32,
    pub group: Option<String>,
    pub replicas: u32,
    /// `submit --after`: what a line without its own `after` waits for.
    pub after: Vec<After>,
    /// `submit --time-request`: how long a worker's allocation must still live.
    pub time_request_ms: Option<u64>,
}

impl Default for SpecDefaults {
    fn default() -> Self {
        SpecDefaults {
            priority: 0,
            size: 1.0,
            timeout_ms: None,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_failed: 0,
            group: None,
            replicas: 1,
            after: Vec::new(),
            time_request_ms: None,
        }
    }
}

impl SpecDefaults {
    pub fn spec(&self, kind: TaskKind) -> TaskSpec {
        let mut spec = TaskSpec::new(kind);
        spec.priority = self.priority;
        spec.size = self.size;
        spec.timeout_ms = self.timeout_ms;
        spec.max_retries = self.max_retries;
        spec.retry_failed = self.retry_failed;
        spec.group = self.group.clone();
        spec.replicas = self.replicas;
        spec.after = self.after.clone();
        spec.time_request_ms = self.time_request_ms;
        spec
    }
}

/// What is wrong with a task file, and where ("tasks.jsonl line 3", or just the file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct TaskFileError {
    pub at: String,
    pub why: String,
    /// The line is well formed but the master would refuse it (a limit of `protocol::limits`,
    /// or a dependency that cannot be: unknown, a cycle), so the CLI exits as if it had (1), not
    /// as for bad usage (2).
    pub breaks_limit: bool,
}

/// A parsed task file: the specs, and the line number of each (for messages about a spec).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    pub specs: Vec<TaskSpec>,
    pub lines: Vec<usize>,
}

impl TaskFile {
    /// Whether a spec waits for another line of the file: then the file must travel in one
    /// `Submit` (its references are indices into it).
    pub fn is_dag(&self) -> bool {
        self.specs
            .iter()
            .any(|s| s.after.iter().any(|a| matches!(a, After::Spec(_))))
    }

    /// The largest existing task id the file waits for, and the line that names it.
    pub fn largest_id(&self) -> Option<(TaskId, usize)> {
        let mut best: Option<(TaskId, usize)> = None;
        for (spec, &line) in self.specs.iter().zip(&self.lines) {
            for a in &spec.after {
                if let After::Ids { last, .. } = a {
                    if best.is_none_or(|(b, _)| *last > b) {
                        best = Some((*last, line));
                    }
                }
            }
        }
        best
    }
}

/// Parses a whole task file. `origin` names it in errors ("tasks.jsonl line 3: ...").
pub fn parse(
    text: &str,
    origin: &str,
    defaults: &SpecDefaults,
) -> Result<Vec<TaskSpec>, TaskFileError> {
    parse_file(text, origin, defaults).map(|f| f.specs)
}

/// As [`parse`], with the line number of every spec.
pub fn parse_file(
    text: &str,
    origin: &str,
    defaults: &SpecDefaults,
) -> Result<TaskFile, TaskFileError> {
    // A byte-order mark from some editors is not JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let at = |line: usize| format!("{origin} line {line}");
    let mut specs = Vec::new();
    let mut lines = Vec::new();
    // Each line's own `after`, resolved once every name is known (a line may wait for a later
    // one).
    let mut afters: Vec<Option<Vec<Value>>> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fail = |(why, breaks_limit)| TaskFileError {
            at: at(index + 1),
            why,
            breaks_limit,
        };
        let (spec, after) = parse_line(trimmed, defaults).map_err(fail)?;
        if let Some(name) = &spec.name {
            if let Some(&earlier) = names.get(name) {
                let why = format!("name {name:?} is already line {}'s", lines[earlier]);
                return Err(fail((why, false)));
            }
            names.insert(name.clone(), specs.len());
        }
        specs.push(spec);
        lines.push(index + 1);
        afters.push(after);
    }
    if specs.is_empty() {
        return Err(TaskFileError {
            at: origin.to_string(),
            why: "no tasks".into(),
            breaks_limit: false,
        });
    }
    for (i, after) in afters.into_iter().enumerate() {
        let Some(values) = after else {
            continue;
        };
        let resolved = resolve_after(&values, |name| names.get(name).map(|&j| j as u32));
        specs[i].after = resolved.map_err(|(why, breaks_limit)| TaskFileError {
            at: at(lines[i]),
            why,
            breaks_limit,
        })?;
    }
    if let Err(e) = protocol::dag::check(&specs) {
        let (spec, why) = match &e {
            DagError::UnknownSpec { spec, target } => {
                (*spec, format!("after: no line {}", u64::from(*target) + 1))
            }
            DagError::Cycle { path } => {
                let steps: Vec<String> =
                    path.iter().map(|&i| describe(&specs, &lines, i)).collect();
                (path[0], format!("cycle in after: {}", steps.join(" -> ")))
            }
        };
        return Err(TaskFileError {
            at: at(lines[spec]),
            why,
            breaks_limit: true,
        });
    }
    Ok(TaskFile { specs, lines })
}

/// `line 3 ("fetch")`, or `line 3` for a line without a name.
fn describe(specs: &[TaskSpec], lines: &[usize], i: usize) -> String {
    match &specs[i].name {
        Some(name) => format!("line {} ({name:?})", lines[i]),
        None => format!("line {}", lines[i]),
    }
}

/// A line's `after`: each entry a name (`lookup` gives its spec index) or a task id. Err says
/// why not, and whether the master would refuse it (an unknown name is not a typo of syntax).
fn resolve_after(
    values: &[Value],
    lookup: impl Fn(&str) -> Option<u32>,
) -> std::result::Result<Vec<After>, (String, bool)> {
    if values.len() > MAX_AFTER {
        let why = format!(
            "after lists {} entries, more than the limit of {MAX_AFTER}",
            values.len()
        );
        return Err((why, true));
    }
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let entry = match v {
            Value::String(name) => match lookup(name) {
                Some(j) => After::Spec(j),
                None => return Err((format!("after: no line named {name:?} in this file"), true)),
            },
            Value::Number(n) => match n.as_u64().filter(|&id| id > 0) {
                Some(id) => After::id(TaskId(id)),
                None => return Err((format!("after: {n} is not a task id"), false)),
            },
            other => {
                return Err((
                    format!("after: entries are line names or task ids, got {other}"),
                    false,
                ))
            }
        };
        out.push(entry);
    }
    Ok(out)
}

/// One line's spec and its own `after` (unresolved); Err says why not, and whether it is a
/// limit the master enforces.
#[allow(clippy::type_complexity)]
fn parse_line(
    text: &str,
    defaults: &SpecDefaults,
) -> std::result::Result<(TaskSpec, Option<Vec<Value>>), (String, bool)> {
    let line: Line = serde_json::from_str(text).map_err(|e| (json_message(&e), false))?;
    let after = line.after.clone();
    let spec = line_spec(line, defaults).map_err(|why| (why, false))?;
    protocol::limits::check_spec(&spec).map_err(|e| (e.to_string(), true))?;
    // Also the range of `replicas` (1 ..= MAX_REPLICAS), so a bad line is named here.
    spec.validate().map_err(|why| (why, false))?;
    Ok((spec, after))
}

/// One task object already read as JSON (the HTTP API's submit body): the same fields, checks
/// and messages as a task-file line, without the line number.
pub fn parse_object(
    value: Value,
    defaults: &SpecDefaults,
) -> std::result::Result<TaskSpec, String> {
    let line: Line = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let after = line.after.clone();
    let mut spec = line_spec(line, defaults)?;
    if let Some(values) = after {
        // One object has no other lines to name: only ids.
        spec.after = resolve_after(&values, |_| None).map_err(|(why, _)| why)?;
    }
    protocol::limits::check_spec(&spec).map_err(|e| e.to_string())?;
    spec.validate()?;
    Ok(spec)
}

/// A batch of task objects (the HTTP API's `{"tasks": [...]}`): each checked as
/// [`parse_object`], and `after` may name other objects of the batch by their `name`, as the
/// lines of a file may (a cycle or an unknown name refuses the batch). Errors name the object:
/// `tasks[2]: ...`.
pub fn parse_objects(
    values: Vec<Value>,
    defaults: &SpecDefaults,
) -> std::result::Result<Vec<TaskSpec>, String> {
    let mut specs = Vec::with_capacity(values.len());
    let mut afters = Vec::with_capacity(values.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, value) in values.into_iter().enumerate() {
        let at = |why: String| format!("tasks[{i}]: {why}");
        let line: Line = serde_json::from_value(value).map_err(|e| at(e.to_string()))?;
        let after = line.after.clone();
        let spec = line_spec(line, defaults).map_err(at)?;
        protocol::limits::check_spec(&spec).map_err(|e| at(e.to_string()))?;
        spec.validate().map_err(at)?;
        if let Some(name) = &spec.name {
            if let Some(&earlier) = names.get(name) {
                return Err(at(format!("name {name:?} is already tasks[{earlier}]'s")));
            }
            names.insert(name.clone(), i);
        }
        specs.push(spec);
        afters.push(after);
    }
    for (i, after) in afters.into_iter().enumerate() {
        if let Some(values) = after {
            let lookup = |name: &str| names.get(name).map(|&j| j as u32);
            specs[i].after =
                resolve_after(&values, lookup).map_err(|(why, _)| format!("tasks[{i}]: {why}"))?;
        }
    }
    protocol::dag::check(&specs).map_err(|e| match e {
        DagError::UnknownSpec { spec, target } => {
            format!("tasks[{spec}]: after: no tasks[{target}]")
        }
        DagError::Cycle { path } => {
            let steps: Vec<String> = path.iter().map(|i| format!("tasks[{i}]")).collect();
            format!("tasks[{}]: cycle in after: {}", path[0], steps.join(" -> "))
        }
    })?;
    Ok(specs)
}

fn line_spec(line: Line, defaults: &SpecDefaults) -> std::result::Result<TaskSpec, String> {
    let kind = match (&line.cmd, &line.sleep, &line.spin) {
        (Some(argv), None, None) => TaskKind::Command {
            argv: argv.clone(),
            env: line.env.clone().unwrap_or_default().into_iter().collect(),
            cwd: line.cwd.clone(),
        },
        (None, Some(d), None) => TaskKind::Sleep {
            ms: duration_ms(duration(d, "sleep")?),
        },
        (None, None, Some(d)) => TaskKind::Spin {
            ms: duration_ms(duration(d, "spin")?),
        },
        (None, None, None) => return Err("nothing to run: give one of cmd, sleep or spin".into()),
        _ => return Err("give only one of cmd, sleep or spin".into()),
    };
    if !matches!(kind, TaskKind::Command { .. }) && (line.env.is_some() || line.cwd.is_some()) {
        return Err("env and cwd apply only to cmd".into());
    }
    let mut spec = defaults.spec(kind);
    if let Some(p) = line.priority {
        spec.priority = p;
    }
    if let Some(s) = line.size {
        spec.size = s;
    }
    if let Some(t) = &line.timeout {
        spec.timeout_ms = Some(duration_ms(duration(t, "timeout")?));
    }
    if let Some(r) = line.retries {
        spec.max_retries = r;
    }
    if let Some(r) = line.retry_failed {
        spec.retry_failed = r;
    }
    if line.group.is_some() {
        spec.group = line.group;
    }
    if let Some(n) = line.replicas {
        spec.replicas = n;
    }
    if line.name.is_some() {
        spec.name = line.name;
    }
    Ok(spec)
}

fn duration(value: &Value, field: &str) -> std::result::Result<Duration, String> {
    let parsed = match value {
        Value::String(s) => parse_duration(s),
        Value::Number(n) => parse_duration(&n.to_string()),
        _ => Err(format!("must be a duration such as \"250ms\", got {value}")),
    };
    parsed.map_err(|e| format!("{field}: {e}"))
}

/// Whole milliseconds, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// serde_json ends its messages with "at line 1 column N", which would contradict our line
/// number; keep the column, drop the line.
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(msg) => format!("{msg} (column {})", e.column()),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SpecDefaults {
        SpecDefaults {
            time_request_ms: None,
            priority: 7,
            size: 2.0,
            timeout_ms: Some(9_000),
            max_retries: 1,
            retry_failed: 0,
            group: None,
            replicas: 2,
            after: vec![],
        }
    }

    fn err(text: &str) -> String {
        parse(text, "t.jsonl", &defaults()).unwrap_err().to_string()
    }

    #[test]
    fn good_lines_with_defaults_and_overrides() {
        let text = r#"
# a comment, then a blank line

{"cmd": ["echo", "hi"], "env": {"B": "2", "A": "1"}, "cwd": "/tmp"}
  {"sleep": "20ms", "priority": -3, "size": 0.5, "timeout": "5s", "retries": 0}
{"spin": 1.5}
{"cmd": ["true"], "timeout": null}
"#;
        let specs = parse(text, "t.jsonl", &defaults()).unwrap();
        assert_eq!(specs.len(), 4);
        assert_eq!(
            specs[0],
            TaskSpec {
                time_request_ms: None,
                kind: TaskKind::Command {
                    argv: vec!["echo".into(), "hi".into()],
                    env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                    cwd: Some("/tmp".into()),
                },
                priority: 7,
                size: 2.0,
                timeout_ms: Some(9_000),
                max_retries: 1,
                retry_failed: 0,
                group: None,
                replicas: 2,
                name: None,
                after: vec![],
            }
        );
        assert_eq!(
            specs[1],
            TaskSpec {
                time_request_ms: None,
                kind: TaskKind::Sleep { ms: 20 },
                priority: -3,
                size: 0.5,
                timeout_ms: Some(5_000),
                max_retries: 0,
                retry_failed: 0,
                group: None,
                replicas: 2,
                name: None,
                after: vec![],
            }
        );
        assert_eq!(specs[2].kind, TaskKind::Spin { ms: 1_500 });
        assert_eq!(specs[3].timeout_ms, Some(9_000), "null keeps the default");
    }

    #[test]
    fn windows_line_endings_and_bom() {
        let specs = parse(
            "\u{feff}{\"sleep\": \"1s\"}\r\n{\"spin\": \"2s\"}\r\n",
            "t",
            &defaults(),
        );
        assert_eq!(specs.unwrap().len(), 2);
    }

    #[test]
    fn unknown_field_names_the_line() {
        let e = err("{\"sleep\": \"1s\"}\n\n{\"cmd\": [\"ls\"], \"priorty\": 3}\n");
        assert!(
            e.starts_with("t.jsonl line 3: unknown field `priorty`"),
            "{e}"
        );
        assert!(
            !e.contains("at line 1"),
            "serde's own line number is dropped: {e}"
        );
    }

    #[test]
    fn two_sources_on_one_line() {
        let e = err(r#"{"cmd": ["ls"], "sleep": "1s"}"#);
        assert_eq!(e, "t.jsonl line 1: give only one of cmd, sleep or spin");
        let e = err(r#"{"sleep": "1s", "spin": "1s"}"#);
        assert_eq!(e, "t.jsonl line 1: give only one of cmd, sleep or spin");
        let e = err(r#"{"priority": 1}"#);
        assert_eq!(
            e,
            "t.jsonl line 1: nothing to run: give one of cmd, sleep or spin"
        );
    }

    #[test]
    fn negative_and_bad_durations() {
        let e = err("{\"sleep\": \"1s\"}\n{\"sleep\": \"-5ms\"}");
        assert!(
            e.starts_with("t.jsonl line 2: sleep: invalid duration \"-5ms\""),
            "{e}"
        );
        let e = err(r#"{"spin": -5}"#);
        assert!(
            e.starts_with("t.jsonl line 1: spin: invalid duration"),
            "{e}"
        );
        let e = err(r#"{"cmd": ["ls"], "timeout": "0s"}"#);
        assert_eq!(e, "t.jsonl line 1: timeout must be greater than zero");
        let e = err(r#"{"cmd": ["ls"], "timeout": [1]}"#);
        assert!(e.contains("timeout: must be a duration"), "{e}");
    }

    #[test]
    fn other_bad_lines() {
        assert!(err(r#"{"cmd": []}"#).ends_with("command has an empty argv"));
        assert!(err(r#"{"cmd": "echo hi"}"#).contains("invalid type: string"));
        assert!(err(r#"{"sleep": "1s", "cwd": "/"}"#).ends_with("env and cwd apply only to cmd"));
        assert!(err(r#"{"sleep": "1s", "size": -1}"#).contains("size must be"));
        assert!(err("{not json").starts_with("t.jsonl line 1: "));
        assert_eq!(err("# only a comment\n\n"), "t.jsonl: no tasks");
    }

    #[test]
    fn limits_are_named_and_marked_as_the_masters_refusal() {
        let e = parse(
            "{\"sleep\": \"1s\"}\n{\"cmd\":[\"true\"],\"env\":{\"A=B\":\"x\"}}",
            "t.jsonl",
            &defaults(),
        )
        .unwrap_err();
        assert!(e.breaks_limit);
        assert_eq!(
            e.to_string(),
            "t.jsonl line 2: env key \"A=B\" contains '='"
        );
        let group = format!(r#"{{"sleep": "1s", "group": "{}"}}"#, "g".repeat(100 << 10));
        let e = parse(&group, "t.jsonl", &defaults()).unwrap_err();
        assert!(
            e.breaks_limit && e.why.starts_with("group name must be"),
            "{e}"
        );
        let e = parse(r#"{"cmd": []}"#, "t.jsonl", &defaults()).unwrap_err();
        assert!(!e.breaks_limit, "bad usage, not a limit");
    }

    #[test]
    fn group_and_retry_failed_per_line() {
        let specs = parse(
            r#"{"sleep": "1s", "group": "gpu", "retry_failed": 2}"#,
            "t.jsonl",
            &defaults(),
        )
        .expect("valid");
        assert_eq!(specs[0].group.as_deref(), Some("gpu"));
        assert_eq!(specs[0].retry_failed, 2);
    }

    #[test]
    fn names_and_after_make_one_dag() {
        let text = r#"
{"cmd": ["make"], "name": "build", "after": ["fetch"]}
# fetch comes later in the file: order does not matter
{"cmd": ["curl", "x"], "name": "fetch", "after": [12]}
{"sleep": "1s", "after": ["build", "fetch", 3]}
{"sleep": "1s"}
"#;
        let file = parse_file(text, "t.jsonl", &defaults()).expect("a DAG");
        assert_eq!(file.lines, [2, 4, 5, 6]);
        assert_eq!(file.specs[0].name.as_deref(), Some("build"));
        assert_eq!(file.specs[0].after, [After::Spec(1)]);
        assert_eq!(file.specs[1].after, [After::id(TaskId(12))]);
        assert_eq!(
            file.specs[2].after,
            [After::Spec(0), After::Spec(1), After::id(TaskId(3))]
        );
        assert!(file.specs[3].after.is_empty());
        assert!(file.is_dag());
        assert_eq!(file.largest_id(), Some((TaskId(12), 4)));
    }

    #[test]
    fn the_flag_is_the_default_after_and_a_line_overrides_it() {
        let d = SpecDefaults {
            after: vec![After::id(TaskId(9))],
            ..defaults()
        };
        let file = parse_file(
            "{\"sleep\": 1, \"name\": \"a\"}\n{\"sleep\": 1, \"after\": [\"a\"]}",
            "t",
            &d,
        )
        .expect("valid");
        assert_eq!(file.specs[0].after, [After::id(TaskId(9))]);
        assert_eq!(file.specs[1].after, [After::Spec(0)]);
    }

    #[test]
    fn cycles_unknown_names_and_repeated_names_name_the_line() {
        let e = parse(
            "{\"sleep\": 1, \"name\": \"a\", \"after\": [\"b\"]}\n\n{\"sleep\": 1, \"name\": \"b\", \"after\": [\"a\"]}",
            "t.jsonl",
            &defaults(),
        )
        .unwrap_err();
        assert!(e.breaks_limit, "refused as the master would: exit 1");
        assert_eq!(
            e.to_string(),
            "t.jsonl line 1: cycle in after: line 1 (\"a\") -> line 3 (\"b\") -> line 1 (\"a\")"
        );
        let e = err("{\"sleep\": 1, \"after\": [\"nope\"]}");
        assert_eq!(
            e,
            "t.jsonl line 1: after: no line named \"nope\" in this file"
        );
        let e = err("{\"sleep\": 1, \"name\": \"x\"}\n{\"spin\": 1, \"name\": \"x\"}");
        assert_eq!(e, "t.jsonl line 2: name \"x\" is already line 1's");
        assert!(err(r#"{"sleep": 1, "after": [0]}"#).contains("0 is not a task id"));
        assert!(err(r#"{"sleep": 1, "after": [true]}"#).contains("line names or task ids"));
        assert!(err(r#"{"sleep": 1, "after": "a"}"#).contains("invalid type"));
        assert!(err(r#"{"sleep": 1, "name": ""}"#).contains("name must be 1 to 256 bytes"));
    }

    #[test]
    fn a_batch_of_objects_is_one_dag() {
        let batch =
            |v: Value| parse_objects(v.as_array().cloned().unwrap_or_default(), &defaults());
        let specs = batch(serde_json::json!([
            {"sleep": "1s", "after": ["b", 3]},
            {"sleep": "1s", "name": "b"}
        ]))
        .expect("valid");
        assert_eq!(specs[0].after, [After::Spec(1), After::id(TaskId(3))]);
        let e = batch(serde_json::json!([
            {"sleep": "1s", "name": "a", "after": ["b"]},
            {"sleep": "1s", "name": "b", "after": ["a"]}
        ]))
        .unwrap_err();
        assert_eq!(
            e,
            "tasks[0]: cycle in after: tasks[0] -> tasks[1] -> tasks[0]"
        );
        let e = batch(serde_json::json!([{"sleep": "1s"}, {"slep": 1}])).unwrap_err();
        assert!(e.starts_with("tasks[1]: unknown field"), "{e}");
    }

    #[test]
    fn an_object_may_wait_for_ids_only() {
        let v = serde_json::json!({"sleep": "1s", "after": [4, 5], "name": "n"});
        let spec = parse_object(v, &defaults()).expect("valid");
        assert_eq!(spec.after, [After::id(TaskId(4)), After::id(TaskId(5))]);
        assert_eq!(spec.name.as_deref(), Some("n"));
        let v = serde_json::json!({"sleep": "1s", "after": ["fetch"]});
        assert!(parse_object(v, &defaults())
            .unwrap_err()
            .contains("no line named"));
    }

    #[test]
    fn replicas_per_line_override_the_default() {
        let specs = parse(
            "{\"sleep\": \"1s\"}\n{\"sleep\": \"1s\", \"replicas\": 64}\n{\"spin\": 1, \"replicas\": 1}",
            "t.jsonl",
            &defaults(),
        )
        .expect("valid");
        let replicas: Vec<u32> = specs.iter().map(|s| s.replicas).collect();
        assert_eq!(replicas, [2, 64, 1]);
        assert_eq!(
            err("{\"sleep\": \"1s\"}\n{\"sleep\": \"1s\", \"replicas\": 0}"),
            "t.jsonl line 2: replicas must be 1 to 64, got 0"
        );
        assert_eq!(
            err(r#"{"cmd": ["ls"], "replicas": 65}"#),
            "t.jsonl line 1: replicas must be 1 to 64, got 65"
        );
        assert!(err(r#"{"cmd": ["ls"], "replicas": -1}"#).contains("invalid value"));
        assert!(err(r#"{"cmd": ["ls"], "replicas": "3"}"#).contains("invalid type"));
    }
}
