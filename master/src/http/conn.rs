//! One HTTP/1.1 connection, without IO: bytes the shell read go in ([`HttpConn::spare`],
//! [`HttpConn::commit`]), whole requests come out ([`HttpConn::next_request`]), one at a time.
//! Requests are parsed with `httparse`, push-style: a head is parsed only once its blank line has
//! arrived, so a client that sends one byte at a time costs one scan of each byte, not one parse.
//!
//! Limits, checked where the bytes enter: a head over [`MAX_HEAD_BYTES`] is refused with 431, a
//! `Content-Length` over [`MAX_BODY_BYTES`] with 413 as soon as the head is read (the body is
//! never buffered), a chunked body with 411 (the API's bodies are JSON of a known length), and
//! anything httparse cannot read with 400. Each of these ends the connection after the answer.

use std::fmt::Write as _;
use thiserror::Error;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Largest request body accepted (a submission of many tasks fits; more is refused unread).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most headers in one request (browsers send some 20).
const MAX_HEADERS: usize = 128;
/// Bytes asked of the kernel per read.
pub const READ_CHUNK: usize = 16 << 10;
/// A connection with no request in progress and nothing to write is closed after this long.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// A request head must be complete this long after its first byte (against slowloris).
pub const HEAD_TIMEOUT_MS: u64 = 10_000;
/// A closing connection is read (and the bytes dropped) this long after its last answer, so the
/// client sees the answer rather than a reset for the body it is still sending.
pub const LINGER_MS: u64 = 2_000;

/// Why a request is refused before it reaches a route; the connection closes after the answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not HTTP/1.x as httparse reads it.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head did not end within the limit.
    #[error("request head over {max} bytes")]
    HeadTooLarge { max: usize },
    /// The declared body is over the limit; it was not read.
    #[error("request body of {len} bytes; at most {max}")]
    BodyTooLarge { len: u64, max: usize },
    /// A chunked (or otherwise encoded) body: the API wants a `Content-Length`.
    #[error("chunked request bodies are not accepted; send a Content-Length")]
    LengthRequired,
    /// The head took too long to arrive.
    #[error("request head not complete within {ms} ms")]
    HeadTimeout { ms: u64 },
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::HeadTooLarge { .. } => 431,
            RequestError::BodyTooLarge { .. } => 413,
            RequestError::LengthRequired => 411,
            RequestError::HeadTimeout { .. } => 408,
        }
    }
}

/// One whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// What followed `?`, if anything (not decoded).
    pub query: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// The connection stays open after the answer (HTTP/1.1 without `Connection: close`).
    pub keep_alive: bool,
}

/// A parsed head whose body is still arriving.
#[derive(Debug)]
struct Head {
    request: Request,
    /// Bytes of the head in `buf`; the body follows.
    head_len: usize,
    body_len: usize,
}

/// The read side of one connection, and where its current request stands.
#[derive(Debug, Default)]
pub struct HttpConn {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the end of the head.
    scanned: usize,
    head: Option<Head>,
    /// When the first byte of the request in `buf` arrived.
    pub started_ms: Option<u64>,
    /// `Expect: 100-continue` was seen and not yet answered: the shell writes `100 Continue`.
    pub wants_continue: bool,
}

impl HttpConn {
    /// Room for one read at the end of the buffer. Bounded: a head is at most
    /// [`MAX_HEAD_BYTES`], a body at most [`MAX_BODY_BYTES`], and bytes of pipelined requests
    /// beyond the current one are read only a chunk ahead.
    pub fn spare(&mut self) -> &mut [u8] {
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        &mut self.buf[len..]
    }

    /// `n` bytes of the last [`HttpConn::spare`] were filled.
    pub fn commit(&mut self, n: usize, now_ms: u64) {
        let filled = self.buf.len() - READ_CHUNK + n;
        self.buf.truncate(filled);
        if filled == 0 {
            // An idle kept-alive connection holds no buffer.
            self.buf = Vec::new();
        }
        if n > 0 && self.started_ms.is_none() {
            self.started_ms = Some(now_ms);
        }
    }

    /// Whether more bytes are wanted before the buffered ones can all be parsed (the shell stops
    /// reading when not, so one connection cannot fill the master's memory with pipelining).
    pub fn wants_bytes(&self) -> bool {
        match &self.head {
            Some(h) => self.buf.len() < h.head_len + h.body_len,
            None => self.buf.len() <= MAX_HEAD_BYTES,
        }
    }

