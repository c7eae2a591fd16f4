//! Server-Sent Events for `GET /api/v1/events`: the wire format of the core's events and the
//! set of subscribers with their bound. No sockets here: the shell appends each event to the
//! subscribers' connection buffers and closes the ones [`Subscribers::publish`] drops.
//!
//! IMPORTANT: a subscriber never slows dispatch. Each event is formatted once and appended to
//! every subscriber's buffer; one whose unsent bytes would pass [`SUBSCRIBER_BUFFER_MAX`] (a
//! reader that stopped reading, or reads slower than events come) is dropped instead of growing
//! or being waited for. Browsers reconnect after the `retry:` hint.

use crate::core::events::Event;
use std::collections::BTreeSet;

/// `Content-Type` of the stream.
pub const CONTENT_TYPE: &str = "text/event-stream";
/// What a browser waits before reconnecting (the `retry:` field), ms.
pub const RETRY_MS: u64 = 2_000;
/// Unsent bytes one subscriber may have. Events come at most ~25 a second (20 task events, the
/// summary, worker changes) of a few hundred bytes: this is minutes of a stalled reader.
pub const SUBSCRIBER_BUFFER_MAX: usize = 1 << 20;
/// At most this many subscribers at once (each holds up to `SUBSCRIBER_BUFFER_MAX`); the HTTP
/// side answers 503 past it.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The response head of `GET /api/v1/events`: no `Content-Length` (the body lasts as long as
/// the connection), no caching, and no buffering by a proxy in between. Then [`preamble`] (which
/// `Subscribers::add` puts first in the buffer) and the events.
pub fn stream_head() -> &'static str {
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
     X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n"
}

/// The first bytes of a stream, after the response headers: the reconnect hint.
pub fn preamble() -> String {
    format!(": ballast events\nretry: {RETRY_MS}\n\n")
}

/// One event as it goes on the wire: `event: NAME\ndata: JSON\n\n`. The JSON is one line
/// (`serde_json` escapes line feeds in strings), so one `data:` line holds it.
pub fn frame(event: &Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|e| {
        // Our own types always serialise; say so in the stream rather than drop it silently.
        serde_json::json!({ "error": e.to_string() }).to_string()
    });
    format!("event: {}\ndata: {data}\n\n", event.name())
}

/// Where one event went (what the shell's `deliver` says for a subscriber).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Appended to its connection's buffer.
    Queued,
    /// Its buffer would pass [`SUBSCRIBER_BUFFER_MAX`]: it fell behind, drop it.
    Behind,
    /// Its connection is gone.
    Gone,
}

/// Whether `frame` may join `unsent` bytes already waiting for a subscriber.
pub fn fits(unsent: usize, frame: usize) -> bool {
    unsent + frame <= SUBSCRIBER_BUFFER_MAX
}

/// The subscribers, by the shell's key (its connection id). Their buffers are their
/// connections' own write buffers; this keeps who subscribes and the bound.
#[derive(Debug)]
pub struct Subscribers<K> {
    keys: BTreeSet<K>,
    /// Subscribers dropped for falling behind, since start (`ballast_sse_dropped_total`).
    pub dropped_total: u64,
}

impl<K> Default for Subscribers<K> {
    fn default() -> Self {
        Subscribers {
            keys: BTreeSet::new(),
            dropped_total: 0,
        }
    }
}

/// A subscriber could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// [`MAX_SUBSCRIBERS`] are connected.
    #[error("{max} event subscribers are connected already")]
    Full { max: usize },
}

