//! Hostile requests over both protocols: each gets its clear refusal,
//! nothing from outside the root is ever sent, and the server keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

#[cfg(target_os = "linux")]
use crate::support::{assert_a_hundred_clients_are_served, assert_no_socket_left_open, fixtures};
use crate::support::{assert_fds_come_back, hostile_tree, open_fds, Server, IO_TIMEOUT};

/// What a hostile request must get back: a status (HTTP code or `ERR` code).
struct Case {
    request: Vec<u8>,
    status: u16,
}

fn line(path: &[u8], status: u16) -> Case {
    let mut request = path.to_vec();
    request.push(b'\n');
    Case { request, status }
}

fn http(target: &str, status: u16) -> Case {
    Case { request: format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes(), status }
}

fn raw(bytes: &[u8], status: u16) -> Case {
    Case { request: bytes.to_vec(), status }
}

fn cases() -> Vec<Case> {
    vec![
        // The line protocol.
        line(b"../secret", 403),
        line(b"a/../../secret", 403),
        line(b"a/b/../../../secret", 403),
        line(b"/etc/passwd", 403),
        line(b"//etc/passwd", 403),
        line(b"/proc/self/environ", 403),
        line(b"out-link", 403),
        line(b"out-dir/secret", 403),
        line(b"fifo", 403),
        line(b"a", 403),
        line(b"a/b/", 403),
        line(b".", 403),
        line(b".hidden", 403),
        line(b"a/.hidden", 403),
        line(b"..", 403),
        line(b"...", 403),
        line(b"test.txt\0.png", 400),
        line(b"a\x01b", 400),
        line(b"a\x1b[31mred", 400),
        line(b"a\x7fb", 400),
        line(b"\xff\xfe\xfd", 404),
        line(b"caf\xc3\xa9", 404),
        line(b"test.txt/", 404),
        line(b"test.txt/..", 403),
        line(&[b'a'; 300], 404),
        line(&b"a/".repeat(1000), 404),
        line(b"null-dev", 403),
        line(b"in-link/../../secret", 403),
        // The HTTP subset.
        http("/../secret", 403),
        http("/%2e%2e/secret", 403),
        http("/%2E%2E/%2e%2e/secret", 403),
        http("/a/%2e%2e/%2e%2e/secret", 403),
        http("/..%2fsecret", 403),
        // Leading empty segments are skipped: a path under the root.
        http("/%2fetc/passwd", 404),
        http("/out-link", 403),
        http("/out-dir/secret", 403),
        http("/fifo", 403),
        http("/", 403),
        http("/a/", 403),
        http("/.hidden", 403),
        http("/%2ehidden", 403),
        http("/test.txt%00.png", 400),
        http("/a%0d%0aSet-Cookie:%20x", 400),
        http("/bad%zz", 400),
        http("/bad%2", 400),
        http("/%ff%fe", 404),
        http("/null-dev", 403),
        http("/proc/self/environ", 404),
        raw(b"GET http://evil/secret HTTP/1.1\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/9.9\r\n\r\n", 400),
        raw(b"POST /test.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 405),
        raw(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        // RFC 9112: framing that cannot be trusted, and a 1.1 request without one Host.
        raw(b"GET /test.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/1.1\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        raw(b"GET /test.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\nX: \x01\r\n\r\n", 400),
    ]
}

/// Sends one request on a fresh connection and returns the whole reply: one
/// line-protocol response, or everything until an HTTP server closes.
fn exchange(server: &Server, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut reply = Vec::new();
    let is_http = request.first().is_some_and(u8::is_ascii_uppercase) && request.contains(&b' ');
    let mut byte = [0u8; 1];
    if !is_http {
        while !reply.ends_with(b"\n") && matches!(stream.read(&mut byte), Ok(1)) {
            reply.push(byte[0]);
        }
        let announced = String::from_utf8_lossy(&reply).strip_prefix("OK ").map(|n| n.trim().parse().unwrap());
        let mut body = vec![0; announced.unwrap_or(0)];
        stream.read_exact(&mut body).unwrap();
        reply.extend_from_slice(&body);
        return reply;
    }
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The status in a reply of either protocol.
fn status_of(reply: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(reply);
    let code = if let Some(rest) = text.strip_prefix("ERR ") {
        rest.get(..3)
    } else if text.starts_with("OK ") {
        Some("200")
    } else {
        text.split(' ').nth(1)
    };
    code?.parse().ok()
}

#[test]
fn every_hostile_request_is_refused_and_nothing_leaks() {
    let (root, _outside) = hostile_tree();
    std::os::unix::fs::symlink("/dev/null", root.path().join("null-dev")).unwrap();
    let cases = cases();
    assert!(cases.len() >= 40, "the table keeps at least 40 cases");
    for model in ["event", "threads", "uring"] {
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        for case in &cases {
            let reply = exchange(&server, &case.request);
            let shown = String::from_utf8_lossy(&case.request);
            assert_eq!(
                status_of(&reply),
                Some(case.status),
                "{model}: {shown:?} got {:?}",
                String::from_utf8_lossy(&reply)
            );
            assert!(!reply.windows(10).any(|w| w == b"TOP SECRET"), "{model}: {shown:?} leaked the secret");
        }
        assert!(server.get("test.txt").body().starts_with(b"Hello"), "{model}: still serving");
    }
}

#[test]
fn a_file_swapped_for_an_escaping_symlink_is_never_served() {
    // A race the sandbox must win: while clients ask for `swap`, another
    // thread keeps replacing it with a symlink to the secret and back.
    let (root, outside) = hostile_tree();
    let swap = root.path().join("swap");
    let staging = root.path().join("swap.tmp");
    std::fs::write(&swap, b"harmless").unwrap();
    let server = Server::start(&["--root", root.path().to_str().unwrap(), "--cache-size", "0"]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = std::fs::remove_file(&staging);
                if i % 2 == 0 {
                    std::os::unix::fs::symlink(outside.path().join("secret"), &staging).unwrap();
                } else {
                    std::fs::write(&staging, b"harmless").unwrap();
                }
                std::fs::rename(&staging, &swap).unwrap(); // atomic swap
            }
        });
        let mut conn = server.connect();
        for _ in 0..300 {
            match conn.get(b"swap") {
                crate::support::Reply::Ok(body) => assert_eq!(body, b"harmless"),
                crate::support::Reply::Err(code) => assert!(code == 403 || code == 404, "{code}"),
                crate::support::Reply::Closed => panic!("closed"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}

#[test]
fn hostile_traffic_leaks_no_file_descriptor() {
    let (root, _outside) = hostile_tree();
    std::os::unix::fs::symlink("/dev/null", root.path().join("null-dev")).unwrap();
    let models: &[&str] = if cfg!(target_os = "linux") {
        &["event", "threads", "event-async", "tokio", "uring-net"]
    } else {
        &["event", "threads", "event-async", "tokio"]
    };
    for &model in models {
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        assert!(server.get("test.txt").body().starts_with(b"Hello"));
        let baseline = open_fds(server.pid());
        for case in &cases() {
            exchange(&server, &case.request);
        }
        // Hang up mid-request, many times: data and FIN often arrive
        // together, and an edge-triggered loop must still see the FIN
        // (before the fix such connections lingered until the idle timeout).
        for garbage in [&b"\xff\xfe\x00garbage"[..], b"GET /", b"test.txt", b"GET / HTTP/1.1\r\nX: y"].repeat(25) {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            let _ = stream.write_all(garbage);
        }
        // Every connection is closed by now or soon: the count comes back.
        assert_fds_come_back(&server, baseline, model);
    }
}

#[test]
fn a_client_that_hangs_up_mid_response_leaves_no_fd_behind() {
    // Cancellation (docs/guide/02d-async-await.md): the response in flight is
    // abandoned at its next write, and the file it streams closes with it.
    let root = tempfile::tempdir().unwrap();
    let big = std::fs::File::create(root.path().join("big")).unwrap();
    big.set_len(16 << 20).unwrap(); // far more than the socket buffers hold
    for model in ["event", "event-async", "tokio"] {
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        let baseline = open_fds(server.pid());
        for _ in 0..20 {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(b"big\n").unwrap();
            let mut first = [0u8; 4096];
            stream.read_exact(&mut first).unwrap();
        } // dropped with unread bytes: a reset, mid-response
        assert_fds_come_back(&server, baseline, model);
        assert_eq!(server.get("big").body().len(), 16 << 20, "{model}: still serving");
    }
}

/// `uring-net` frees a connection only once the kernel is done with it:
/// clients that hang up while a slow read, a receive, or the splice of a
/// large file is in flight leave no fd behind, and the server serves on.
#[test]
#[cfg(target_os = "linux")]
fn uring_net_hang_ups_with_operations_in_flight_leak_nothing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    std::fs::write(root.path().join("small.txt"), b"hello").unwrap();
    let dir = root.path().to_str().unwrap();
    let server = Server::start(&["--model", "uring-net", "--root", dir, "--read-delay-ms", "100", "--cache-size", "0"]);
    assert_eq!(server.get("small.txt").body(), b"hello");
    let baseline = open_fds(server.pid());
    for round in 0..20 {
        let requests: [&[u8]; 4] = [b"big.bin\n", b"small.txt\n", b"GET /big.bin HTTP/1.1\r\n\r\n", b"small"];
        let mut streams = Vec::new();
        for request in requests {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(request).unwrap();
            streams.push(stream);
        }
        if round % 2 == 0 {
            // Let the reads finish and the large bodies start streaming.
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        drop(streams);
    }
    assert_fds_come_back(&server, baseline, "uring-net");
    assert_no_socket_left_open(&server, "uring-net");
    assert_eq!(server.get("small.txt").body(), b"hello");
}

/// `uring-net` with each of its techniques turned off in turn (and with
/// zero-copy sends on loopback) serves the same bytes: a hundred clients at
/// once, cached and streamed files, pipelined HTTP, hang-ups mid-response;
/// and every socket and fd comes back, direct descriptors included.
#[test]
#[cfg(target_os = "linux")]
fn uring_net_serves_the_same_without_each_technique() {
    let root = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    std::fs::write(root.path().join("64k.bin"), vec![b'z'; 64 << 10]).unwrap();
    let fixtures = fixtures();
    let variants: [&[&str]; 7] = [
        &[],
        &["--without", "multishot"],
        &["--without", "provided-buffers"],
        &["--without", "registered-files"],
        &["--without", "batching"],
        &["--without", "defer-taskrun"],
        &["--zero-copy", "always"],
    ];
    for variant in variants {
        let what = format!("uring-net {}", variant.join(" "));
        let mut args = vec!["--model", "uring-net", "--root", fixtures.to_str().unwrap()];
        args.extend_from_slice(variant);
        let server = Server::start(&args);
        assert_a_hundred_clients_are_served(&server, &what);
        drop(server);

        let mut args = vec!["--model", "uring-net", "--root", root.path().to_str().unwrap()];
        args.extend_from_slice(variant);
        let server = Server::start(&args);
        assert_eq!(server.get("big.bin").body(), big, "{what}: streamed");
        let baseline = open_fds(server.pid());
        // Three pipelined requests in one write, answered in order.
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let get = |path: &str| format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let pipelined = [get("64k.bin"), get("big.bin"), get("64k.bin")].concat();
        stream.write_all(pipelined.as_bytes()).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut received = Vec::new();
        let expected_bodies = (64 << 10) * 2 + big.len();
        while received.len() < expected_bodies {
            let mut chunk = [0u8; 64 << 10];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "{what}: closed after {} bytes", received.len());
            received.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&received);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{what}");
        drop(stream);
        // Hang up mid-response, with sends and splices in flight.
        for _ in 0..10 {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(b"big.bin\n64k.bin\n").unwrap();
            let mut first = [0u8; 1000];
            stream.read_exact(&mut first).unwrap();
        }
        assert_fds_come_back(&server, baseline, &what);
        assert_no_socket_left_open(&server, &what);
        assert_eq!(server.get("64k.bin").body().len(), 64 << 10, "{what}: still serving");
    }
}

/// A flag only some models read is a usage error with any other (exit 2,
/// naming the models that read it), not silently ignored; and `--threads`,
/// once an alias of `--workers`, is no flag at all.
#[test]
fn a_flag_the_model_does_not_use_is_a_usage_error() {
    let refused: [(&[&str], &str); 7] = [
        (&["--model", "event", "--without", "batching"], "--without applies to --model uring-net only"),
        (&["--model", "event", "--zero-copy", "always"], "--zero-copy applies to --model uring-net only"),
        (&["--model", "event", "--runtime", "current-thread-per-core"], "--runtime applies to --model tokio only"),
        (&["--model", "select", "--workers", "4"], "--workers applies to --model prefork, pool, event"),
        (&["--model", "iterative", "--workers", "4"], "(this run is --model iterative)"),
        (&["--model", "event", "--readers", "4"], "--readers applies to --model event-async, event-aio, uring"),
        (&["--model", "pool", "--threads", "4"], "unexpected argument '--threads'"),
    ];
    std::thread::scope(|scope| {
        for (flags, message) in refused {
            scope.spawn(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
                    .args(["--port", "0"])
                    .args(flags)
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
                assert!(stderr.contains(message), "{flags:?}: {stderr}");
            });
        }
    });
}

/// A client that asks for large answers and never reads holds the pages
/// of a zero-copy send for as long as it likes (the kernel lets them go
/// only once they are acknowledged). The server still closes it at the
/// write timeout and gives its place to the next client: the buffer waits
/// for the kernel, not the connection.
#[test]
#[cfg(target_os = "linux")]
fn uring_net_zero_copy_frees_the_place_of_a_client_that_never_reads() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("64k.bin"), vec![b'z'; 64 << 10]).unwrap();
    let dir = root.path().to_str().unwrap();
    let flags = ["--model", "uring-net", "--zero-copy", "always", "--write-timeout", "1", "--max-conns", "1"];
    let server = Server::start(&[&flags[..], &["--root", dir]].concat());
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&stalled, 4096).unwrap();
    stalled.write_all(&b"64k.bin\n".repeat(200)).unwrap(); // 12.5 MiB of answers, never read
    std::thread::sleep(std::time::Duration::from_millis(300)); // its sends are stuck by now
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        match server.connect().get(b"64k.bin") {
            crate::support::Reply::Ok(body) => {
                assert_eq!(body.len(), 64 << 10);
                break;
            }
            other => assert!(std::time::Instant::now() < deadline, "still refused after the write timeout: {other:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(stalled);
}
