//! The HTTP/1.1 subset (`docs/assignment.md`): GET and HEAD of static files, so
//! `curl`, browsers, `wrk` and nginx's benchmarks work against every model.
//!
//! Heads are parsed with `httparse` (at most [`ParseLimits::max_head_bytes`]).
//! The target may be in origin-form (`/a.txt`) or absolute-form
//! (`http://host/a.txt`, which RFC 9112 section 3.2.2 says a server MUST
//! accept; the host is not checked: one site per server); the
//! authority-form and asterisk-form belong to CONNECT and OPTIONS, which
//! are 405 anyway, and are 400 with GET. The path is percent-decoded
//! *before* the sandbox sees it (so `%2e%2e` is `..` and refused like it);
//! empty segments are skipped wherever they are (`//a.txt` is `/a.txt`, as
//! nginx's `merge_slashes`); a query string is ignored, but kept for a
//! redirect; `/` is the root (a directory is served its `index.html`, or
//! 403: no listings; a directory named without its trailing slash is 301 to
//! it). Keep-alive is the default on HTTP/1.1, `Connection: close` is
//! honoured, HTTP/1.0 closes unless it asks for keep-alive. A request body
//! is not used: one declared with `Content-Length` up to
//! [`MAX_DISCARDED_BODY_BYTES`] is read and thrown away so the connection
//! stays open; any other closes the connection after the response.
//!
//! At the edges, RFC 9112's rules (`docs/design.md`, "HTTP at its edges"):
//! a `Content-Length` that is not a number a `u64` holds, a `Host` that is
//! not `host[:port]`, or a `Transfer-Encoding` whose last coding is not
//! chunked is 400 and closes (a coding before chunked: 501); a request line
//! that is HTTP in all but its whitespace is 400 in HTTP. A file modified
//! before 1970 gets no `Last-Modified`, one modified in the future the
//! response's `Date` ([`last_modified`]); a clock before 1970 sends no `Date`.

use std::time::SystemTime;

use super::conditional::{append_entity_tag, last_modified, Conditions, Selection};
use super::{
    BodyFollows, Framing, HttpFraming, Malformed, ParseLimits, Parsed, Request, Response, MAX_DISCARDED_BODY_BYTES,
};
use crate::refusal::Refusal;

/// Most header lines accepted; more is 431.
const MAX_HEADERS: usize = 64;

/// Whether the bytes at the start of a connection are an HTTP request line
/// (`METHOD /target HTTP/1.x`), judged from the first line, complete or not.
///
/// The words may be parted by any whitespace RFC 9112 section 3 names
/// (space, tab, VT, FF, a bare CR), and whitespace may trail the version: a
/// line that is HTTP in all but its whitespace is answered in HTTP (a 400,
/// since the parser takes single spaces only), not as a line-protocol path.
pub(super) fn looks_like_http(pending: &[u8]) -> bool {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | 0x0b | 0x0c | b'\r');
    let Some(space) = pending.iter().position(is_space) else { return false };
    if space == 0 || !pending[..space].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    match pending.iter().position(|&b| b == b'\n') {
        // A whole line: the version as its last word decides, whatever the target.
        Some(end) => {
            let line = &pending[..end];
            let words_end = line.iter().rposition(|b| !is_space(b)).map_or(0, |last| last + 1);
            let last_word_start = line[..words_end].iter().rposition(is_space).map_or(0, |at| at + 1);
            let has_target = last_word_start > space && line[space..last_word_start].iter().any(|b| !is_space(b));
            has_target && line[last_word_start..words_end].starts_with(b"HTTP/")
        }
        // A partial line is judged by its start, so that an overlong URI
        // still gets an HTTP 414.
        None => pending[space..].iter().find(|b| !is_space(b)) == Some(&b'/'),
    }
}

