//! Bytes in, requests out; responses in, bytes out.
//!
//! The kit speaks two protocols on the same port (`docs/assignment.md`): the
//! line protocol ([`line`](mod@line)) and an HTTP/1.1 subset ([`http`]). The first
//! request on a connection decides which, for the rest of it. The
//! [`Parser`] is incremental: feed it whatever `read` returned, one byte or
//! several pipelined requests at once, and take complete requests out as they
//! become available. It never blocks and never holds more than one
//! request's worth of unparsed bytes plus one read, so every model, blocking
//! or event-driven, uses the same parser.

pub mod conditional;
pub mod http;
mod line;
#[cfg(test)]
mod proptests;

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use crate::refusal::Refusal;

pub use line::encode_head;

/// How many bytes one `read` asks the socket for.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Largest declared request body (`Content-Length`) read and thrown away so
/// that the connection can stay open, as nginx discards the bodies of
/// requests for static files. A larger body, or one of unknown length
/// (`Transfer-Encoding`, or `Expect: 100-continue`, whose client may never
/// send it), closes the connection after the response, with a staged close
/// ([`Conn`](crate::conn::Conn)).
pub const MAX_DISCARDED_BODY_BYTES: u64 = 1 << 20;

/// What follows a request's head on the wire (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFollows {
    /// Nothing: the next request starts right after the head.
    Nothing,
    /// This many bytes of body, to be skipped.
    Bytes(u64),
    /// A body whose end the parser will not look for: no request can be
    /// found after it, so the connection must close.
    Unknown,
}

/// How a response must be framed: decided by the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `OK <size>\n<bytes>` / `ERR <code> <reason>\n`.
    Line,
    /// An HTTP response.
    Http(HttpFraming),
}

impl Framing {
    /// Whether the connection closes after this response (beyond what the
    /// refusal itself demands): HTTP's `Connection: close`, HTTP/1.0.
    pub fn closes_after(&self) -> bool {
        matches!(self, Framing::Http(http) if !http.keep_alive)
    }
}

/// What an HTTP response must say, decided by its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFraming {
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// HEAD: headers only.
    pub head_only: bool,
    /// `Content-Type` of a successful response.
    pub content_type: &'static str,
    /// Conditional and range headers, weighed when the response is queued.
    pub conditions: conditional::Conditions,
}

impl HttpFraming {
    /// For a request too broken to read: HTTP/1.1, then close.
    pub fn closing() -> HttpFraming {
        HttpFraming {
            http11: true,
            keep_alive: false,
            head_only: false,
            content_type: "",
            conditions: conditional::Conditions::default(),
        }
    }
}

/// One parsed request: what was asked for, and how to frame the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The raw target: a path (file service) or a number (fib service).
    pub target: Vec<u8>,
    /// How to frame the response.
    pub framing: Framing,
    /// An HTTP target's query, with its `?` (empty if none): kept for a
    /// redirect (`/dir?x` to `/dir/?x`), ignored otherwise.
    pub query: Vec<u8>,
}

impl Request {
    /// A line-protocol request for `target`.
    pub fn line(target: Vec<u8>) -> Request {
        Request { target, framing: Framing::Line, query: Vec::new() }
    }
}

/// A request that could not be parsed; the connection answers it and closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// How to frame the error.
    pub framing: Framing,
    /// What to answer.
    pub refusal: Refusal,
}

/// What a response carries when it succeeds.
#[derive(Debug)]
pub enum Body {
    /// Bytes in memory, shared with the cache (a hit costs no copy).
    Bytes {
        /// The content.
        bytes: Arc<[u8]>,
        /// When the file was last modified (`None` for computed content).
        modified: Option<SystemTime>,
    },
    /// A file too large to cache, streamed with `sendfile` in chunks.
    File {
        /// The open, sandboxed regular file.
        file: File,
        /// How many bytes to send: the size `fstat` reported at open.
        len: u64,
        /// When the file was last modified, per `fstat` at open.
        modified: Option<SystemTime>,
    },
}

