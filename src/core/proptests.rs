//! Property tests of the whole request path: whatever bytes a client sends,
//! and whatever the disk says of a file (its modification time anywhere in
//! `i64` seconds, its size up to `u64::MAX`, its type), the parser, the
//! planner and the response encoding never panic, and every answer is a
//! well-formed response or a refusal.
//!
//! The disk's word is put in where it enters: the file a plan opened is
//! given the generated size and time before it is read (the reading and
//! everything after it see them, the cache too). Each property runs a
//! few hundred cases in well under a second.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::cache::FileCache;
use crate::config::ServiceKind;
use crate::conn::{Conn, ConnId, Executor, Limits, Status};
use crate::output::{Output, Sink};
use crate::protocol::conditional::Selection;
use crate::protocol::{encode_head, Framing, HttpFraming, Malformed, Parser, Request, Response};
use crate::sandbox::Root;
use crate::service::{Plan, Service, Work};

/// What the disk says of whichever file a request opens.
#[derive(Debug, Clone, Copy)]
struct Metadata {
    len: u64,
    modified: Option<SystemTime>,
}

/// A root holding one file of each type a directory can hold (a device
/// only where the test may make one), and a service over it whose cache
/// keeps small files and streams the rest.
fn site() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("outside.txt"), b"outside").unwrap();
    std::fs::write(root.join("small.txt"), b"hello").unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    std::fs::write(root.join("large.bin"), vec![7u8; 100_000]).unwrap();
    std::fs::write(root.join(".hidden"), b"hidden").unwrap();
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::write(root.join("dir/index.html"), b"<p>").unwrap();
    std::fs::create_dir(root.join("bare")).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("link-in")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("link-out")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(root.join("fifo")).status();
    assert!(fifo.is_ok_and(|status| status.success()), "mkfifo");
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
    #[cfg(target_os = "linux")]
    {
        // /dev/null's numbers; only a privileged test may make a device.
        let null = rustix::fs::makedev(1, 3);
        let _ = rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("device"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o644),
            null,
        );
    }
    let root = Root::open(&root, false).unwrap();
    let cache = Arc::new(FileCache::new(1 << 20, 64 * 1024));
    (dir, Service::new(ServiceKind::File, root, cache, Duration::ZERO))
}

/// Seconds since 1970 (any `i64`) and nanoseconds as a time, or `None`
/// where the platform's time cannot hold it.
fn time_at(seconds: i64, nanos: u32) -> Option<SystemTime> {
    let after = Duration::new(seconds.unsigned_abs(), 0);
    let whole = if seconds < 0 { UNIX_EPOCH.checked_sub(after) } else { UNIX_EPOCH.checked_add(after) };
    whole.and_then(|time| time.checked_add(Duration::from_nanos(nanos.into())).or(Some(time)))
}

fn metadata() -> impl Strategy<Value = Metadata> {
    let seconds = prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(0),
        Just(253_402_300_799), // the last second of 9999
        Just(253_402_300_800),
        -4_000_000_000i64..8_000_000_000,
    ];
    let len = prop_oneof![any::<u64>(), Just(u64::MAX), Just(0), 0u64..200_000];
    (seconds, 0u32..1_000_000_000, len, 0u8..8).prop_map(|(seconds, nanos, len, none)| Metadata {
        len,
        modified: time_at(seconds, nanos).filter(|_| none > 0),
    })
}

/// Header values that stress the numbers and dates a client sends.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{18,26}",
        "bytes=[0-9]{0,21}-[0-9]{0,21}",
        "bytes=-[0-9]{0,21}",
        "\"-?[0-9a-f]{1,17}-[0-9a-f]{1,17}\"",
        "W/\"[0-9a-f]{1,8}-[0-9a-f]{1,8}\"",
        any::<i64>().prop_map(|s| time_at(s, 0).map_or_else(String::new, |t| {
            if t >= UNIX_EPOCH && t < UNIX_EPOCH + Duration::from_secs(253_402_300_800) {
                httpdate::fmt_http_date(t)
            } else {
                String::new()
            }
        })),
        Just("chunked".to_string()),
        Just("gzip, chunked".to_string()),
        Just("100-continue".to_string()),
        Just("close".to_string()),
        Just("x/y".to_string()),
        Just("[::1]:99999999999999999999".to_string()),
    ]
}