/// Parses one request head at the front of `pending`, if complete.
pub(super) fn parse(pending: &[u8], limits: &ParseLimits) -> Option<Parsed> {
    let refuse = |refusal, consumed| {
        let framing = Framing::Http(HttpFraming::closing());
        Some(Parsed { request: Err(Malformed { framing, refusal }), consumed, body: BodyFollows::Nothing })
    };
    let line_len = pending.iter().position(|&b| b == b'\n').unwrap_or(pending.len());
    if line_len > limits.max_line_bytes {
        return refuse(Refusal::LineTooLong, pending.len());
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(pending) {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head_bytes => return refuse(Refusal::HeadTooLarge, n),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if pending.len() > limits.max_head_bytes => {
            return refuse(Refusal::HeadTooLarge, pending.len())
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return refuse(Refusal::HeadTooLarge, pending.len()),
        Err(_) => return refuse(Refusal::BadRequest, pending.len()),
    };
    let header = |name: &str| request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let all = |name: &'static str| request.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    // A list-valued field (RFC 9110 section 5.3): every line, every member.
    let has_token = |name: &'static str, token: &str| {
        all(name).any(|h| h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    };
    let http11 = request.version == Some(1);
    // RFC 9112 section 6.3: differing Content-Length values make the
    // framing unknowable, and so does one that is not a number or is too
    // large for one (RFC 9110 section 8.6 says a recipient MUST anticipate
    // such numbers): each MUST be answered 400, and the connection closed.
    let mut lengths = all("content-length").map(|h| h.value.trim_ascii());
    let first_length = lengths.next();
    let lengths_differ = first_length.is_some_and(|first| lengths.any(|other| other != first));
    let declared_length = first_length.map(parse_length);
    let length_invalid = declared_length.is_some_and(|length| length.is_none());
    let transfer_coding = TransferCoding::of(all("transfer-encoding"));
    let expects_continue = has_token("expect", "100-continue");
    // Section 6.3: Transfer-Encoding overrides Content-Length.
    let body = match declared_length.flatten() {
        _ if transfer_coding != TransferCoding::None => BodyFollows::Unknown,
        None | Some(0) => BodyFollows::Nothing,
        Some(_) if expects_continue => BodyFollows::Unknown,
        Some(len) if len <= MAX_DISCARDED_BODY_BYTES => BodyFollows::Bytes(len),
        Some(_) => BodyFollows::Unknown,
    };
    let keep_alive = body != BodyFollows::Unknown
        && if http11 { !has_token("connection", "close") } else { has_token("connection", "keep-alive") };
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("").as_bytes();
    let conditions = Conditions::parse(method == "GET", request.headers);
    let mut framing = HttpFraming { http11, keep_alive, head_only: method == "HEAD", content_type: "", conditions };
    let refused = |framing: HttpFraming, refusal| {
        let framing = Framing::Http(framing);
        Some(Parsed { request: Err(Malformed { framing, refusal }), consumed: head_len, body })
    };
    // RFC 9112 section 3.2: HTTP/1.1 requires exactly one Host, and a Host
    // that is not a host (and port) is invalid. Each MUST be answered 400,
    // as must a bad length (above), or a Transfer-Encoding whose last
    // coding is not chunked (section 6.3: the body's end cannot be found);
    // the connection cannot be trusted after any of them.
    let hosts = all("host").count();
    let host_invalid = header("host").is_some_and(|host| !is_valid_host(host.trim_ascii()));
    if lengths_differ
        || length_invalid
        || (http11 && hosts != 1)
        || hosts > 1
        || host_invalid
        || transfer_coding == TransferCoding::Invalid
    {
        framing.keep_alive = false;
        return refused(framing, Refusal::BadRequest);
    }
    // Section 6.1: a transfer coding the server does not implement (all
    // but chunked) SHOULD be 501; the body is not read, so the connection closes.
    if transfer_coding == TransferCoding::Unimplemented {
        framing.keep_alive = false;
        return refused(framing, Refusal::NotImplemented);
    }
    if method != "GET" && method != "HEAD" {
        framing.keep_alive = false;
        return refused(framing, Refusal::MethodNotAllowed);
    }
    let Some((path, query)) = split_target(target) else {
        framing.keep_alive = false;
        return refused(framing, Refusal::BadRequest);
    };
    let Some(path) = decode_path(path) else {
        framing.keep_alive = false;
        return refused(framing, Refusal::BadRequest);
    };
    framing.content_type = content_type(&path);
    let request = Request { target: path, framing: Framing::Http(framing), query: query.to_vec() };
    Some(Parsed { request: Ok(request), consumed: head_len, body })
}

/// A `Content-Length` value: digits only, and few enough for a `u64`
/// (`None`: invalid). `parse` alone would also take a leading `+`.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// What a request's `Transfer-Encoding` lines say of its body (RFC 9112
/// section 6.1), read as one list over every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    /// No `Transfer-Encoding`.
    None,
    /// `chunked` alone: a body the parser does not look for the end of;
    /// served, then the connection closes.
    Chunked,
    /// `chunked` last, after codings the server does not implement: 501.
    Unimplemented,
    /// The last coding is not `chunked` (or the list is empty, or chunked
    /// twice): the body's length cannot be known, 400.
    Invalid,
}

impl TransferCoding {
    fn of<'a>(lines: impl Iterator<Item = &'a httparse::Header<'a>>) -> TransferCoding {
        let mut seen_line = false;
        let mut chunked_last = false;
        let mut chunked_twice = false;
        let mut others = false;
        let codings = lines.inspect(|_| seen_line = true).flat_map(|h| h.value.split(|&b| b == b','));
        for coding in codings.map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked_twice |= chunked_last;
                chunked_last = true;
            } else {
                others = true;
                chunked_last = false;
            }
        }
        match (seen_line, chunked_last && !chunked_twice, others) {
            (false, _, _) => TransferCoding::None,
            (true, false, _) => TransferCoding::Invalid,
            (true, true, false) => TransferCoding::Chunked,
            (true, true, true) => TransferCoding::Unimplemented,
        }
    }
}