impl Body {
    /// The number of body bytes that will be sent.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes { bytes, .. } => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// When the content was last modified, if it is a file's.
    pub fn modified(&self) -> Option<SystemTime> {
        match self {
            Body::Bytes { modified, .. } | Body::File { modified, .. } => *modified,
        }
    }
}

/// The answer to one request, independent of the protocol that frames it.
#[derive(Debug)]
pub enum Response {
    /// Success, with the content to send.
    Content(Body),
    /// Refused, with the reason.
    Refused(Refusal),
    /// HTTP 301 to this `Location` (a directory named without its trailing
    /// slash, so that relative links in its `index.html` resolve).
    Moved(Vec<u8>),
}

impl Response {
    /// Another response with the same content, for a second client that
    /// asked for the same file: shared bytes and refusals can be copied, an
    /// open file being streamed cannot (`None`).
    pub fn share(&self) -> Option<Response> {
        match self {
            Response::Content(Body::Bytes { bytes, modified }) => {
                Some(Response::Content(Body::Bytes { bytes: Arc::clone(bytes), modified: *modified }))
            }
            Response::Content(Body::File { .. }) => None,
            Response::Refused(refusal) => Some(Response::Refused(*refusal)),
            Response::Moved(location) => Some(Response::Moved(location.clone())),
        }
    }
}

/// Limits the parser enforces, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest request line accepted (the `\n` not counted); longer is 414.
    pub max_line_bytes: usize,
    /// Longest HTTP head (request line and headers); longer is 431.
    pub max_head_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        use crate::config::defaults;
        ParseLimits { max_line_bytes: defaults::MAX_LINE_BYTES, max_head_bytes: defaults::MAX_HEAD_BYTES }
    }
}

/// Which protocol a connection speaks, decided by its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Line,
    Http,
}

/// An incremental request parser: one per connection.
#[derive(Debug)]
pub struct Parser {
    /// Unparsed bytes; empty (and unallocated) between requests, so an idle
    /// connection costs no buffer.
    buf: Vec<u8>,
    /// How much of `buf` has already been parsed.
    start: usize,
    limits: ParseLimits,
    /// Unknown until the first request's bytes arrive.
    protocol: Option<Protocol>,
    /// Whether the last read came back short of its buffer: the peer's
    /// bytes had all been taken in at that moment (true before the first
    /// read: nothing is known to have arrived).
    last_read_short: bool,
    /// Bytes of the last request's body still to arrive and be skipped.
    body_left: u64,
    /// The last request announced a body whose end is not looked for.
    body_unknown: bool,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::new(ParseLimits::default())
    }
}

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: ParseLimits) -> Parser {
        Parser {
            buf: Vec::new(),
            start: 0,
            limits,
            protocol: None,
            last_read_short: true,
            body_left: 0,
            body_unknown: false,
        }
    }

    /// Appends bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Performs one `read` from `source` and feeds what arrived.
    /// Returns the byte count, 0 at end of stream.
    ///
    /// The read lands in a per-thread scratch buffer, zeroed once, and only
    /// the bytes received are copied into this connection's buffer: a fresh
    /// stack array per read would be zeroed per request, and a
    /// per-connection buffer would cost 16 KiB for every idle connection
    /// (`docs/performance.md`, "What was measured").
    pub fn read_from<R: Read>(&mut self, source: &mut R) -> io::Result<usize> {
        SCRATCH.with_borrow_mut(|chunk| {
            let n = source.read(chunk)?;
            self.last_read_short = n < chunk.len();
            self.feed(&chunk[..n]);
            Ok(n)
        })
    }

    /// Performs one `read` from `source` and throws the bytes away (a
    /// staged close reads what the peer still sends). Returns the byte
    /// count, 0 at end of stream.
    pub fn discard_from<R: Read>(source: &mut R) -> io::Result<usize> {
        SCRATCH.with_borrow_mut(|chunk| source.read(chunk))
    }

    /// Whether everything the peer sent has been read and parsed, as far as
    /// the last read could tell, and no announced body is still to come: a
    /// socket closed now would not be reset for unread input (which would
    /// throw away what was still to be sent).
    pub fn has_used_all_input(&self) -> bool {
        self.last_read_short && !self.has_partial_request() && !self.body_unknown
    }

    /// True when bytes are buffered that do not yet form a whole request,
    /// or a request's body is still arriving.
    pub fn has_partial_request(&self) -> bool {
        self.start < self.buf.len() || self.body_left > 0
    }

    /// Takes the next complete request out of the buffer, if there is one.
    /// The body of the request before it, if any, is skipped first.
    pub fn next_request(&mut self) -> Option<Result<Request, Malformed>> {
        if self.body_left > 0 {
            let skipped = self.body_left.min((self.buf.len() - self.start) as u64);
            self.body_left -= skipped;
            self.consume(skipped as usize);
        }
        let pending = &self.buf[self.start..];
        if pending.is_empty() || self.body_left > 0 || self.body_unknown {
            return None;
        }
        let protocol = match self.protocol {
            Some(protocol) => protocol,
            None => {
                let protocol = detect(pending, self.last_read_short, self.limits.max_line_bytes)?;
                *self.protocol.insert(protocol)
            }
        };
        let parsed = match protocol {
            Protocol::Line => line::parse(pending, &self.limits)?,
            Protocol::Http => http::parse(pending, &self.limits)?,
        };
        self.consume(parsed.consumed);
        match parsed.body {
            BodyFollows::Nothing => {}
            BodyFollows::Bytes(len) => self.body_left = len,
            BodyFollows::Unknown => self.body_unknown = true,
        }
        Some(parsed.request)
    }

    /// Marks `n` buffered bytes as used.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            // Release a large buffer left by a burst; keep a small one.
            if self.buf.capacity() > READ_CHUNK_BYTES {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
        }
    }
}

