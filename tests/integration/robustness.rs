//! What a client sends or the disk holds never brings a server down, and
//! HTTP's framing rules are kept (issue 34), as raw requests against the
//! real binary: a file dated before 1970 or after 9999 on every model; a
//! Content-Length too large for a number; a Host that is not a host; a
//! Transfer-Encoding other than chunked; an empty line before the request
//! line; a request line that is HTTP in all but its whitespace. The same
//! requests side by side with nginx are in `user_reports.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::HttpClient;
use crate::support::{Reply, Server, IO_TIMEOUT, MODELS};

/// 1964-01-01, the issue's `touch -d 1964-01-01`.
pub const BEFORE_1970: Duration = Duration::from_secs(189_388_800);

/// A directory on tmpfs where there is one (`/dev/shm`): tmpfs keeps any
/// 64-bit time, where ext4 stops at 2446 and could not hold year 10000.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    shm.is_dir().then(|| tempfile::tempdir_in(shm).ok()).flatten().unwrap_or_else(|| tempfile::tempdir().unwrap())
}

/// `test.txt`; `old.txt`, modified in 1964; `far.txt`, modified in the
/// year 36812 (or as far as the file system goes); and `old.bin`, from
/// 1964 and too large to cache (streamed).
pub fn dated_site() -> tempfile::TempDir {
    let dir = scratch_dir();
    let write = |name: &str, bytes: &[u8], modified: Option<SystemTime>| {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        if let Some(modified) = modified {
            let file = std::fs::File::options().write(true).open(dir.path().join(name)).unwrap();
            file.set_modified(modified).unwrap();
        }
    };
    write("test.txt", b"hello world\n", None);
    write("old.txt", b"x\n", Some(UNIX_EPOCH - BEFORE_1970));
    write("far.txt", b"far\n", Some(UNIX_EPOCH + Duration::from_secs(1 << 40)));
    write("old.bin", &vec![b'o'; 300_000], Some(UNIX_EPOCH - BEFORE_1970));
    dir
}

/// Sends `bytes` on a new connection and reads until the server closes
/// it (a test failure if it does not within [`IO_TIMEOUT`]).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let ended = stream.read_to_end(&mut received);
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(ended.is_ok(), "{bytes:?}: the server did not close ({ended:?}) after {text:?}");
    text
}