/// Whether a `Host` value is `host[:port]` (RFC 9112 section 3.2, RFC 3986
/// section 3.2.2): a registered name or IPv4 address, or an IP literal in
/// brackets, not empty (RFC 9110 section 4.2.1: an `http` URI with an
/// empty host MUST be rejected); the port digits only. The port is never
/// turned into a number, so no length of it can overflow.
fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else { return false };
        let inside = &literal[..end];
        let literal_ok =
            !inside.is_empty() && inside.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
        if !literal_ok {
            return false;
        }
        (&b"x"[..], &literal[end + 1..])
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        (&value[..end], &value[end..])
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let name_ok =
        !host.is_empty() && host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    name_ok && port_ok
}

/// The path and the query (with its `?`, or empty) of a request target in
/// origin-form (`/a?x`) or absolute-form (`http://host:port/a?x`; no path
/// is `/`), RFC 9112 section 3.2; the fragment, which a client should not
/// send, is dropped. `None` for any other form.
fn split_target(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let path_and_query = if target.starts_with(b"/") {
        target
    } else {
        let scheme_end = target.windows(3).position(|w| w == b"://")?;
        let scheme = &target[..scheme_end];
        if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
            return None;
        }
        let rest = &target[scheme_end + 3..];
        let authority_end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
        if authority_end == 0 {
            return None; // an http URI must name a host
        }
        &rest[authority_end..]
    };
    let end = path_and_query.iter().position(|&b| b == b'#').unwrap_or(path_and_query.len());
    let (path, query) = path_and_query[..end].split_at(path_and_query.iter().position(|&b| b == b'?').unwrap_or(end));
    Some((if path.is_empty() { b"/" } else { path }, query))
}