    /// Whether a request has started arriving and its head is not complete.
    pub fn head_pending(&self) -> bool {
        self.head.is_none() && !self.buf.is_empty()
    }

    /// Nothing buffered: no request in progress.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.head.is_none()
    }

    /// The next whole request in the buffer, if one is there.
    pub fn next_request(&mut self) -> Result<Option<Request>, RequestError> {
        if self.head.is_none() {
            match self.parse_head()? {
                Some(head) => self.head = Some(head),
                None => return Ok(None),
            }
        }
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let end = head.head_len + head.body_len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let Some(mut head) = self.head.take() else {
            return Ok(None);
        };
        head.request.body = self.buf[head.head_len..end].to_vec();
        self.buf.drain(..end);
        self.scanned = 0;
        self.wants_continue = false;
        self.started_ms = None;
        Ok(Some(head.request))
    }

    /// The request that follows this one starts when its first byte is there (a pipelined one
    /// already is).
    pub fn restart_clock(&mut self, now_ms: u64) {
        if !self.buf.is_empty() {
            self.started_ms = Some(now_ms);
        }
    }

    fn parse_head(&mut self) -> Result<Option<Head>, RequestError> {
        // Leading blank lines before a request are allowed (RFC 9112 2.2).
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.buf.drain(..blank);
            self.scanned = 0;
        }
        let Some(head_end) = self.find_head_end() else {
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(RequestError::HeadTooLarge {
                    max: MAX_HEAD_BYTES,
                });
            }
            return Ok(None);
        };
        if head_end > MAX_HEAD_BYTES {
            return Err(RequestError::HeadTooLarge {
                max: MAX_HEAD_BYTES,
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf[..head_end]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return Err(RequestError::Malformed("incomplete request head".into()))
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(RequestError::HeadTooLarge {
                    max: MAX_HEAD_BYTES,
                })
            }
            Err(e) => return Err(RequestError::Malformed(e.to_string())),
        };
        let method = req.method.unwrap_or_default().to_string();
        let target = req.path.unwrap_or_default();
        let minor = req.version.unwrap_or(1);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.to_string(), String::new()),
        };
        if !path.starts_with('/') {
            return Err(RequestError::Malformed(format!(
                "request target {target:?} is not a path"
            )));
        }
        let mut content_length: Option<u64> = None;
        let mut authorization = None;
        let mut keep_alive = minor == 1;
        for h in req.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| RequestError::Malformed(format!("header {} is not UTF-8", h.name)))?;
            let value = value.trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let len: u64 = value.parse().map_err(|_| {
                    RequestError::Malformed(format!("Content-Length {value:?} is not a number"))
                })?;
                // Two different lengths are how requests are smuggled past proxies.
                if content_length.is_some_and(|l| l != len) {
                    return Err(RequestError::Malformed(
                        "two different Content-Length headers".into(),
                    ));
                }
                content_length = Some(len);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(RequestError::LengthRequired);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_string());
            } else if h.name.eq_ignore_ascii_case("expect")
                && value.eq_ignore_ascii_case("100-continue")
            {
                self.wants_continue = true;
            }
        }
        let len = content_length.unwrap_or(0);
        if len > MAX_BODY_BYTES as u64 {
            return Err(RequestError::BodyTooLarge {
                len,
                max: MAX_BODY_BYTES,
            });
        }
        if len == 0 {
            self.wants_continue = false;
        }
        Ok(Some(Head {
            request: Request {
                method,
                path,
                query,
                authorization,
                body: Vec::new(),
                keep_alive,
            },
            head_len,
            body_len: len as usize,
        }))
    }

    /// The end of the head (after its blank line) if it has arrived; only new bytes are searched.
    fn find_head_end(&mut self) -> Option<usize> {
        // Back up three bytes so a terminator split across reads is found.
        let from = self.scanned.saturating_sub(3);
        let window = &self.buf[from..];
        let mut found = None;
        for i in 0..window.len() {
            if window[i..].starts_with(b"\r\n\r\n") {
                found = Some(from + i + 4);
                break;
            }
            if window[i..].starts_with(b"\n\n") {
                found = Some(from + i + 2);
                break;
            }
        }
        self.scanned = self.buf.len();
        found
    }
}