impl<K: Ord + Copy> Subscribers<K> {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key: K) -> bool {
        self.keys.contains(&key)
    }

    /// Adds `key`; the shell then writes [`stream_head`] and [`preamble`] to it. Turn the core's
    /// events on when the first one arrives (`Core::set_events`).
    pub fn add(&mut self, key: K) -> Result<(), SubscribeError> {
        if self.keys.len() >= MAX_SUBSCRIBERS && !self.keys.contains(&key) {
            return Err(SubscribeError::Full {
                max: MAX_SUBSCRIBERS,
            });
        }
        self.keys.insert(key);
        Ok(())
    }

    /// The subscriber went away. Returns whether it was one. Turn the core's events off when
    /// the last one leaves.
    pub fn remove(&mut self, key: K) -> bool {
        self.keys.remove(&key)
    }

    /// Formats `event` once and hands it to `deliver` for every subscriber. Those behind or gone
    /// are forgotten; the ones behind are returned for the shell to close.
    pub fn publish(
        &mut self,
        event: &Event,
        mut deliver: impl FnMut(K, &[u8]) -> Delivery,
    ) -> Vec<K> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        let bytes = frame(event);
        let mut behind = Vec::new();
        let mut gone = Vec::new();
        for &key in &self.keys {
            match deliver(key, bytes.as_bytes()) {
                Delivery::Queued => {}
                Delivery::Behind => behind.push(key),
                Delivery::Gone => gone.push(key),
            }
        }
        for key in behind.iter().chain(&gone) {
            self.keys.remove(key);
        }
        self.dropped_total += behind.len() as u64;
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::Summary;
    use std::collections::BTreeMap;

    fn lost(name: &str) -> Event {
        Event::WorkerLost {
            worker: name.into(),
            reason: "heartbeat\ntimeout".into(),
            requeued: 2,
            failed: 0,
            at_ms: 5,
        }
    }

    #[test]
    fn an_event_is_one_named_frame_with_one_json_line() {
        let f = frame(&lost("w\"1"));
        assert!(f.starts_with("event: worker_lost\ndata: {"), "{f}");
        assert!(f.ends_with("}\n\n"));
        assert_eq!(
            f.matches('\n').count(),
            3,
            "the reason's line feed is escaped: {f}"
        );
        let data = f
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("data: "))
            .expect("data line");
        let v: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(v["worker"], "w\"1");
        assert_eq!(v["requeued"], 2);
        let s = frame(&Event::Summary(Summary {
            at_ms: 1,
            queued: 3,
            running: 0,
            succeeded: 0,
            failed: 0,
            queue: [(String::new(), 3)].into_iter().collect(),
            queue_unlisted: 0,
            workers_alive: 0,
            finished_per_s: 0.5,
            submitted_per_s: 0.0,
            suppressed: 0,
            dropped: 0,
        }));
        assert!(
            s.starts_with("event: summary\ndata: {\"at_ms\":1,\"queued\":3,"),
            "{s}"
        );
        assert!(preamble().contains("\nretry: 2000\n\n"));
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped_and_the_others_keep_theirs() {
        let mut subs = Subscribers::default();
        subs.add(1u32).expect("room");
        subs.add(2u32).expect("room");
        subs.add(3u32).expect("room");
        // 1 reads everything at once; 2 never reads; 3's connection is gone.
        let mut buffers: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let one = frame(&lost("w")).len();
        let mut dropped = Vec::new();
        for _ in 0..(SUBSCRIBER_BUFFER_MAX / one + 1) {
            buffers.entry(1).or_default().clear();
            dropped.extend(subs.publish(&lost("w"), |k, bytes| {
                if k == 3 {
                    return Delivery::Gone;
                }
                let buf = buffers.entry(k).or_default();
                if !fits(buf.len(), bytes.len()) {
                    return Delivery::Behind;
                }
                buf.extend_from_slice(bytes);
                Delivery::Queued
            }));
        }
        assert_eq!(
            dropped,
            vec![2],
            "only the one behind is closed by the shell"
        );
        assert_eq!(subs.len(), 1);
        assert!(subs.contains(1));
        assert_eq!(subs.dropped_total, 1);
        assert_eq!(buffers[&1].len(), one);
        assert!(buffers[&2].len() <= SUBSCRIBER_BUFFER_MAX);
    }

    #[test]
    fn the_stream_head_has_no_length_and_no_cache() {
        let head = stream_head();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("\r\nContent-Type: text/event-stream\r\n"));
        assert!(head.contains("\r\nCache-Control: no-cache\r\n"));
        assert!(!head.to_ascii_lowercase().contains("content-length"));
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(head.matches("\r\n\r\n").count(), 1);
    }

    #[test]
    fn subscribers_are_bounded() {
        let mut subs = Subscribers::default();
        for k in 0..MAX_SUBSCRIBERS {
            subs.add(k).expect("room");
        }
        assert_eq!(
            subs.add(MAX_SUBSCRIBERS),
            Err(SubscribeError::Full {
                max: MAX_SUBSCRIBERS
            })
        );
        assert!(subs.remove(0));
        assert!(!subs.remove(0));
        assert!(subs.add(MAX_SUBSCRIBERS).is_ok());
    }
}