fn header() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("Host"),
        Just("Range"),
        Just("If-None-Match"),
        Just("If-Modified-Since"),
        Just("If-Range"),
        Just("Content-Length"),
        Just("Transfer-Encoding"),
        Just("Connection"),
        Just("Expect"),
        Just("X-Other"),
    ];
    (name, header_value()).prop_map(|(name, value)| format!("{name}: {value}\r\n"))
}

/// An HTTP request aimed at the site's files, its parts drawn from what
/// clients send and from what they should not.
fn http_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("POST".to_string()),
        "[A-Z]{1,7}"
    ];
    let target = prop_oneof![
        Just("/small.txt"),
        Just("/large.bin"),
        Just("/empty.txt"),
        Just("/dir"),
        Just("/dir/"),
        Just("/bare/"),
        Just("/link-in"),
        Just("/link-out"),
        Just("/fifo"),
        Just("/socket"),
        Just("/device"),
        Just("/.hidden"),
        Just("/missing"),
        Just("/"),
        Just("/%2e%2e/outside.txt"),
        Just("http://h/small.txt?x"),
        Just("*"),
    ];
    let space = prop_oneof![8 => Just(" "), 1 => Just("\t"), 1 => Just("  ")];
    let version =
        prop_oneof![8 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/1.1 "), 1 => Just("HTTP/9.99")];
    let leading = prop_oneof![8 => Just(""), 1 => Just("\r\n"), 1 => Just("\n\r\n")];
    let host = prop_oneof![8 => Just("Host: x\r\n"), 1 => Just(""), 1 => Just("Host: x\r\nHost: y\r\n")];
    let headers = proptest::collection::vec(header(), 0..5);
    let body = proptest::collection::vec(any::<u8>(), 0..12);
    (leading, method, space.clone(), target, space, version, host, headers, body).prop_map(
        |(leading, method, s1, target, s2, version, host, headers, body)| {
            let head = format!("{leading}{method}{s1}{target}{s2}{version}\r\n{host}{}\r\n", headers.concat());
            [head.into_bytes(), body].concat()
        },
    )
}

fn line_request() -> impl Strategy<Value = Vec<u8>> {
    const LINES: [&[u8]; 6] = [b"small.txt\n", b"large.bin\r\n", b"dir\n", b"fifo\n", b"\n", b"../outside.txt\n"];
    proptest::sample::select(&LINES[..]).prop_map(<[u8]>::to_vec)
}

/// What a client sends on one connection: a few requests of either
/// protocol, or bytes of any kind.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => http_request(),
        2 => line_request(),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(piece, 1..4).prop_map(|pieces| pieces.concat())
}

/// Runs `work` as the loop's executor would, after telling the file it
/// opened what the disk says of it.
fn run_with(work: Work, metadata: Metadata) -> Response {
    match work {
        Work::Read(mut read) => {
            read.file.len = metadata.len;
            read.file.modified = metadata.modified;
            Work::Read(read).run_blocking()
        }
        other => other.run_blocking(),
    }
}

/// The answer to one parsed request, and how it is framed.
fn answer(service: &Service, parsed: Result<Request, Malformed>, metadata: Metadata) -> (Framing, Response) {
    match parsed {
        Err(malformed) => (malformed.framing, Response::Refused(malformed.refusal)),
        Ok(request) => {
            let response = match service.plan(&request) {
                Plan::Ready(response) => response,
                Plan::Blocking(work) => run_with(work, metadata),
            };
            (request.framing, response)
        }
    }
}

