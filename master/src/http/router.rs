//! Method and path to a route: one match on `(method, resource)`. A path no resource has is 404;
//! a known resource asked with another method is 405 with `Allow`.
//!
//! To add a route: a `Resource` variant, its line in `resource` and in `allowed`, and its
//! arm in [`route`].

use super::dashboard::Asset;
use protocol::{JobId, TaskId};

/// What a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the dashboard page.
    Dashboard,
    /// `GET /static/...`: a file of the dashboard.
    Static(Asset),
    /// `GET /api/v1/status`.
    Status,
    /// `POST /api/v1/tasks`.
    Submit,
    /// `GET /api/v1/tasks?state=S&after=ID&limit=N`.
    ListTasks,
    /// `GET /api/v1/tasks/ID`.
    GetTask(TaskId),
    /// `DELETE /api/v1/tasks/ID`.
    CancelTask(TaskId),
    /// `GET /api/v1/tasks/ID/log?stream=stdout|stderr&offset=N`: a piece of the task's log.
    TaskLog(TaskId),
    /// `GET /metrics`: the Prometheus exposition.
    Metrics,
    /// `GET /api/v1/events`: the SSE stream.
    Events,
    /// `GET /api/v1/report`: the experiment figures.
    Report,
    /// `GET /api/v1/jobs`.
    ListJobs,
    /// `GET /api/v1/jobs/ID`.
    GetJob(JobId),
    /// `DELETE /api/v1/jobs/ID`: forget the job's finished tasks (`master forget --job ID`).
    ForgetJob(JobId),
}

impl Route {
    /// The page and its files are served to anyone (the page asks for the token); everything
    /// else needs the bearer token when the master has one.
    pub fn needs_token(self) -> bool {
        !matches!(self, Route::Dashboard | Route::Static(_))
    }
}

/// Why no route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// 404.
    NotFound,
    /// 405; `allow` is the `Allow` header's value.
    MethodNotAllowed { allow: &'static str },
    /// 400: the path names a task or a job with something that is not an id.
    BadId(String),
}

/// A path the router knows, whatever the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Root,
    Static(Asset),
    Status,
    Tasks,
    Task(TaskId),
    TaskLog(TaskId),
    Metrics,
    Events,
    Report,
    Jobs,
    Job(JobId),
}

fn resource(path: &str) -> Result<Option<Resource>, NoRoute> {
    Ok(Some(match path {
        "/" | "/index.html" => Resource::Root,
        "/api/v1/status" => Resource::Status,
        "/metrics" => Resource::Metrics,
        "/api/v1/events" => Resource::Events,
        "/api/v1/report" => Resource::Report,
        "/api/v1/tasks" | "/api/v1/tasks/" => Resource::Tasks,
        "/api/v1/jobs" | "/api/v1/jobs/" => Resource::Jobs,
        _ => {
            if let Some(asset) = path.strip_prefix("/static/").and_then(Asset::named) {
                Resource::Static(asset)
            } else if let Some(id) = path.strip_prefix("/api/v1/tasks/") {
                let (id, log) = match id.strip_suffix("/log") {
                    Some(id) => (id, true),
                    None => (id, false),
                };
                match id.parse::<u64>() {
                    Ok(n) if log => Resource::TaskLog(TaskId(n)),
                    Ok(n) => Resource::Task(TaskId(n)),
                    Err(_) => {
                        return Err(NoRoute::BadId(format!("task id {id:?} is not a number")))
                    }
                }
            } else if let Some(id) = path.strip_prefix("/api/v1/jobs/") {
                match id.parse::<u64>() {
                    Ok(n) => Resource::Job(JobId(n)),
                    Err(_) => return Err(NoRoute::BadId(format!("job id {id:?} is not a number"))),
                }
            } else {
                return Ok(None);
            }
        }
    }))
}

fn allowed(r: Resource) -> &'static str {
    match r {
        Resource::Root
        | Resource::Static(_)
        | Resource::Status
        | Resource::Metrics
        | Resource::Events
        | Resource::Report
        | Resource::TaskLog(_)
        | Resource::Jobs => "GET",
        Resource::Job(_) => "GET, DELETE",
        Resource::Tasks => "GET, POST",
        Resource::Task(_) => "GET, DELETE",
    }
}

