//! The HTTP/1.1 subset (`docs/assignment.md`): GET and HEAD of static files, so
//! `curl`, browsers, `wrk` and nginx's benchmarks work against every model.
//!
//! Heads are parsed with `httparse` (at most [`ParseLimits::max_head_bytes`]);
//! the target is percent-decoded *before* the sandbox sees it (so `%2e%2e`
//! is `..` and refused like it); a query string is ignored; `/` is the root
//! (a directory is served its `index.html`, or 403: no listings). Keep-alive is the default on HTTP/1.1,
//! `Connection: close` is honoured, HTTP/1.0 closes unless it asks for
//! keep-alive. Request bodies are not supported: a request announcing one
//! is answered, then the connection is closed.

use std::time::SystemTime;

use super::conditional::{append_entity_tag, Conditions, Selection};
use super::{Framing, HttpFraming, Malformed, ParseLimits, Parsed, Request, Response};
use crate::refusal::Refusal;

/// Most header lines accepted; more is 431.
const MAX_HEADERS: usize = 64;

/// Whether the bytes at the start of a connection are an HTTP request line
/// (`METHOD /target HTTP/1.x`), judged from the first line, complete or not.
pub(super) fn looks_like_http(pending: &[u8]) -> bool {
    let Some(space) = pending.iter().position(|&b| b == b' ') else { return false };
    if space == 0 || !pending[..space].iter().all(u8::is_ascii_uppercase) {
        return false;
    }
    match pending.iter().position(|&b| b == b'\n') {
        // A whole line: the version at its end decides, whatever the target.
        Some(end) => {
            let line = pending[..end].strip_suffix(b"\r").unwrap_or(&pending[..end]);
            line.len() > space + 9 && line[line.len() - 9..].starts_with(b" HTTP/")
        }
        // A partial line is judged by its start, so that an overlong URI
        // still gets an HTTP 414.
        None => pending.get(space + 1) == Some(&b'/'),
    }
}

/// Parses one request head at the front of `pending`, if complete.
pub(super) fn parse(pending: &[u8], limits: &ParseLimits) -> Option<Parsed> {
    let refuse = |refusal, consumed| {
        let framing = Framing::Http(HttpFraming::closing());
        Some(Parsed { request: Err(Malformed { framing, refusal }), consumed })
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
    let has_token = |value: Option<&[u8]>, token: &str| {
        value.is_some_and(|v| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    };
    let connection = header("connection");
    let http11 = request.version == Some(1);
    let has_body =
        header("transfer-encoding").is_some() || header("content-length").is_some_and(|v| v.trim_ascii() != b"0");
    let keep_alive =
        !has_body && if http11 { !has_token(connection, "close") } else { has_token(connection, "keep-alive") };
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("").as_bytes();
    let conditions = Conditions::parse(method == "GET", header);
    let mut framing = HttpFraming { http11, keep_alive, head_only: method == "HEAD", content_type: "", conditions };
    let refused = |framing: HttpFraming, refusal| {
        let framing = Framing::Http(framing);
        Some(Parsed { request: Err(Malformed { framing, refusal }), consumed: head_len })
    };
    // RFC 9112 section 6.3: differing Content-Length values make the
    // framing unknowable; section 3.2: HTTP/1.1 requires exactly one Host.
    // Both MUST be answered 400, and the connection cannot be trusted after.
    let mut lengths = all("content-length").map(|h| h.value.trim_ascii());
    let first_length = lengths.next();
    let lengths_differ = first_length.is_some_and(|first| lengths.any(|other| other != first));
    let length_invalid = first_length.is_some_and(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit));
    let hosts = all("host").count();
    if lengths_differ || length_invalid || (http11 && hosts != 1) || hosts > 1 {
        framing.keep_alive = false;
        return refused(framing, Refusal::BadRequest);
    }
    if method != "GET" && method != "HEAD" {
        framing.keep_alive = false;
        return refused(framing, Refusal::MethodNotAllowed);
    }
    let Some(path) = decode_target(target) else {
        framing.keep_alive = false;
        return refused(framing, Refusal::BadRequest);
    };
    framing.content_type = content_type(&path);
    Some(Parsed { request: Ok(Request { target: path, framing: Framing::Http(framing) }), consumed: head_len })
}

/// `/a%20b.txt?x=1` to `a b.txt`: origin-form only, query and fragment
/// dropped, percent escapes decoded, the leading `/` removed (the sandbox
/// takes paths relative to the root). `None` for a malformed target.
pub fn decode_target(target: &[u8]) -> Option<Vec<u8>> {
    let path = target.strip_prefix(b"/")?;
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    let mut decoded = Vec::with_capacity(end);
    let mut bytes = path[..end].iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(*bytes.next()?)?;
            let lo = hex_value(*bytes.next()?)?;
            decoded.push(hi << 4 | lo);
        } else {
            decoded.push(b);
        }
    }
    Some(decoded)
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

/// An HTTP date (`Date`, `Last-Modified`), formatted at most once per
/// second per thread and kind: formatting per response was 7% of the
/// server's instructions for `Date` and 4% more for `Last-Modified`.
struct DateMemo(std::cell::RefCell<(u64, String)>);

impl DateMemo {
    const fn new() -> DateMemo {
        DateMemo(std::cell::RefCell::new((u64::MAX, String::new())))
    }

    fn append(&self, time: SystemTime, out: &mut Vec<u8>) {
        let second = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut memo = self.0.borrow_mut();
        if memo.0 != second {
            *memo = (second, httpdate::fmt_http_date(time));
        }
        out.extend_from_slice(memo.1.as_bytes());
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
pub fn encode_head(framing: HttpFraming, response: &Response, selection: Selection, out: &mut Vec<u8>) {
    out.extend_from_slice(if framing.http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    let body = match response {
        Response::Content(body) => Some(body),
        Response::Refused(_) => None,
    };
    let (content_type, length, error_text) = match (response, selection) {
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
            (framing.content_type, Some(end - start), None)
        }
        (Response::Content(body), Selection::Full) => {
            out.extend_from_slice(b"200 OK");
            (framing.content_type, Some(body.len()), None)
        }
    };
    out.extend_from_slice(b"\r\nServer: fileserver\r\nDate: ");
    NOW.with(|memo| memo.append(SystemTime::now(), out));
    out.extend_from_slice(b"\r\nContent-Type: ");
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
            append_decimal(end - 1, out);
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
            out.extend_from_slice(b"Last-Modified: ");
            MODIFIED.with(|memo| memo.append(modified, out));
            out.extend_from_slice(b"\r\nETag: ");
            append_entity_tag(body.len(), modified, out);
            out.extend_from_slice(b"\r\nAccept-Ranges: bytes\r\n");
        }
    }
    if matches!(response, Response::Refused(Refusal::MethodNotAllowed)) {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
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
        assert_eq!(decode_target(b"/a%20b.txt?x=1#f").unwrap(), b"a b.txt");
        assert_eq!(decode_target(b"/%2e%2e/%2E%2E/etc/passwd").unwrap(), b"../../etc/passwd");
        assert_eq!(decode_target(b"/").unwrap(), b"");
        assert_eq!(decode_target(b"/a%00b").unwrap(), b"a\0b");
        assert!(decode_target(b"/bad%2").is_none());
        assert!(decode_target(b"/bad%zz").is_none());
        assert!(decode_target(b"http://host/x").is_none(), "absolute-form is not served");
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
        encode_head(framing, &Response::Refused(Refusal::MethodNotAllowed), Selection::Full, &mut out);
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
    }
}
