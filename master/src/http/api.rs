//! The JSON API v1: a request becomes either an answer at once (the page, a refusal) or a
//! request to the core as a local client ([`Action::Ask`]); the core's replies to it, chunks
//! included, become one answer ([`Pending::absorb`]). The JSON shapes are the CLI's (`crate::json`),
//! a submitted task is a task-file line (`crate::taskfile`).

use super::conn::{Request, Response, JSON};
use super::dashboard::Asset;
use super::router::{route, NoRoute, Route};
use crate::json::{JobView, ResultView, StatusView};
use crate::taskfile::{parse_object, parse_objects, SpecDefaults};
use protocol::limits::MAX_JOB_NAME_BYTES;
use protocol::{
    FromMaster, JobStatus, OutputStream, StatusReport, TaskId, TaskResult, TaskSpec, TaskState,
    ToMaster,
};
use scheduler::PAGE_LIMIT_MAX;
use serde_json::{json, Value};

/// Most tasks one `POST /api/v1/tasks` creates: its answer lists every id, and 100,000 ids are
/// some 700 KB of JSON. More go in several requests.
pub const SUBMIT_TASKS_MAX: u64 = 100_000;
/// A task page's size when the query names none.
pub const PAGE_LIMIT_DEFAULT: u32 = 100;

/// What to do with a request.
#[derive(Debug)]
pub enum Action {
    /// Answer this now.
    Respond(Response),
    /// Hand `msg` to the core; its replies go to `pending`.
    Ask {
        msg: Box<ToMaster>,
        pending: Pending,
    },
    /// `GET /metrics`: the shell renders the core's metrics (`http::metrics`).
    Metrics,
    /// `GET /api/v1/report`: the shell renders the core's report.
    Report,
    /// `GET /api/v1/events`: the connection becomes an event stream (`http::events`).
    Subscribe,
}

/// Routes and checks a request. `token`: the master's, if it has one.
pub fn handle(req: &Request, token: Option<&[u8]>) -> Action {
    let route = match route(&req.method, &req.path) {
        Ok(r) => r,
        Err(NoRoute::NotFound) => {
            let message = format!("no such path: {}", req.path);
            return Action::Respond(Response::error(404, &message));
        }
        Err(NoRoute::MethodNotAllowed { allow }) => {
            let message = format!("{} is not allowed here; allowed: {allow}", req.method);
            let answer = Response::error(405, &message).header(format!("Allow: {allow}"));
            return Action::Respond(answer);
        }
        Err(NoRoute::BadId(message)) => return Action::Respond(Response::error(400, &message)),
    };
    if let Some(token) = token.filter(|_| route.needs_token()) {
        if !authorized(token, req.authorization.as_deref()) {
            let answer = Response::error(
                401,
                "missing or wrong token: send Authorization: Bearer TOKEN",
            )
            .header("WWW-Authenticate: Bearer".into());
            return Action::Respond(answer);
        }
    }
    let ask = |msg, pending| Action::Ask {
        msg: Box::new(msg),
        pending,
    };
    match route {
        Route::Dashboard => Action::Respond(asset(Asset::Index)),
        Route::Static(a) => Action::Respond(asset(a)),
        Route::Status => ask(ToMaster::Status, Pending::Status(None)),
        Route::Submit => match parse_submit(&req.body) {
            Ok((specs, count, name)) => {
                ask(ToMaster::Submit { specs, count, name }, Pending::Submit)
            }
            Err(message) => Action::Respond(Response::error(400, &message)),
        },
        Route::ListTasks => match parse_page_query(&req.query) {
            Ok((state, after, limit)) => ask(
                ToMaster::ResultsPage {
                    state,
                    after,
                    limit,
                },
                Pending::Page(Vec::new()),
            ),
            Err(message) => Action::Respond(Response::error(400, &message)),
        },
        Route::GetTask(id) => ask(
            ToMaster::Results {
                ids: vec![id],
                jobs: vec![],
            },
            Pending::Task(Vec::new()),
        ),
        Route::CancelTask(id) => ask(
            ToMaster::Cancel {
                ids: vec![id],
                jobs: vec![],
            },
            Pending::Cancel,
        ),
        Route::ListJobs => ask(ToMaster::Jobs { ids: vec![] }, Pending::Jobs(Vec::new())),
        Route::GetJob(id) => ask(ToMaster::Jobs { ids: vec![id] }, Pending::Job(Vec::new())),
        Route::ForgetJob(id) => ask(
            ToMaster::Forget {
                ids: vec![],
                jobs: vec![id],
                finished_before_ms: None,
            },
            Pending::Forget,
        ),
        Route::TaskLog(task) => match parse_log_query(&req.query) {
            Ok((stream, offset)) => ask(
                ToMaster::Log {
                    task,
                    stream,
                    offset,
                },
                Pending::Log,
            ),
            Err(message) => Action::Respond(Response::error(400, &message)),
        },
        Route::Metrics => Action::Metrics,
        Route::Report => Action::Report,
        Route::Events => Action::Subscribe,
    }
}