/// Asserts that `received` is exactly one HTTP response with `status`,
/// which says it closes the connection.
fn assert_one_closing_response(received: &str, status: u16, what: &str) {
    assert!(received.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {received:?}");
    assert_eq!(received.matches("HTTP/1.").count(), 1, "{what}: one response only: {received:?}");
    assert!(received.contains("\r\nConnection: close\r\n"), "{what}: {received:?}");
}

fn start(model: &str, root: &Path) -> Server {
    Server::start(&["--model", model, "--root", root.to_str().unwrap(), "--quiet"])
}

/// A modification time no HTTP date here can show is no reason to fail:
/// before 1970 `Last-Modified` is left out, past now it is the response's
/// `Date`, and the server goes on serving, on every model (in parallel: a
/// second or two in all).
#[test]
fn files_dated_before_1970_or_after_9999_are_served_on_every_model() {
    let root = dated_site();
    std::thread::scope(|scope| {
        for model in MODELS.iter() {
            let root = root.path();
            scope.spawn(move || {
                let server = start(model, root);
                let get = |target: &str| {
                    let mut http = HttpClient::connect(server.addr);
                    http.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                    http.read(false).unwrap_or_else(|| panic!("{model}: {target}: the connection closed unanswered"))
                };
                for _ in 0..2 {
                    // Twice: read, then (for the small file) from the cache.
                    let old = get("/old.txt");
                    assert_eq!((old.status, old.body.as_slice()), (200, &b"x\n"[..]), "{model}");
                    assert_eq!(old.header("last-modified"), None, "{model}: no date for 1964");
                    assert_eq!(old.header("etag"), Some("\"-b49d800-2\""), "{model}: nginx's tag for 1964");
                    let far = get("/far.txt");
                    assert_eq!((far.status, far.body.as_slice()), (200, &b"far\n"[..]), "{model}");
                    assert_eq!(far.header("last-modified"), far.header("date"), "{model}: a future time is now");
                    let streamed = get("/old.bin");
                    assert_eq!((streamed.status, streamed.body.len()), (200, 300_000), "{model}");
                }
                assert_eq!(server.get("test.txt"), Reply::Ok(b"hello world\n".to_vec()), "{model}: still serving");
            });
        }
    });
}

/// RFC 9110 section 8.6 and RFC 9112 section 6.3: a Content-Length too
/// large for a number is invalid, 400 and close. (It was taken as no body,
/// and the bytes after the head answered as a second request.)
#[test]
fn a_content_length_past_any_number_is_400_and_closes() {
    let root = dated_site();
    for model in ["event", "threads", "uring-net", "tokio"] {
        let server = start(model, root.path());
        for length in ["99999999999999999999", "18446744073709551616", "+12"] {
            let smuggled = format!(
                "GET /test.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\nGET /old.txt HTTP/1.1\r\nHost: t\r\n\r\n"
            );
            let received = exchange(server.addr, smuggled.as_bytes());
            assert_one_closing_response(&received, 400, &format!("{model}: Content-Length: {length}"));
        }
    }
}

/// RFC 9112 section 3.2: a Host that is not a host and port is 400.
#[test]
fn a_host_that_is_not_a_host_is_400() {
    let root = dated_site();
    for model in ["event", "threads", "poll", "tokio"] {
        let server = start(model, root.path());
        for host in ["Host: x/y", "Host: x y", "Host:", "Host: x:80x"] {
            let received = exchange(server.addr, format!("GET /test.txt HTTP/1.1\r\n{host}\r\n\r\n").as_bytes());
            assert_one_closing_response(&received, 400, &format!("{model}: {host:?}"));
        }
        let mut http = HttpClient::connect(server.addr);
        http.send(b"GET /test.txt HTTP/1.1\r\nHost: [::1]:7070\r\n\r\n");
        assert_eq!(http.read(false).unwrap().status, 200, "{model}: an IP literal is a host");
    }
}

/// RFC 9112 section 6.3 item 4: a request whose last transfer coding is
/// not chunked has a body of unknown length: 400 (MUST), then close. Only
/// where chunked comes last does section 6.1's 501 apply, to the codings
/// before it (the server implements none). nginx answers 501 to both.
#[test]
fn transfer_codings_other_than_chunked_are_refused_and_close() {
    let root = dated_site();
    for model in ["event", "threads", "uring-net", "pool"] {
        let server = start(model, root.path());
        for (coding, status) in [("gzip", 400), ("chunked, gzip", 400), ("gzip, chunked", 501)] {
            let request = format!("GET /test.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
            let received = exchange(server.addr, request.as_bytes());
            assert_one_closing_response(&received, status, &format!("{model}: Transfer-Encoding: {coding}"));
        }
    }
}

/// RFC 9112 section 2.2: an empty line before an HTTP request line is
/// ignored, first on a connection or between keep-alive requests; the line
/// protocol keeps its rule (an empty line is `ERR 400`, then close).
#[test]
fn an_empty_line_before_an_http_request_is_ignored_and_the_line_protocol_keeps_its_400() {
    let root = dated_site();
    for model in ["event", "select", "threads", "uring-net", "tokio"] {
        let server = start(model, root.path());
        for leading in ["\r\n", "\n", "\r\n\r\n"] {
            let mut http = HttpClient::connect(server.addr);
            http.send(format!("{leading}GET /test.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let reply = http.read(false).expect("a response");
            assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello world\n"[..]), "{model}: {leading:?}");
            http.send(format!("{leading}GET /old.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(http.read(false).expect("a second response").body, b"x\n", "{model}: keep-alive");
        }
        for line_client in [&b"\n"[..], b"\r\n", b"\ntest.txt\n"] {
            let mut conn = server.connect();
            conn.send(line_client);
            assert_eq!(conn.read_reply(), Reply::Err(400), "{model}: {line_client:?}");
            assert!(conn.is_closed_by_server(), "{model}: {line_client:?}");
        }
    }
}

/// RFC 9112 section 3: a request line that is HTTP in all but its
/// whitespace is answered in HTTP (400), not as line-protocol paths (one
/// `ERR 404` per header line, as it was).
#[test]
fn a_request_line_mangled_only_in_its_whitespace_is_an_http_400() {
    let root = dated_site();
    for model in ["event", "iterative", "threads", "uring-net", "tokio"] {
        let server = start(model, root.path());
        for line in ["GET\t/test.txt\tHTTP/1.1", "GET /test.txt HTTP/1.1 ", "GET /test.txt\tHTTP/1.1"] {
            let received = exchange(server.addr, format!("{line}\r\nHost: t\r\nAccept: */*\r\n\r\n").as_bytes());
            assert_one_closing_response(&received, 400, &format!("{model}: {line:?}"));
            assert!(!received.contains("ERR"), "{model}: {line:?}: {received:?}");
        }
    }
}