/// Which protocol the first bytes of a connection speak; `None` while
/// they cannot tell yet.
///
/// The line protocol answers an empty line with `ERR 400` at once, but
/// HTTP SHOULD ignore an empty line before a request line (RFC 9112
/// section 2.2). So empty lines at the start are looked past: an HTTP
/// request line after them makes the connection HTTP (`httparse` skips
/// them); anything else is the line protocol, and its `ERR 400`. Empty
/// lines with nothing after them wait for more only while more is on its
/// way (`read_short` false: the last read filled its buffer); a line
/// client that sent just `\n` is answered at once. A few capitals with
/// nothing after them (a method cut short by the read) wait for the rest,
/// which costs the line protocol nothing: it needs the whole line anyway.
fn detect(pending: &[u8], read_short: bool, max_line_bytes: usize) -> Option<Protocol> {
    /// Longer than any method a client sends: past it, no need to wait.
    const LONGEST_METHOD: usize = 16;
    let mut rest = pending;
    while let Some(after) = rest.strip_prefix(b"\n").or_else(|| rest.strip_prefix(b"\r\n")) {
        rest = after;
    }
    // A CR whose LF is still to come.
    let first = rest.strip_suffix(b"\r").unwrap_or(rest);
    if first.is_empty() {
        return if read_short || pending.len() > max_line_bytes { Some(Protocol::Line) } else { None };
    }
    if first.len() <= LONGEST_METHOD && first.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    Some(if http::looks_like_http(rest) { Protocol::Http } else { Protocol::Line })
}

thread_local! {
    /// Where every read lands first (see [`Parser::read_from`]).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK_BYTES]);
}

/// A request found at the front of a buffer, how many bytes it used, and
/// what follows it.
struct Parsed {
    request: Result<Request, Malformed>,
    consumed: usize,
    body: BodyFollows,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(parsed: Option<Result<Request, Malformed>>) -> Vec<u8> {
        parsed.expect("a request").expect("well formed").target
    }

    #[test]
    fn a_request_dribbled_one_byte_at_a_time_is_parsed_once_complete() {
        let mut parser = Parser::default();
        for &b in b"docs/a.txt\r" {
            parser.feed(&[b]);
            assert!(parser.next_request().is_none());
        }
        parser.feed(b"\n");
        assert_eq!(target(parser.next_request()), b"docs/a.txt");
        assert!(parser.next_request().is_none());
        assert!(!parser.has_partial_request());
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut parser = Parser::default();
        parser.feed(b"a\nb\r\nc");
        assert_eq!(target(parser.next_request()), b"a");
        assert_eq!(target(parser.next_request()), b"b");
        assert!(parser.next_request().is_none());
        assert!(parser.has_partial_request());
        parser.feed(b"\n");
        assert_eq!(target(parser.next_request()), b"c");
    }