/// Checks the bytes a response is framed with, and that the output queue
/// owes exactly the head and the body the head announces.
fn check_answer(framing: Framing, response: Response) -> Result<(), TestCaseError> {
    let selection = match (&framing, &response) {
        (Framing::Http(http), Response::Content(body)) => http.conditions.select(body.len(), body.modified()),
        _ => Selection::Full,
    };
    let mut head = Vec::new();
    encode_head(&framing, &response, selection, &mut head);
    let body_bytes = match &framing {
        Framing::Line => check_line_head(&head, &response)?,
        Framing::Http(http) => check_http_head(&head, http, &response, selection)?,
    };
    let mut output = Output::default();
    output.push_response(framing, response);
    prop_assert_eq!(output.queued_bytes(), (head.len() as u64).saturating_add(body_bytes));
    Ok(())
}

/// `OK <size>\n` (the size the body's) or `ERR <code> <reason>\n`; returns
/// the body bytes owed after it.
fn check_line_head(head: &[u8], response: &Response) -> Result<u64, TestCaseError> {
    let text = std::str::from_utf8(head).map_err(|_| TestCaseError::fail("a line head that is not UTF-8"))?;
    prop_assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text:?}");
    match response {
        Response::Content(body) => {
            prop_assert_eq!(text, format!("OK {}\n", body.len()));
            Ok(body.len())
        }
        Response::Refused(_) | Response::Moved(_) => {
            let code = text.strip_prefix("ERR ").and_then(|rest| rest.get(..3)).unwrap_or_default();
            prop_assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
            Ok(0)
        }
    }
}

/// A status line, header lines of printable ASCII, a blank line, and the
/// short text of an error; Content-Length, Content-Range and the dates
/// consistent with the content. Returns the body bytes owed after it.
fn check_http_head(
    head: &[u8],
    http: &HttpFraming,
    response: &Response,
    selection: Selection,
) -> Result<u64, TestCaseError> {
    let text = std::str::from_utf8(head).map_err(|_| TestCaseError::fail("an HTTP head that is not UTF-8"))?;
    let (fields, error_text) = text.split_once("\r\n\r\n").ok_or_else(|| TestCaseError::fail("no blank line"))?;
    let mut lines = fields.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let version = if http.http11 { "HTTP/1.1 " } else { "HTTP/1.0 " };
    let status: u16 = status_line.strip_prefix(version).and_then(|rest| rest.get(..3)?.parse().ok()).unwrap_or(0);
    prop_assert!((200..600).contains(&status), "{status_line:?}");
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(": ").ok_or_else(|| TestCaseError::fail(format!("{line:?}")))?;
        prop_assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{line:?}");
        prop_assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
        headers.push((name.to_ascii_lowercase(), value));
    }
    let header = |name: &str| {
        let mut values = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| *v);
        let first = values.next();
        (first, values.next().is_some())
    };
    for name in ["date", "last-modified", "content-length", "content-range", "etag", "connection"] {
        prop_assert!(!header(name).1, "{name} twice: {text:?}");
    }
    let length: Option<u64> = header("content-length")
        .0
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| TestCaseError::fail(format!("Content-Length not a number: {text:?}")))?;
    let date = |name: &str| header(name).0.map(httpdate::parse_http_date).transpose();
    let (sent, modified) = (date("date"), date("last-modified"));
    prop_assert!(sent.is_ok() && modified.is_ok(), "a date that does not parse: {text:?}");
    if let (Ok(Some(sent)), Ok(Some(modified))) = (sent, modified) {
        prop_assert!(modified <= sent + Duration::from_secs(1), "Last-Modified after Date: {text:?}");
    }
    prop_assert_eq!(header("connection").0 == Some("close"), !http.keep_alive);
    let Response::Content(body) = response else {
        // A refusal or a redirect: its short text is the body, unless HEAD.
        let expected = if http.head_only { 0 } else { length.unwrap_or(0) };
        prop_assert_eq!(error_text.len() as u64, expected, "{}", text);
        return Ok(0);
    };
    let unsatisfiable = selection == Selection::Unsatisfiable && !http.head_only;
    prop_assert_eq!(error_text.len(), if unsatisfiable { 26 } else { 0 }, "{}", text);
    let (wanted_status, announced) = match selection {
        Selection::Full => (200, Some(body.len())),
        Selection::NotModified => (304, None),
        Selection::Unsatisfiable => (416, Some(26)),
        Selection::Partial { start, end } => {
            prop_assert!(start < end && end <= body.len(), "{start}..{end} of {}", body.len());
            let range = format!("bytes {start}-{}/{}", end - 1, body.len());
            prop_assert_eq!(header("content-range").0, Some(range.as_str()));
            (206, Some(end - start))
        }
    };
    prop_assert_eq!(status, wanted_status, "{}", text);
    prop_assert_eq!(length, announced, "{}", text);
    if body.modified().is_some_and(|m| m < UNIX_EPOCH) {
        prop_assert!(header("last-modified").0.is_none(), "a date before 1970: {text:?}");
    }
    let owed = match selection {
        _ if http.head_only => 0,
        Selection::Full | Selection::Partial { .. } => length.unwrap_or(0),
        Selection::NotModified | Selection::Unsatisfiable => 0,
    };
    Ok(owed)
}

