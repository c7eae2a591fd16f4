//! The master's HTTP side, served from the same mio loop as the TCP protocol (no thread, no
//! second runtime): `conn.rs` reads requests off one connection, `router.rs` maps method and
//! path to a route, `api.rs` answers the JSON API v1 by asking the core as a local client (so a
//! submit is durable before its 201, exactly as for the CLI), `metrics.rs` renders `/metrics` and
//! `/api/v1/report` from the core's incremental metrics, `events.rs` formats the SSE stream and
//! bounds its subscribers, and `dashboard` holds the embedded
//! page. The shell (`server.rs`) moves the bytes and owns the connections.

pub mod api;
pub mod conn;
pub mod dashboard;
pub mod events;
pub mod metrics;
pub mod router;

/// `master --http`'s default address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7701";
