//! Cases that users of other static file servers reported (issue 25), as
//! raw requests against the real binary, on several models, and side by
//! side with nginx where it is installed: a response cut off by a body
//! left unread, request-target forms, a directory without its slash,
//! content types, list-valued conditional headers, and a listener that
//! hides connected clients.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::http::{HttpClient, HttpReply};
use crate::support::{Reply, Server, IO_TIMEOUT, MODELS};

/// The reporters' set-up: `test.txt` (12 bytes), an empty file, a large
/// file (streamed, and larger than the client's first receive window), a
/// directory with an index, and a 4-byte WebAssembly module.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.txt"), b"hello world\n").unwrap();
    std::fs::write(dir.path().join("empty.txt"), b"").unwrap();
    std::fs::write(dir.path().join("big.bin"), big()).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/index.html"), b"<a href=\"a.html\">a</a>\n").unwrap();
    std::fs::write(dir.path().join("m.wasm"), b"\0asm").unwrap();
    dir
}

fn big() -> Vec<u8> {
    (0..1_000_000u32).map(|i| (i * 13 % 251) as u8).collect()
}

fn start(model: &str, root: &Path, more: &[&str]) -> Server {
    let mut args = vec!["--model", model, "--root", root.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(more);
    Server::start(&args)
}

/// One request on a fresh connection; the response.
fn ask(addr: std::net::SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> HttpReply {
    crate::http_files::request(&mut HttpClient::connect(addr), method, target, headers)
}

/// Splits a raw response into its head and body at the blank line.
fn split_response(raw: &[u8]) -> (String, &[u8]) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    (String::from_utf8_lossy(&raw[..end]).into_owned(), &raw[end..])
}

/// Sends a GET for `big.bin` whose body comes 50 ms after the head, after
/// the response has started; reads nothing for half a second, then reads
/// to the end. Returns what arrived, or the error that ended the read (a
/// reset, when the server closed with the body unread).
fn late_body_download(addr: std::net::SocketAddr, connection: &str, body_len: usize) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let head = format!(
        "GET /big.bin HTTP/1.1\r\nHost: test\r\nContent-Length: {body_len}\r\nConnection: {connection}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // The server may already have closed its side; a failed write is what
    // the read below then reports.
    let _ = stream.write_all(&vec![b'b'; body_len]);
    std::thread::sleep(Duration::from_millis(500));
    let mut received = Vec::new();
    stream.read_to_end(&mut received).map(|_| received)
}

/// Class 1: a response is not destroyed by input the server does not want.
/// With `Connection: close` the server closes after the response, with the
/// body unread: a staged close. Without it, the body is read and thrown
/// away and the connection stays open for the next request.
#[test]
fn a_body_arriving_after_the_response_started_does_not_cut_the_response_short() {
    let root = site();
    let expected = big();
    for model in MODELS.iter() {
        let server = start(model, root.path(), &[]);
        // Closing: a body under the discard limit, and one over it.
        for body_len in [20_000, 1_200_000] {
            let received = late_body_download(server.addr, "close", body_len)
                .unwrap_or_else(|err| panic!("{model}, {body_len}-byte body: the response was cut off: {err}"));
            let (head, body) = split_response(&received);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{model}: {head}");
            assert!(body == expected, "{model}, {body_len}-byte body: {} of {} bytes", body.len(), expected.len());
        }
        // Keep-alive: the body is skipped and the next request is served.
        let mut http = HttpClient::connect(server.addr);
        http.send(b"GET /test.txt HTTP/1.1\r\nHost: test\r\nContent-Length: 20000\r\n\r\n");
        let first = http.read(false).expect("a response");
        assert_eq!((first.status, first.header("connection")), (200, None), "{model}: kept open");
        std::thread::sleep(Duration::from_millis(50));
        http.send(&vec![b'G'; 20_000]); // looks like a request, but is the body
        http.send(b"GET /m.wasm HTTP/1.1\r\nHost: test\r\n\r\n");
        let second = http.read(false).expect("the request after the body");
        assert_eq!((second.status, second.body.as_slice()), (200, &b"\0asm"[..]), "{model}");
    }
}

/// Class 1, the other closing paths: a refusal that closes while the
/// client is still sending, a request pipelined behind `Connection: close`,
/// and a graceful stop during a download whose request body is still
/// arriving. Each ends with the whole answer and a FIN, never a reset.
#[test]
fn every_close_while_the_client_still_sends_is_staged() {
    let root = site();
    for model in ["event", "threads", "iterative", "poll", "event-async"] {
        let server = start(model, root.path(), &[]);
        // A 400 for a bad Content-Length, then 200 KB the server will not read.
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut junk = b"GET /test.txt HTTP/1.1\r\nHost: t\r\nContent-Length: zz\r\n\r\n".to_vec();
        junk.extend(std::iter::repeat_n(b'j', 200_000));
        let _ = stream.write_all(&junk);
        let mut received = Vec::new();
        let ended = stream.read_to_end(&mut received);
        assert!(ended.is_ok(), "{model}: the 400 ended in a reset: {ended:?}");
        assert!(received.starts_with(b"HTTP/1.1 400 "), "{model}: {}", String::from_utf8_lossy(&received));

        // Pipelined behind a closing request: answered once, then a FIN.
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let pipelined =
            "GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /test.txt HTTP/1.1\r\nHost: t\r\n\r\n";
        stream.write_all(pipelined.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut received = Vec::new();
        let ended = stream.read_to_end(&mut received);
        assert!(ended.is_ok(), "{model}: pipelined after close: {ended:?}");
        assert_eq!(split_response(&received).1.len(), big().len(), "{model}: only the first is answered, whole");
    }
    // A stop while the body is still arriving: the response in flight is
    // finished, and the close is staged too.
    for model in ["event", "threads"] {
        let server = start(model, root.path(), &[]);
        let addr = server.addr;
        let download = std::thread::spawn(move || late_body_download(addr, "keep-alive", 20_000));
        std::thread::sleep(Duration::from_millis(20));
        server.signal(rustix::process::Signal::TERM);
        let received = download.join().unwrap().unwrap_or_else(|err| panic!("{model}: cut off by the stop: {err}"));
        assert_eq!(split_response(&received).1, big(), "{model}");
        assert_eq!(server.wait_exit(), Some(0), "{model}");
    }
}

/// Class 2: the request-target forms of RFC 9112 section 3.2, and empty
/// path segments wherever they are.
#[test]
fn request_targets_in_every_form_the_rfc_names() {
    let root = site();
    for model in ["event", "threads", "select", "uring"] {
        let server = start(model, root.path(), &[]);
        let absolute = format!("http://{}/test.txt", server.addr);
        for target in
            [absolute.as_str(), "HTTP://example.com/test.txt?x=1", "//test.txt", "/./test.txt", "/%2F/test.txt"]
        {
            let reply = ask(server.addr, "GET", target, &[]);
            assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello world\n"[..]), "{model}: {target}");
        }
        for target in ["/sub//index.html", "//sub///index.html", "http://h//sub/"] {
            assert_eq!(ask(server.addr, "GET", target, &[]).status, 200, "{model}: {target}");
        }
        // No path is the root's (which has no index.html: no listing).
        assert_eq!(ask(server.addr, "GET", "http://h", &[]).status, 403, "{model}");
        // The asterisk- and authority-forms name no file.
        for target in ["*", "example.com:80", "ftp://h/test.txt"] {
            assert_eq!(ask(server.addr, "GET", target, &[]).status, 400, "{model}: {target}");
        }
        assert_eq!(ask(server.addr, "OPTIONS", "*", &[]).status, 405, "{model}");
        // The line protocol keeps its own rule: an absolute path is refused.
        assert!(
            matches!(server.get("/test.txt"), Reply::Err(403)),
            "{model}: the line protocol refuses absolute paths"
        );
    }
}

/// Class 3: a directory named without its slash is 301 to it, query kept.
#[test]
fn a_directory_without_its_slash_is_redirected_to_it() {
    let root = site();
    for model in ["event", "threads", "event-async"] {
        let server = start(model, root.path(), &[]);
        for (target, location) in
            [("/sub", "/sub/"), ("/sub?x=1&y", "/sub/?x=1&y"), ("//sub", "/sub/"), ("http://h/sub?q", "/sub/?q")]
        {
            let reply = ask(server.addr, "GET", target, &[]);
            assert_eq!((reply.status, reply.header("location")), (301, Some(location)), "{model}: {target}");
        }
        let head = ask(server.addr, "HEAD", "/sub", &[]);
        assert_eq!((head.status, head.header("location")), (301, Some("/sub/")), "{model}");
        let followed = ask(server.addr, "GET", "/sub/", &[]);
        assert_eq!(followed.status, 200, "{model}");
        assert_eq!(ask(server.addr, "GET", "/test.txt/", &[]).status, 404, "{model}: a file is not a directory");
        assert!(matches!(server.get("sub"), Reply::Err(403)), "{model}: the line protocol has no redirects");
    }
}

/// Class 4: content types from the maintained table, one per family.
#[test]
fn content_types_come_from_the_maintained_table() {
    let root = site();
    for (name, bytes) in [("a.css", &b"p{}"[..]), ("a.js", b"1"), ("a.json", b"{}"), ("a.png", b"x"), ("a.mp4", b"x")] {
        std::fs::write(root.path().join(name), bytes).unwrap();
    }
    let server = start("event", root.path(), &[]);
    for (target, expected) in [
        ("/m.wasm", "application/wasm"),
        ("/test.txt", "text/plain; charset=utf-8"),
        ("/sub/", "text/html; charset=utf-8"),
        ("/a.css", "text/css; charset=utf-8"),
        ("/a.js", "text/javascript; charset=utf-8"),
        ("/a.json", "application/json"),
        ("/a.png", "image/png"),
        ("/a.mp4", "video/mp4"),
        ("/big.bin", "application/octet-stream"),
    ] {
        assert_eq!(ask(server.addr, "GET", target, &[]).header("content-type"), Some(expected), "{target}");
    }
}

/// Class 5: every member of a list-valued conditional header is compared.
#[test]
fn any_member_of_an_if_none_match_list_matches() {
    let root = site();
    for model in ["event", "threads", "event-aio"] {
        let server = start(model, root.path(), &[]);
        let etag = ask(server.addr, "HEAD", "/test.txt", &[]).header("etag").expect("an ETag").to_string();
        let five = format!("\"1-1\", \"2-2\", \"3-3\", \"4-4\", {etag}");
        assert_eq!(ask(server.addr, "GET", "/test.txt", &[("If-None-Match", &five)]).status, 304, "{model}");
        let split = [("If-None-Match", "\"1-1\", \"2-2\""), ("If-None-Match", etag.as_str())];
        assert_eq!(ask(server.addr, "GET", "/test.txt", &split).status, 304, "{model}: over two lines");
        let none =
            ask(server.addr, "GET", "/test.txt", &[("If-None-Match", "\"1-1\", \"2-2\", \"3-3\", \"4-4\", \"5-5\"")]);
        assert_eq!(none.status, 200, "{model}");
        let two_lines = [("Connection", "keep-alive"), ("Connection", "close")];
        assert_eq!(ask(server.addr, "GET", "/test.txt", &two_lines).header("connection"), Some("close"), "{model}");
    }
}

/// Class 6: a client that connects and says nothing is the server's at
/// once (it counts against `--max-conns`), unless `--defer-accept` asks
/// the kernel to hold it until its request arrives.
#[test]
fn a_silent_client_is_accepted_at_once_unless_accepts_are_deferred() {
    let root = site();
    for model in ["event", "threads", "poll"] {
        for deferred in [false, true] {
            let more: &[&str] = if deferred { &["--max-conns", "1", "--defer-accept"] } else { &["--max-conns", "1"] };
            let server = start(model, root.path(), more);
            let silent = TcpStream::connect(server.addr).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let second = ask(server.addr, "GET", "/test.txt", &[]).status;
            let expected = if deferred && cfg!(target_os = "linux") { 200 } else { 503 };
            assert_eq!(second, expected, "{model}, deferred: {deferred}");
            let _ = silent.shutdown(Shutdown::Both);
        }
    }
}

/// The same targets side by side with nginx, where it is installed.
#[test]
fn the_reported_targets_are_answered_as_nginx_answers_them() {
    let root = site();
    let Some(nginx) = crate::support::Nginx::start(&format!(
        "types {{ text/plain txt; text/html html; application/wasm wasm; }} default_type application/octet-stream;\n\
         server {{ listen {{listen}}; root {}; etag on; }}",
        root.path().display()
    )) else {
        return;
    };
    let ours = start("event", root.path(), &[]);
    let etag = ask(ours.addr, "HEAD", "/test.txt", &[]).header("etag").unwrap().to_string();
    assert_eq!(ask(nginx.addr, "HEAD", "/test.txt", &[]).header("etag"), Some(etag.as_str()), "the same validators");
    let five = format!("\"1-1\", \"2-2\", \"3-3\", \"4-4\", {etag}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("http://127.0.0.1/test.txt", vec![]),
        ("//test.txt", vec![]),
        ("/sub//index.html", vec![]),
        ("/sub", vec![]),
        ("/sub?x=1", vec![]),
        ("/m.wasm", vec![]),
        ("/test.txt", vec![("If-None-Match", five.as_str())]),
        ("/empty.txt", vec![]),
    ];
    for (target, headers) in &cases {
        let theirs = ask(nginx.addr, "GET", target, headers);
        let mine = ask(ours.addr, "GET", target, headers);
        assert_eq!(mine.status, theirs.status, "{target} {headers:?}");
        let path_of = |location: Option<&str>| {
            // nginx writes an absolute Location; ours is a path (RFC 9110 allows both).
            location
                .map(|l| l.split_once("://").map_or(l, |(_, rest)| &rest[rest.find('/').unwrap_or(0)..]).to_string())
        };
        assert_eq!(path_of(mine.header("location")), path_of(theirs.header("location")), "{target}");
        if theirs.status == 200 {
            assert_eq!(mine.body, theirs.body, "{target}");
            // The media type; ours adds `charset=utf-8` to text.
            let media_type =
                |reply: &HttpReply| reply.header("content-type").map(|t| t.split(';').next().unwrap().to_string());
            assert_eq!(media_type(&mine), media_type(&theirs), "{target}");
        }
    }
    // The late body: both deliver the whole response.
    for addr in [nginx.addr, ours.addr] {
        let received = late_body_download(addr, "close", 20_000).expect("the whole response");
        assert_eq!(split_response(&received).1, big(), "{addr}");
    }
    // Issue 34, side by side: a file from 1964 (the same ETag; nginx shows
    // Last-Modified as 1970, ours leaves it out), and the framing rules.
    let old = root.path().join("old.txt");
    std::fs::write(&old, b"x\n").unwrap();
    let before_1970 = std::time::UNIX_EPOCH - crate::robustness::BEFORE_1970;
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(before_1970).unwrap();
    let (theirs, mine) = (ask(nginx.addr, "GET", "/old.txt", &[]), ask(ours.addr, "GET", "/old.txt", &[]));
    assert_eq!((mine.status, mine.header("etag")), (theirs.status, theirs.header("etag")), "a file from 1964");
    assert_eq!((theirs.header("last-modified"), mine.header("last-modified")), (Some(EPOCH), None));
    let ending = "Host: t\r\n\r\n";
    for (request, differs) in [
        (
            format!(
                "GET /test.txt HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n{ending}GET / HTTP/1.1\r\n{ending}"
            ),
            None,
        ),
        ("GET /test.txt HTTP/1.1\r\nHost: x/y\r\n\r\n".to_string(), None),
        ("GET /test.txt HTTP/1.1\r\nHost: x y\r\n\r\n".to_string(), None),
        ("GET /test.txt HTTP/1.1\r\nHost:\r\n\r\n".to_string(), None),
        // RFC 9112 section 6.3 makes this 400 a MUST; nginx answers 501.
        (format!("GET /test.txt HTTP/1.1\r\nTransfer-Encoding: gzip\r\n{ending}"), Some((400, 501))),
        (format!("GET /test.txt HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n{ending}"), None),
        (format!("\r\nGET /test.txt HTTP/1.1\r\n{ending}"), None),
        (format!("GET\t/test.txt HTTP/1.1\r\n{ending}"), None),
        // nginx takes the MAY of section 3 (any whitespace parts the words);
        // ours answers its SHOULD, 400, as a proxy in front may not parse it so.
        (format!("GET /test.txt HTTP/1.1 \r\n{ending}"), Some((400, 200))),
    ] {
        let status = |addr| {
            let mut http = HttpClient::connect(addr);
            http.send(request.as_bytes());
            let reply = http.read(false).expect("a response");
            // A refusal closes the connection, and nothing else was answered.
            let closed = reply.status < 400 || http.is_closed_by_server();
            (reply.status, closed)
        };
        let (mine, theirs) = (status(ours.addr), status(nginx.addr));
        let expected = differs.map_or(theirs.0, |(ours, nginx)| {
            assert_eq!(theirs.0, nginx, "{request:?}: nginx changed its answer");
            ours
        });
        assert_eq!(mine.0, expected, "{request:?}");
        assert!(mine.1 && theirs.1, "{request:?}: closed (ours, nginx's): {mine:?} {theirs:?}");
    }
}

/// nginx's Last-Modified for a time before 1970.
const EPOCH: &str = "Thu, 01 Jan 1970 00:00:00 GMT";