    #[test]
    fn a_line_over_the_limit_is_414_even_before_its_newline() {
        let limits = ParseLimits { max_line_bytes: 8, ..ParseLimits::default() };
        let mut parser = Parser::new(limits);
        parser.feed(b"123456789");
        let err = parser.next_request().unwrap().unwrap_err();
        assert_eq!(err.refusal, Refusal::LineTooLong);

        let mut parser = Parser::new(limits);
        parser.feed(b"12345678\n");
        assert_eq!(target(parser.next_request()), b"12345678");
    }

    /// RFC 9112 section 2.2: an empty line before an HTTP request line is
    /// ignored; before anything else, or alone, it stays the line
    /// protocol's `ERR 400`.
    #[test]
    fn an_empty_line_before_an_http_request_is_skipped() {
        let framing = |parsed: Option<Result<Request, Malformed>>| match parsed.expect("a request") {
            Ok(request) => (request.framing, request.target),
            Err(malformed) => (malformed.framing, malformed.refusal.code().to_string().into_bytes()),
        };
        for leading in [&b"\r\n"[..], b"\n", b"\r\n\r\n\n"] {
            let mut parser = Parser::default();
            parser.feed(&[leading, b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"].concat());
            let (framing, target) = framing(parser.next_request());
            assert!(matches!(framing, Framing::Http(_)), "{leading:?}");
            assert_eq!(target, b"a.txt");
            // Between keep-alive requests too.
            parser.feed(b"\r\nGET /b.txt HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(parser.next_request().unwrap().unwrap().target, b"b.txt");
        }
        // Dribbled: a method cut short waits for the rest.
        let mut parser = Parser::default();
        parser.feed(b"\r\nGE");
        assert!(parser.next_request().is_none());
        parser.feed(b"T /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(framing(parser.next_request()).0, Framing::Http(_)));
        // Before a line-protocol request, or alone: ERR 400, as always.
        for bytes in [&b"\r\na.txt\n"[..], b"\n", b"\r\n"] {
            let mut parser = Parser::default();
            parser.feed(bytes);
            let (framing, code) = framing(parser.next_request());
            assert_eq!((framing, code), (Framing::Line, b"400".to_vec()), "{bytes:?}");
        }
    }

    /// A lone empty line waits while the read that brought it filled its
    /// buffer (more is on its way), but not past the line limit.
    #[test]
    fn empty_lines_alone_wait_only_for_bytes_on_their_way() {
        let limits = ParseLimits { max_line_bytes: 8, ..ParseLimits::default() };
        let mut parser = Parser::new(limits);
        parser.last_read_short = false;
        parser.feed(b"\r\n\r\n");
        assert!(parser.next_request().is_none());
        parser.feed(b"\r\n\r\n\r\n");
        let refused = parser.next_request().unwrap().unwrap_err();
        assert_eq!((refused.framing, refused.refusal), (Framing::Line, Refusal::BadRequest));
    }

    #[test]
    fn a_line_at_the_limit_whose_crlf_is_split_is_served() {
        let limits = ParseLimits { max_line_bytes: 8, ..ParseLimits::default() };
        let mut parser = Parser::new(limits);
        parser.feed(b"12345678\r");
        assert!(parser.next_request().is_none(), "the \\r may be half of \\r\\n: wait for the next byte");
        parser.feed(b"\n");
        assert_eq!(target(parser.next_request()), b"12345678");

        let mut parser = Parser::new(limits);
        parser.feed(b"12345678\rx");
        assert_eq!(parser.next_request().unwrap().unwrap_err().refusal, Refusal::LineTooLong);
    }

    #[test]
    fn an_empty_line_is_malformed() {
        let mut parser = Parser::default();
        parser.feed(b"\r\n");
        let err = parser.next_request().unwrap().unwrap_err();
        assert_eq!(err.refusal, Refusal::BadRequest);
    }
}