/// Parses `bytes` (in two reads, cut at `cut`) and answers every request.
fn serve(service: &Service, bytes: &[u8], cut: usize, metadata: Metadata) -> Result<(), TestCaseError> {
    let mut parser = Parser::default();
    let cut = cut.min(bytes.len());
    for part in [&bytes[..cut], &bytes[cut..]] {
        parser.feed(part);
        // Bounded: each request consumes at least one byte.
        for _ in 0..=bytes.len() {
            let Some(parsed) = parser.next_request() else { break };
            let (framing, response) = answer(service, parsed, metadata);
            check_answer(framing, response)?;
        }
    }
    Ok(())
}

#[test]
fn any_request_on_any_file_gets_a_well_formed_answer_or_a_refusal() {
    let (_dir, service) = site();
    let mut runner = TestRunner::new(Config { cases: 512, failure_persistence: None, ..Config::default() });
    let cases = (client_bytes(), any::<usize>(), metadata());
    let result = runner.run(&cases, |(bytes, cut, metadata)| serve(&service, &bytes, cut % 64, metadata));
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// One end of a socket pair as a connection's socket.
struct Socket(UnixStream);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Sink for Socket {
    /// A socket pair cannot hold bytes back: sent at once.
    fn write_held(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(slices)
    }
}

/// Runs the work where it is asked for, after telling the file it opened
/// what the disk says of it.
struct WithMetadata(Metadata);

impl Executor for WithMetadata {
    fn execute(&mut self, _conn: ConnId, work: Work) -> Option<Response> {
        Some(run_with(work, self.0))
    }
}

/// The same through a connection's state machine and a real socket: the
/// bytes in, every answer written (a file whose size the disk overstated
/// ends the connection when it runs out), and the connection ends.
#[test]
fn any_request_on_any_file_through_a_connection_ends_it_without_a_panic() {
    let (_dir, service) = site();
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(client_bytes(), metadata()), |(bytes, metadata)| {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut socket = Socket(server);
        let reader = std::thread::spawn(move || {
            let _ = (&client).write_all(&bytes);
            let _ = client.shutdown(std::net::Shutdown::Write);
            let mut received = Vec::new();
            let _ = (&client).read_to_end(&mut received);
        });
        let mut conn = Conn::new(&service, Limits::default());
        let deadline = Instant::now() + Duration::from_secs(10);
        let id = ConnId::from_usize(1);
        while conn.advance(&mut socket, &service, &mut WithMetadata(metadata), id) == Status::Open {
            prop_assert!(Instant::now() < deadline, "the connection never ended");
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(socket);
        reader.join().unwrap();
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