/// `/a%20b.txt` to `a b.txt`: percent escapes decoded, then the leading
/// slashes removed (the sandbox takes paths relative to the root and skips
/// the empty segments inside). `None` for a malformed escape.
pub fn decode_path(path: &[u8]) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(path.len());
    let mut bytes = path.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(*bytes.next()?)?;
            let lo = hex_value(*bytes.next()?)?;
            decoded.push(hi << 4 | lo);
        } else {
            decoded.push(b);
        }
    }
    let slashes = decoded.iter().take_while(|&&b| b == b'/').count();
    decoded.drain(..slashes);
    Some(decoded)
}

/// The `Location` of a directory named without its trailing slash:
/// `/<dir>/` with the query kept, the path percent-encoded where a URI
/// requires (RFC 3986 section 2).
pub fn directory_location(normalized: &[u8], query: &[u8]) -> Vec<u8> {
    let mut location = Vec::with_capacity(normalized.len() + query.len() + 2);
    location.push(b'/');
    for &b in normalized {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            location.push(b);
        } else {
            location.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    location.push(b'/');
    location.extend_from_slice(query);
    location
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|v| v as u8)
}

/// The `Content-Type` for a path, by its extension, from the table of the
/// `mime_guess` crate (kept in step with the IANA registry and the types
/// browsers insist on, such as `application/wasm` for
/// `WebAssembly.instantiateStreaming`); unknown extensions are
/// `application/octet-stream`, as nginx's `default_type`. A directory's path
/// (its `index.html` is served) is HTML. Text that the kit's own files are
/// written in is labelled UTF-8, so browsers do not guess.
fn content_type(path: &[u8]) -> &'static str {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if name.is_empty() {
        return "text/html; charset=utf-8";
    }
    let extension = name.rsplit(|&b| b == b'.').next().filter(|ext| ext.len() < name.len()).unwrap_or_default();
    let Ok(extension) = std::str::from_utf8(extension) else { return "application/octet-stream" };
    let guessed = mime_guess::from_ext(extension).first_raw().unwrap_or("application/octet-stream");
    match guessed {
        "text/html" => "text/html; charset=utf-8",
        "text/plain" => "text/plain; charset=utf-8",
        "text/css" => "text/css; charset=utf-8",
        "text/javascript" | "application/javascript" => "text/javascript; charset=utf-8",
        "text/markdown" => "text/markdown; charset=utf-8",
        other => other,
    }
}

/// The first second `httpdate` cannot format: 10000-01-01T00:00:00Z (it
/// panics there, and before 1970).
const YEAR_10000: u64 = 253_402_300_800;

/// An HTTP date (`Date`, `Last-Modified`), formatted at most once per
/// second per thread and kind, not per response (what that saved is in
/// `docs/performance.md`).
struct DateMemo(std::cell::RefCell<(u64, String)>);

impl DateMemo {
    const fn new() -> DateMemo {
        DateMemo(std::cell::RefCell::new((u64::MAX, String::new())))
    }