pub fn route(method: &str, path: &str) -> Result<Route, NoRoute> {
    let Some(res) = resource(path)? else {
        return Err(NoRoute::NotFound);
    };
    match (method, res) {
        ("GET", Resource::Root) => Ok(Route::Dashboard),
        ("GET", Resource::Static(a)) => Ok(Route::Static(a)),
        ("GET", Resource::Status) => Ok(Route::Status),
        ("GET", Resource::Tasks) => Ok(Route::ListTasks),
        ("POST", Resource::Tasks) => Ok(Route::Submit),
        ("GET", Resource::Task(id)) => Ok(Route::GetTask(id)),
        ("DELETE", Resource::Task(id)) => Ok(Route::CancelTask(id)),
        ("GET", Resource::TaskLog(id)) => Ok(Route::TaskLog(id)),
        ("GET", Resource::Metrics) => Ok(Route::Metrics),
        ("GET", Resource::Events) => Ok(Route::Events),
        ("GET", Resource::Report) => Ok(Route::Report),
        ("GET", Resource::Jobs) => Ok(Route::ListJobs),
        ("GET", Resource::Job(id)) => Ok(Route::GetJob(id)),
        ("DELETE", Resource::Job(id)) => Ok(Route::ForgetJob(id)),
        (_, r) => Err(NoRoute::MethodNotAllowed { allow: allowed(r) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(route("GET", "/"), Ok(Route::Dashboard));
        assert_eq!(route("GET", "/api/v1/status"), Ok(Route::Status));
        assert_eq!(route("POST", "/api/v1/tasks"), Ok(Route::Submit));
        assert_eq!(route("GET", "/api/v1/tasks"), Ok(Route::ListTasks));
        assert_eq!(
            route("GET", "/api/v1/tasks/7"),
            Ok(Route::GetTask(TaskId(7)))
        );
        assert_eq!(
            route("DELETE", "/api/v1/tasks/7"),
            Ok(Route::CancelTask(TaskId(7)))
        );
        assert_eq!(route("GET", "/nope"), Err(NoRoute::NotFound));
        assert_eq!(route("GET", "/static/nope.js"), Err(NoRoute::NotFound));
        assert_eq!(
            route("PUT", "/api/v1/tasks"),
            Err(NoRoute::MethodNotAllowed { allow: "GET, POST" })
        );
        assert_eq!(
            route("POST", "/api/v1/status"),
            Err(NoRoute::MethodNotAllowed { allow: "GET" })
        );
        assert!(matches!(
            route("GET", "/api/v1/tasks/x"),
            Err(NoRoute::BadId(_))
        ));
        assert_eq!(route("GET", "/metrics"), Ok(Route::Metrics));
        assert_eq!(
            route("GET", "/api/v1/tasks/7/log"),
            Ok(Route::TaskLog(TaskId(7)))
        );
        assert!(matches!(
            route("DELETE", "/api/v1/tasks/7/log"),
            Err(NoRoute::MethodNotAllowed { allow: "GET" })
        ));
        assert_eq!(route("GET", "/api/v1/jobs"), Ok(Route::ListJobs));
        assert_eq!(route("GET", "/api/v1/jobs/3"), Ok(Route::GetJob(JobId(3))));
        assert!(matches!(
            route("GET", "/api/v1/jobs/x"),
            Err(NoRoute::BadId(_))
        ));
        assert_eq!(
            route("DELETE", "/api/v1/jobs/3"),
            Ok(Route::ForgetJob(JobId(3)))
        );
        assert_eq!(
            route("POST", "/api/v1/jobs/3"),
            Err(NoRoute::MethodNotAllowed {
                allow: "GET, DELETE"
            })
        );
        assert_eq!(route("GET", "/api/v1/events"), Ok(Route::Events));
        assert_eq!(route("GET", "/api/v1/report"), Ok(Route::Report));
        assert_eq!(
            route("POST", "/metrics"),
            Err(NoRoute::MethodNotAllowed { allow: "GET" })
        );
        assert!(Route::Metrics.needs_token() && Route::Events.needs_token());
        assert!(!Route::Dashboard.needs_token());
        assert!(Route::Status.needs_token());
    }
}