fn asset(a: Asset) -> Response {
    Response::new(200, a.content_type(), a.body().as_bytes().to_vec())
}

/// `Authorization: Bearer TOKEN` with the master's token, compared in constant time.
fn authorized(token: &[u8], header: Option<&str>) -> bool {
    let Some(value) = header else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(token, given.trim().as_bytes())
}

/// Equal bytes, in a time that depends only on the lengths (a guesser learns nothing from how
/// long a wrong token took, beyond its length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// The body of `POST /api/v1/tasks`: one task object, or `{"tasks": [obj, ...], "count": N}`.
/// Errors name the field, with the task-file's messages.
fn parse_submit(body: &[u8]) -> Result<(Vec<TaskSpec>, u32, Option<String>), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON in the body: {e}"))?;
    let defaults = SpecDefaults::default();
    let Value::Object(mut map) = value else {
        return Err(
            "the body must be a JSON object: a task, or {\"tasks\": [...], \"count\": N}".into(),
        );
    };
    if !map.contains_key("tasks") {
        let spec = parse_object(Value::Object(map), &defaults).map_err(|e| format!("task: {e}"))?;
        return Ok((vec![spec], 1, None));
    }
    if let Some(key) = map
        .keys()
        .find(|k| !["tasks", "count", "name"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{key}`: a batch has only `tasks`, `count` and `name` (the job's)"
        ));
    }
    let name = match map.remove("name") {
        None => None,
        Some(Value::String(s)) if s.len() <= MAX_JOB_NAME_BYTES => Some(s),
        Some(v) => {
            return Err(format!(
                "name: must be a string of at most {MAX_JOB_NAME_BYTES} bytes, got {v:.40}"
            ))
        }
    };
    let count = match map.remove("count") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("count: must be a whole number from 1, got {v}"))?,
    };
    let Some(Value::Array(tasks)) = map.remove("tasks") else {
        return Err("tasks: must be an array of task objects".into());
    };
    if tasks.is_empty() {
        return Err("tasks: no tasks".into());
    }
    let total = tasks.len() as u64 * u64::from(count);
    if total > SUBMIT_TASKS_MAX {
        return Err(format!(
            "{total} tasks in one request; at most {SUBMIT_TASKS_MAX} (the answer lists every id)"
        ));
    }
    let specs = parse_objects(tasks, &defaults)?;
    Ok((specs, count, name))
}

/// `stream=stdout|stderr&offset=N`, each optional (stdout from 0).
fn parse_log_query(query: &str) -> Result<(OutputStream, u64), String> {
    let mut stream = OutputStream::Stdout;
    let mut offset = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "stream" => {
                stream = match value {
                    "stdout" => OutputStream::Stdout,
                    "stderr" => OutputStream::Stderr,
                    _ => return Err(format!("stream: stdout or stderr, got {value:?}")),
                }
            }
            "offset" => {
                offset = value.parse().map_err(|_| {
                    format!("offset: must be a byte offset (a whole number), got {value:?}")
                })?
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}; known: stream, offset"
                ))
            }
        }
    }
    Ok((stream, offset))
}

/// `state=S&after=ID&limit=N`, each optional.
fn parse_page_query(query: &str) -> Result<(Option<TaskState>, TaskId, u32), String> {
    let mut state = None;
    let mut after = TaskId(0);
    let mut limit = PAGE_LIMIT_DEFAULT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "state" => {
                let found = TaskState::ALL.iter().find(|s| s.as_str() == value);
                let Some(&s) = found else {
                    let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(format!(
                        "state: unknown state {value:?}; one of {}",
                        names.join(", ")
                    ));
                };
                state = Some(s);
            }
            "after" => {
                after = TaskId(value.parse().map_err(|_| {
                    format!("after: must be a task id (a whole number), got {value:?}")
                })?);
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("limit: must be a whole number from 1, got {value:?}"))?
                    .min(PAGE_LIMIT_MAX);
            }
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}; known: state, after, limit"
                ))
            }
        }
    }
    Ok((state, after, limit))
}

/// A request handed to the core, gathering its replies.
#[derive(Debug)]
pub enum Pending {
    Status(Option<StatusReport>),
    Submit,
    Page(Vec<TaskResult>),
    Task(Vec<TaskResult>),
    Cancel,
    Log,
    /// `GET /api/v1/jobs`: every job, as `master jobs --json`.
    Jobs(Vec<JobStatus>),
    /// `GET /api/v1/jobs/ID`: one job's object.
    Job(Vec<JobStatus>),
    /// `DELETE /api/v1/jobs/ID`: what was forgotten.
    Forget,
}

impl Pending {
    /// Takes one reply; returns the answer once the last one has come.
    pub fn absorb(&mut self, msg: FromMaster) -> Option<Response> {
        match (self, msg) {
            (Pending::Status(acc), FromMaster::Status { report, more }) => {
                match acc {
                    Some(all) => all.workers.extend(report.workers),
                    None => *acc = Some(report),
                }
                if more {
                    return None;
                }
                let report = acc.take()?;
                Some(ok(200, &StatusView::from(&report)))
            }
            (
                Pending::Submit,
                FromMaster::Submitted {
                    first, count, job, ..
                },
            ) => {
                let ids: Vec<u64> = (first.0..first.0 + count).collect();
                Some(ok(201, &json!({ "ids": ids, "job": job.0 })))
            }
            (Pending::Page(acc), FromMaster::ResultsPage { tasks, more, next }) => {
                acc.extend(tasks);
                if more {
                    return None;
                }
                let page = PageView {
                    tasks: acc.iter().map(ResultView::from).collect(),
                    next: next.map(|t| t.0),
                };
                Some(ok(200, &page))
            }
            (Pending::Task(acc), FromMaster::Results { tasks, more }) => {
                acc.extend(tasks);
                if more {
                    return None;
                }
                Some(match acc.first() {
                    Some(t) => ok(200, &ResultView::from(t)),
                    None => Response::error(404, "no such task"),
                })
            }
            (
                Pending::Cancel,
                FromMaster::CancelDone {
                    cancelled,
                    already_final,
                    unknown,
                },
            ) => {
                let ids = |v: Vec<TaskId>| v.into_iter().map(|t| t.0).collect::<Vec<u64>>();
                Some(ok(
                    200,
                    &json!({
                        "cancelled": ids(cancelled),
                        "already_final": ids(already_final),
                        "unknown": ids(unknown),
                    }),
                ))
            }
            (
                Pending::Log,
                FromMaster::Log {
                    offset,
                    bytes,
                    end,
                    done,
                    removed,
                    attempt,
                    ..
                },
            ) => {
                // The bytes as printed (not necessarily UTF-8); where they are in the log, and
                // whether more will come, in headers: ask again from `offset + length`.
                let answer = Response::new(200, "application/octet-stream", bytes)
                    .header(format!("X-Log-Offset: {offset}"))
                    .header(format!("X-Log-End: {end}"))
                    .header(format!("X-Log-Done: {done}"));
                // The run whose log this is: when it changes (a retry, the winning copy) a
                // poller starts again from 0, as `master logs --follow` does.
                let answer = match attempt {
                    Some(a) => answer.header(format!("X-Log-Attempt: {a}")),
                    None => answer,
                };
                Some(if removed {
                    answer.header("X-Log-Removed: true".into())
                } else {
                    answer
                })
            }
            (Pending::Log, FromMaster::Error { message }) => Some(Response::error(404, &message)),
            (Pending::Jobs(acc), FromMaster::Jobs { jobs, more }) => {
                acc.extend(jobs);
                if more {
                    return None;
                }
                let views: Vec<JobView<'_>> = acc.iter().map(JobView).collect();
                Some(ok(200, &views))
            }
            (Pending::Job(acc), FromMaster::Jobs { jobs, more }) => {
                acc.extend(jobs);
                if more {
                    return None;
                }
                Some(match acc.first() {
                    Some(j) => ok(200, &JobView(j)),
                    None => Response::error(404, "no such job"),
                })
            }
            (
                Pending::Forget,
                FromMaster::Forgotten {
                    tasks,
                    jobs,
                    unfinished_count,
                    ..
                },
            ) => {
                let whole = jobs.iter().any(|j| j.whole);
                Some(ok(
                    200,
                    &json!({
                        "forgotten": tasks,
                        "job_forgotten": whole,
                        "unfinished": unfinished_count,
                    }),
                ))
            }
            // The only error a one-task `Results` (or one-job `Jobs`, `Forget`) gets is an
            // unknown id.
            (
                Pending::Task(_) | Pending::Job(_) | Pending::Forget,
                FromMaster::Error { message },
            ) => Some(Response::error(404, &message)),
            (Pending::Submit, FromMaster::Error { message }) => {
                Some(Response::error(400, &message))
            }
            (_, FromMaster::Error { message }) => Some(Response::error(500, &message)),
            (_, other) => Some(Response::error(
                500,
                &format!("unexpected {} reply from the core", other.name()),
            )),
        }
    }
}

/// `GET /api/v1/tasks`: `{"tasks": [...], "next": ID or null}`.
#[derive(serde::Serialize)]
struct PageView<'a> {
    tasks: Vec<ResultView<'a>>,
    /// The `after` of the next page; null when no task past this page was there.
    next: Option<u64>,
}

fn ok(status: u16, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(status, JSON, body),
        Err(e) => Response::error(500, &format!("cannot write the answer as JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &str) -> Request {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            authorization: None,
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn refusal(action: Action) -> (u16, String) {
        match action {
            Action::Respond(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
            Action::Ask { msg, .. } => panic!("asked the core: {}", msg.name()),
            other => panic!("answered by the shell: {other:?}"),
        }
    }

    #[test]
    fn submit_bodies_are_one_task_or_a_batch() {
        let (specs, count, _) = parse_submit(br#"{"cmd": ["sh", "-c", "echo hi"]}"#).unwrap();
        assert_eq!((specs.len(), count), (1, 1));
        let (specs, count, name) = parse_submit(
            br#"{"tasks": [{"sleep": "1ms"}, {"spin": 0.5}], "count": 50, "name": "b"}"#,
        )
        .unwrap();
        assert_eq!(name.as_deref(), Some("b"));
        assert_eq!((specs.len(), count), (2, 50));
        let err = |body: &str| parse_submit(body.as_bytes()).unwrap_err();
        assert!(err("{").starts_with("invalid JSON"), "{}", err("{"));
        assert!(err(r#"{"cmd": ["x"], "priorty": 1}"#).contains("priorty"));
        assert!(err(r#"{"tasks": [{"sleep": "x"}]}"#).starts_with("tasks[0]: sleep"));
        assert!(err(r#"{"tasks": [{"sleep": "1s"}], "count": 0}"#).starts_with("count"));
        assert!(err(r#"{"tasks": [{"sleep": "1s"}], "extra": 1}"#).contains("extra"));
        assert!(err(r#"{"tasks": []}"#).contains("no tasks"));
        assert!(err(r#"{"tasks": [{"sleep": "1s"}], "count": 100001}"#).contains("at most"));
        assert!(err("[1]").contains("JSON object"));
    }

    #[test]
    fn page_queries_are_checked() {
        assert_eq!(parse_page_query(""), Ok((None, TaskId(0), 100)));
        assert_eq!(
            parse_page_query("state=succeeded&after=7&limit=5000"),
            Ok((Some(TaskState::Succeeded), TaskId(7), 1000))
        );
        assert!(parse_page_query("state=done")
            .unwrap_err()
            .contains("state"));
        assert!(parse_page_query("limit=0").unwrap_err().contains("limit"));
        assert!(parse_page_query("after=x").unwrap_err().contains("after"));
        assert!(parse_page_query("x=1").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn a_token_is_needed_for_the_api_but_not_the_page() {
        let token = Some(&b"s3cret"[..]);
        let (status, body) = refusal(handle(&request("GET", "/api/v1/status", ""), token));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("error"));
        let mut req = request("GET", "/api/v1/status", "");
        req.authorization = Some("Bearer s3cret".into());
        assert!(matches!(handle(&req, token), Action::Ask { .. }));
        req.authorization = Some("Bearer s3cre".into());
        assert_eq!(refusal(handle(&req, token)).0, 401);
        assert_eq!(refusal(handle(&request("GET", "/", ""), token)).0, 200);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn chunked_replies_make_one_answer() {
        let report = |workers| StatusReport {
            policy: "least-loaded".into(),
            workers,
            queued: 1,
            running: 0,
            succeeded: 2,
            failed: 0,
            waiting: 0,
            unserved: Vec::new(),
        };
        let mut p = Pending::Status(None);
        assert_eq!(
            p.absorb(FromMaster::Status {
                report: report(vec![]),
                more: true
            }),
            None
        );
        let answer = p
            .absorb(FromMaster::Status {
                report: report(vec![]),
                more: false,
            })
            .expect("last chunk");
        assert_eq!(answer.status, 200);
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(v["succeeded"], 2);
        let mut p = Pending::Page(Vec::new());
        let answer = p
            .absorb(FromMaster::ResultsPage {
                tasks: vec![],
                more: false,
                next: Some(TaskId(9)),
            })
            .unwrap();
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(v, json!({"tasks": [], "next": 9}));
        let mut p = Pending::Task(Vec::new());
        let answer = p
            .absorb(FromMaster::Error {
                message: "unknown task id 5".into(),
            })
            .unwrap();
        assert_eq!(answer.status, 404);
    }
}