    /// Appends `name`, `time` as an HTTP date and a CRLF; nothing at all
    /// for a time no HTTP date here can show (before 1970, from 10000 on):
    /// the header is left out rather than the server brought down.
    fn append_header(&self, name: &[u8], time: SystemTime, out: &mut Vec<u8>) {
        let Ok(since_1970) = time.duration_since(SystemTime::UNIX_EPOCH) else { return };
        let second = since_1970.as_secs();
        if second >= YEAR_10000 {
            return;
        }
        let mut memo = self.0.borrow_mut();
        if memo.0 != second {
            *memo = (second, httpdate::fmt_http_date(time));
        }
        out.extend_from_slice(name);
        out.extend_from_slice(memo.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

thread_local! {
    static NOW: DateMemo = const { DateMemo::new() };
    static MODIFIED: DateMemo = const { DateMemo::new() };
}

/// Appends the status line and headers (and, for an error, its short body,
/// unless HEAD) for `response` to `out`. `selection` is what the request's
/// conditions chose for a successful response ([`Conditions::select`]).
/// Written piece by piece rather than with `write!`: this runs for every
/// response.
pub fn encode_head(framing: &HttpFraming, response: &Response, selection: Selection, out: &mut Vec<u8>) {
    out.extend_from_slice(if framing.http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    let body = match response {
        Response::Content(body) => Some(body),
        Response::Refused(_) | Response::Moved(_) => None,
    };
    let (content_type, length, error_text) = match (response, selection) {
        (Response::Moved(_), _) => {
            let text = "301 Moved Permanently\n".to_string();
            out.extend_from_slice(text.trim_end().as_bytes());
            ("text/plain; charset=utf-8", Some(text.len() as u64), Some(text))
        }
        (Response::Refused(refusal), _) => {
            let text = format!("{} {}\n", refusal.code(), refusal.http_reason());
            out.extend_from_slice(text.trim_end().as_bytes());
            ("text/plain; charset=utf-8", Some(text.len() as u64), Some(text))
        }
        (Response::Content(_), Selection::Unsatisfiable) => {
            let text = "416 Range Not Satisfiable\n".to_string();
            out.extend_from_slice(text.trim_end().as_bytes());
            ("text/plain; charset=utf-8", Some(text.len() as u64), Some(text))
        }
        (Response::Content(_), Selection::NotModified) => {
            out.extend_from_slice(b"304 Not Modified");
            (framing.content_type, None, None)
        }
        (Response::Content(_), Selection::Partial { start, end }) => {
            out.extend_from_slice(b"206 Partial Content");
            (framing.content_type, Some(end.saturating_sub(start)), None)
        }
        (Response::Content(body), Selection::Full) => {
            out.extend_from_slice(b"200 OK");
            (framing.content_type, Some(body.len()), None)
        }
    };
    out.extend_from_slice(b"\r\nServer: fileserver\r\n");
    let now = SystemTime::now();
    // A clock before 1970 writes no Date (RFC 9110 section 6.6.1: a server
    // without a usable clock sends none).
    NOW.with(|memo| memo.append_header(b"Date: ", now, out));
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(length) = length {
        out.extend_from_slice(b"Content-Length: ");
        append_decimal(length, out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        if let Selection::Partial { start, end } = selection {
            out.extend_from_slice(b"Content-Range: bytes ");
            append_decimal(start, out);
            out.push(b'-');
            append_decimal(end.saturating_sub(1), out);
            out.push(b'/');
            append_decimal(body.len(), out);
            out.extend_from_slice(b"\r\n");
        } else if selection == Selection::Unsatisfiable {
            out.extend_from_slice(b"Content-Range: bytes */");
            append_decimal(body.len(), out);
            out.extend_from_slice(b"\r\n");
        }
        // Files (content with a modification time) have validators and ranges.
        if let Some(modified) = body.modified() {
            if let Some(shown) = last_modified(modified, now) {
                MODIFIED.with(|memo| memo.append_header(b"Last-Modified: ", shown, out));
            }
            out.extend_from_slice(b"ETag: ");
            append_entity_tag(body.len(), modified, out);
            out.extend_from_slice(b"\r\nAccept-Ranges: bytes\r\n");
        }
    }
    if matches!(response, Response::Refused(Refusal::MethodNotAllowed)) {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if let Response::Moved(location) = response {
        out.extend_from_slice(b"Location: ");
        out.extend_from_slice(location);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(match (framing.keep_alive, framing.http11) {
        (false, _) => b"Connection: close\r\n\r\n",
        (true, false) => b"Connection: keep-alive\r\n\r\n",
        (true, true) => b"\r\n",
    });
    if let (Some(text), false) = (error_text, framing.head_only) {
        out.extend_from_slice(text.as_bytes());
    }
}

fn append_decimal(mut value: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_decoded_and_stripped_of_queries() {
        let decode_target = |target: &[u8]| {
            let (path, query) = split_target(target)?;
            Some((decode_path(path)?, query.to_vec()))
        };
        let path = |target: &[u8]| decode_target(target).map(|(path, _)| path);
        assert_eq!(decode_target(b"/a%20b.txt?x=1#f").unwrap(), (b"a b.txt".to_vec(), b"?x=1".to_vec()));
        assert_eq!(path(b"/%2e%2e/%2E%2E/etc/passwd").unwrap(), b"../../etc/passwd");
        assert_eq!(path(b"/").unwrap(), b"");
        assert_eq!(path(b"/a%00b").unwrap(), b"a\0b");
        assert!(path(b"/bad%2").is_none());
        assert!(path(b"/bad%zz").is_none());
        // Empty segments at the front are skipped like those inside (the
        // sandbox skips those), also when written as %2F.
        assert_eq!(path(b"//test.txt").unwrap(), b"test.txt");
        assert_eq!(path(b"///sub//index.html").unwrap(), b"sub//index.html");
        assert_eq!(path(b"/%2F%2Fetc/passwd").unwrap(), b"etc/passwd");
        // RFC 9112 section 3.2: the absolute-form is served, its host not checked.
        assert_eq!(
            decode_target(b"http://127.0.0.1:7070/test.txt?v=2").unwrap(),
            (b"test.txt".to_vec(), b"?v=2".to_vec())
        );
        assert_eq!(path(b"HTTP://example.com").unwrap(), b"", "no path is the root");
        assert_eq!(path(b"https://example.com?x").unwrap(), b"");
        assert_eq!(path(b"http://h//a").unwrap(), b"a");
        for other in [&b"*"[..], b"example.com:443", b"ftp://host/x", b"http:///x", b"x", b""] {
            assert!(decode_target(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
        assert_eq!(directory_location(b"sub", b"?x=1"), b"/sub/?x=1");
        assert_eq!(directory_location(b"a b/c%", b""), b"/a%20b/c%25/");
    }

    #[test]
    fn heads_are_well_formed() {
        let framing = HttpFraming {
            http11: true,
            keep_alive: false,
            head_only: false,
            content_type: "text/plain",
            conditions: Conditions::default(),
        };
        let mut out = Vec::new();
        encode_head(&framing, &Response::Refused(Refusal::MethodNotAllowed), Selection::Full, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nServer: fileserver\r\nDate: "), "{text}");
        assert!(text.contains("\r\nContent-Length: 23\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n405 Method Not Allowed\n"), "{text}");
        let mut digits = Vec::new();
        for n in [0, 7, 10, 1_073_741_824, u64::MAX] {
            digits.clear();
            append_decimal(n, &mut digits);
            assert_eq!(digits, n.to_string().into_bytes());
        }
    }

    /// One file per family of the type table, and the edges of the
    /// extension rule.
    #[test]
    fn content_types_follow_the_extension() {
        for (path, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("docs/a.TXT", "text/plain; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.mjs", "text/javascript; charset=utf-8"),
            ("notes.md", "text/markdown; charset=utf-8"),
            ("data.json", "application/json"),
            ("feed.xml", "text/xml"),
            ("m.wasm", "application/wasm"),
            ("doc.pdf", "application/pdf"),
            ("a.zip", "application/zip"),
            ("a.gz", "application/gzip"),
            ("logo.svg", "image/svg+xml"),
            ("photo.JPEG", "image/jpeg"),
            ("icon.png", "image/png"),
            ("pic.webp", "image/webp"),
            ("favicon.ico", "image/x-icon"),
            ("clip.mp4", "video/mp4"),
            ("clip.webm", "video/webm"),
            ("song.mp3", "audio/mpeg"),
            ("font.woff2", "font/woff2"),
            ("data/1k.bin", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
            ("dir.d/file", "application/octet-stream"),
            ("odd.\u{ff}", "application/octet-stream"),
            ("sub/", "text/html; charset=utf-8"),
        ] {
            assert_eq!(content_type(path.as_bytes()), expected, "{path}");
        }
    }

    #[test]
    fn http_request_lines_are_recognised() {
        assert!(looks_like_http(b"GET /x HTTP/1.1\r\n"));
        assert!(looks_like_http(b"GET /xxxxxxxxxx"), "a partial line is judged by its start");
        assert!(looks_like_http(b"BREW /pot HTTP/1.1\r\n"), "unknown methods are HTTP too (405)");
        assert!(!looks_like_http(b"test.txt\n"));
        assert!(looks_like_http(b"GET http://host/x HTTP/1.1\r\n"), "absolute-form: HTTP, refused with 400");
        assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
        assert!(!looks_like_http(b"get /x HTTP/1.1\n"));
        assert!(!looks_like_http(b"GET /x\n"), "a complete line without a version is a path");
        // HTTP in all but its whitespace (RFC 9112 section 3): answered in HTTP.
        assert!(looks_like_http(b"GET\t/x\tHTTP/1.1\r\n"));
        assert!(looks_like_http(b"GET /x HTTP/1.1 \r\n"), "a space after the version");
        assert!(looks_like_http(b"GET  /x  HTTP/1.1\t\r\n"));
        assert!(looks_like_http(b"GET\t/xxxxxxxxxx"), "partial, after a tab");
        assert!(!looks_like_http(b"GET\tHTTP/1.1\n"), "the version must not be the second word");
        assert!(!looks_like_http(b"a file HTTP/1.1\n"), "a path with spaces");
    }

    fn refusal_of(request: &[u8]) -> Option<Refusal> {
        parse(request, &ParseLimits::default()).expect("a complete head").request.err().map(|malformed| {
            assert!(!malformed.framing.closes_after() || malformed.refusal.closes_connection());
            malformed.refusal
        })
    }

    /// RFC 9112 sections 3.2 and 6.3, RFC 9110 section 8.6: each of these
    /// is 400 (and the connection closes), never served.
    #[test]
    fn bad_hosts_lengths_and_transfer_codings_are_refused() {
        let with = |header: &str| format!("GET /a.txt HTTP/1.1\r\n{header}\r\n\r\n").into_bytes();
        let host = |value: &str| with(&format!("Host: {value}"));
        for bad in ["x/y", "x y", "", "x:80x", "[::1", "[]", "a@b", "x\ty"] {
            assert_eq!(refusal_of(&host(bad)), Some(Refusal::BadRequest), "Host: {bad:?}");
        }
        for good in ["x", "example.com:8080", "127.0.0.1", "[::1]:7070", "[v1.x]", "xn--bcher-kva.example", "h:"] {
            assert_eq!(refusal_of(&host(good)), None, "Host: {good:?}");
        }
        let length = |value: &str| {
            [&host("x")[..host("x").len() - 2], format!("Content-Length: {value}\r\n\r\n").as_bytes()].concat()
        };
        for bad in ["99999999999999999999", "18446744073709551616", "+5", "-1", "5 5", "0x10", ""] {
            assert_eq!(refusal_of(&length(bad)), Some(Refusal::BadRequest), "Content-Length: {bad:?}");
        }
        assert_eq!(refusal_of(&length("18446744073709551615")), None, "u64::MAX is a length (too long to discard)");
        let coding = |value: &str| {
            [&host("x")[..host("x").len() - 2], format!("Transfer-Encoding: {value}\r\n\r\n").as_bytes()].concat()
        };
        for bad in ["gzip", "chunked, gzip", "", "chunked, chunked", "identity"] {
            assert_eq!(refusal_of(&coding(bad)), Some(Refusal::BadRequest), "Transfer-Encoding: {bad:?}");
        }
        assert_eq!(refusal_of(&coding("gzip, chunked")), Some(Refusal::NotImplemented));
        assert_eq!(refusal_of(&coding("Chunked")), None, "served, then closed");
        let chunked = parse(&coding("chunked"), &ParseLimits::default()).unwrap();
        assert_eq!(chunked.body, BodyFollows::Unknown);
        // Over two lines, the codings are one list: gzip, then chunked.
        let two = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refusal_of(two), Some(Refusal::NotImplemented));
    }
}