/// An answer, written out with [`Response::write_to`].
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each `Name: value`.
    pub headers: Vec<String>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
            headers: Vec::new(),
            close: false,
        }
    }

    /// `{"error": message}` with this status.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
            .unwrap_or_else(|_| b"{\"error\": \"?\"}".to_vec());
        Response::new(status, JSON, body)
    }

    pub fn header(mut self, line: String) -> Response {
        self.headers.push(line);
        self
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// Appends the whole answer (head and body) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(160);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for line in &self.headers {
            head.push_str(line);
            head.push_str("\r\n");
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

pub const JSON: &str = "application/json";

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut HttpConn, bytes: &[u8]) {
        for chunk in bytes.chunks(READ_CHUNK) {
            let spare = c.spare();
            spare[..chunk.len()].copy_from_slice(chunk);
            c.commit(chunk.len(), 0);
        }
    }

    /// Feeds `bytes` in pieces of the given sizes; returns the requests, or the first error.
    fn parse_in_pieces(bytes: &[u8], sizes: &[usize]) -> Result<Vec<Request>, RequestError> {
        let mut c = HttpConn::default();
        let mut got = Vec::new();
        let mut rest = bytes;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            feed(&mut c, &rest[..n]);
            rest = &rest[n..];
            while let Some(r) = c.next_request()? {
                got.push(r);
            }
        }
        Ok(got)
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever pieces: no panic, and the buffer stays bounded.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2_000),
            sizes in proptest::collection::vec(1usize..300, 1..8),
        ) {
            let _ = parse_in_pieces(&bytes, &sizes);
        }

        /// Valid pipelined requests give the same requests however the bytes are split.
        #[test]
        fn splitting_does_not_change_the_requests(
            bodies in proptest::collection::vec("[a-z{}\\[\\]\":, ]{0,40}", 1..5),
            sizes in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let mut raw = Vec::new();
            for b in &bodies {
                raw.extend_from_slice(
                    format!("POST /api/v1/tasks HTTP/1.1\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                        .as_bytes(),
                );
            }
            let whole = parse_in_pieces(&raw, &[raw.len()]).expect("valid");
            let split = parse_in_pieces(&raw, &sizes).expect("valid");
            proptest::prop_assert_eq!(&whole, &split);
            let got: Vec<Vec<u8>> = whole.into_iter().map(|r| r.body).collect();
            let want: Vec<Vec<u8>> = bodies.iter().map(|b| b.as_bytes().to_vec()).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_request_split_byte_by_byte_is_parsed_once_whole() {
        let mut c = HttpConn::default();
        let raw = b"POST /api/v1/tasks?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcdGET / HTTP/1.1\r\n\r\n";
        let mut got = Vec::new();
        for b in raw.iter() {
            feed(&mut c, &[*b]);
            while let Some(r) = c.next_request().expect("valid") {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/api/v1/tasks");
        assert_eq!(got[0].query, "x=1");
        assert_eq!(got[0].body, b"abcd");
        assert!(got[0].keep_alive);
        assert_eq!(got[1].path, "/");
        assert!(c.is_idle());
    }

    #[test]
    fn limits_and_malformed_heads_are_refused() {
        let mut c = HttpConn::default();
        feed(&mut c, b"GARBAGE\r\n\r\n");
        assert_eq!(c.next_request().unwrap_err().status(), 400);

        let mut c = HttpConn::default();
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        feed(&mut c, big.as_bytes());
        assert_eq!(c.next_request().unwrap_err().status(), 431);

        let mut c = HttpConn::default();
        feed(
            &mut c,
            b"POST / HTTP/1.1\r\nContent-Length: 20971520\r\n\r\n",
        );
        assert_eq!(c.next_request().unwrap_err().status(), 413);

        let mut c = HttpConn::default();
        feed(
            &mut c,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(c.next_request().unwrap_err().status(), 411);

        let mut c = HttpConn::default();
        feed(
            &mut c,
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        );
        assert_eq!(c.next_request().unwrap_err().status(), 400);
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection() {
        let mut c = HttpConn::default();
        feed(&mut c, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!c.next_request().unwrap().unwrap().keep_alive);
        feed(&mut c, b"GET / HTTP/1.0\r\n\r\n");
        assert!(!c.next_request().unwrap().unwrap().keep_alive);
    }

    #[test]
    fn an_answer_has_its_length_and_headers() {
        let mut out = Vec::new();
        Response::error(405, "no")
            .header("Allow: GET".into())
            .closing()
            .write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no\"}"), "{text}");
    }
}
