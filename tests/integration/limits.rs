//! Limits against hostile clients, with short limits set by flags: slow
//! senders, idle keep-alives, readers that never read, floods, fd exhaustion.

use std::io::Write;
use std::time::Duration;

use crate::support::{fixtures, Reply, Server, IO_TIMEOUT};

/// One readiness loop and one blocking model: the limits live in the shared
/// connection state, so both kinds must enforce them.
const MODELS: &[&str] = &["event", "poll", "threads", "iterative"];

#[test]
fn a_slow_sender_is_dropped_after_the_request_timeout() {
    for model in MODELS.iter() {
        let server =
            Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--request-timeout", "0.5"]);
        let mut slow = server.connect();
        // One byte every 200 ms: never idle, never complete.
        let mut closed = false;
        for &byte in b"test.txt-and-on-and-on-and-on" {
            slow.send(&[byte]);
            std::thread::sleep(Duration::from_millis(200));
            slow.set_read_timeout(Duration::from_millis(1));
            if slow.try_read_reply() == Some(Reply::Closed) {
                closed = true;
                break;
            }
        }
        assert!(closed, "{model}: a request dribbled for 5 s was never cut off");
        slow.set_read_timeout(IO_TIMEOUT);
        assert_eq!(server.get("tiny.txt").body(), b"hi\n", "{model}");
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    for model in MODELS.iter() {
        let server =
            Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--idle-timeout", "0.3"]);
        let mut conn = server.connect();
        assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n");
        // Closed by the server (read returns end-of-stream) well before IO_TIMEOUT.
        let started = std::time::Instant::now();
        let follows = conn.what_follows();
        assert!(matches!(follows, Ok(0)), "{model}: {follows:?} after {:?}", started.elapsed());
        // iterative: the slot is free again.
        assert_eq!(server.get("tiny.txt").body(), b"hi\n", "{model}");
    }
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("big"), vec![b'x'; 8 << 20]).unwrap();
    for model in ["event", "threads"] {
        let server = Server::start(&[
            "--model",
            model,
            "--root",
            root.path().to_str().unwrap(),
            "--write-timeout",
            "0.5",
            "--max-conns",
            "1",
        ]);
        // Ask for 8 MiB, read none of it: the socket buffers fill, writes stall.
        let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
        stalled.write_all(b"big\n").unwrap();
        // With --max-conns 1 the stalled client holds the only slot until
        // the server gives up on it; then a new client is served.
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        loop {
            match server.get("big") {
                Reply::Ok(body) => break assert_eq!(body.len(), 8 << 20, "{model}"),
                Reply::Err(503) => assert!(std::time::Instant::now() < deadline, "{model}: never dropped"),
                other => panic!("{model}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(stalled);
    }
}

#[test]
fn a_connection_flood_is_refused_with_503_and_the_server_recovers() {
    for (model, workers) in [("event", "1"), ("pool", "20")] {
        let server = Server::start(&[
            "--model",
            model,
            "--root",
            fixtures().to_str().unwrap(),
            "--max-conns",
            "20",
            "--workers",
            workers,
        ]);
        let mut held: Vec<_> = (0..20).map(|_| server.connect()).collect();
        for conn in &mut held {
            assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n", "{model}");
        }
        let refused = (0..200).filter(|_| server.connect().get(b"tiny.txt") == Reply::Err(503)).count();
        assert_eq!(refused, 200, "{model}: every connection past the cap gets 503");
        drop(held);
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while server.connect().get(b"tiny.txt") != Reply::Ok(b"hi\n".to_vec()) {
            assert!(std::time::Instant::now() < deadline, "{model}: did not recover");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_low_fd_limit_caps_connections_with_503_and_existing_clients_stay_served() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    for model in ["event", "select", "threads"] {
        let server = Server::start_with(&["--model", model, "--root", fixtures().to_str().unwrap()], |command| {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
            let mut wrapped = std::process::Command::new("prlimit");
            wrapped.arg("--nofile=64").arg("--").arg(program).args(args);
            wrapped.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            *command = wrapped;
        });
        server.wait_for_log("the open-file limit allows 32 connections", 1);
        // More clients than fds: those admitted are served (files still
        // open: the reserve), the rest get a clean 503, never a 500.
        let conns: Vec<_> = (0..60).map(|_| server.connect()).collect();
        let mut admitted = Vec::new();
        let mut refused = 0;
        for mut conn in conns {
            match conn.get(b"data/1k.bin") {
                Reply::Ok(body) if body.len() == 1024 => admitted.push(conn),
                Reply::Err(503) => refused += 1,
                other => panic!("{model}: {other:?}"),
            }
        }
        assert!(admitted.len() >= 20 && refused >= 20, "{model}: served {}, refused {refused}", admitted.len());
        for conn in &mut admitted {
            assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n", "{model}: admitted clients keep being served");
        }
        let conns = admitted;
        drop(conns);
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        while server.connect().get(b"tiny.txt") != Reply::Ok(b"hi\n".to_vec()) {
            assert!(std::time::Instant::now() < deadline, "{model}: never recovered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_1_gib_sparse_file_streams_with_bounded_memory_while_others_are_served() {
    use std::io::Read;
    let root = tempfile::tempdir().unwrap();
    let big = std::fs::File::create(root.path().join("huge.bin")).unwrap();
    big.set_len(1 << 30).unwrap(); // sparse: no disk used
    std::fs::write(root.path().join("small.txt"), b"small").unwrap();
    for model in ["event", "threads"] {
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(b"huge.bin\n").unwrap();
        let mut head = [0u8; 14];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"OK 1073741824\n", "{model}");
        let (mut received, mut chunk, mut peak_rss) = (0u64, vec![0u8; 1 << 20], 0);
        while received < 1 << 30 {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "{model}: closed after {received} bytes");
            assert!(chunk[..n].iter().all(|&b| b == 0), "{model}: a sparse file reads as zeros");
            received += n as u64;
            if received % (256 << 20) < n as u64 {
                // Mid-transfer: another client is served, and memory stays flat.
                assert_eq!(server.get("small.txt").body(), b"small", "{model}");
                peak_rss = peak_rss.max(rss_kib(server.pid()));
            }
        }
        assert_eq!(received, 1 << 30, "{model}");
        assert!(peak_rss < 64 * 1024, "{model}: RSS reached {peak_rss} KiB while streaming 1 GiB");
    }
}

#[test]
fn random_bytes_on_many_connections_leave_the_server_serving() {
    // A deterministic generator: the same garbage every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (model, workers) in [("event", "8"), ("select", ""), ("pool", "8")] {
        let root = fixtures();
        let mut args = vec!["--model", model, "--root", root.to_str().unwrap()];
        if !workers.is_empty() {
            args.extend(["--workers", workers]); // select has one loop and takes no --workers
        }
        let server = Server::start(&args);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let garbage: Vec<Vec<u8>> = (0..25)
                    .map(|_| {
                        let len = (next() % 3000) as usize;
                        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                        if next() % 2 == 0 {
                            bytes.splice(0..0, b"GET /".iter().copied()); // half of it looks like HTTP
                        }
                        bytes
                    })
                    .collect();
                let addr = server.addr;
                scope.spawn(move || {
                    for bytes in garbage {
                        let Ok(mut stream) = std::net::TcpStream::connect(addr) else { continue };
                        let _ = stream.write_all(&bytes);
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
                    }
                });
            }
        });
        assert_eq!(server.get("tiny.txt").body(), b"hi\n", "{model}: still serving after 200 garbage connections");
        assert!(!server.log().contains("panicked"), "{model}: {}", server.log());
    }
}

#[test]
fn a_client_that_sends_and_hangs_up_at_once_is_closed_promptly() {
    // The event loop reads files inline: a slow read blocks it, and the
    // clients that send a request and hang up meanwhile all arrive, data
    // and end-of-stream together, before the loop reads again. A short
    // read must not be taken to mean "nothing more": the hang-up is queued
    // behind the data and no further event will announce it.
    let server = Server::start(&[
        "--model",
        "event",
        "--root",
        fixtures().to_str().unwrap(),
        "--cache-size",
        "0",
        "--read-delay-ms",
        "300",
    ]);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).unwrap().count();
    let baseline = fds();
    // Connected and registered with epoll first, idle ...
    let mut quitters: Vec<_> = (0..20).map(|_| std::net::TcpStream::connect(server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut slow = server.connect();
    slow.send(b"tiny.txt\n"); // ... then the loop sleeps 300 ms ...
    std::thread::sleep(Duration::from_millis(50));
    for mut stream in quitters.drain(..) {
        stream.write_all(b"test.t").unwrap(); // ... while each sends half a request and hangs up.
    }
    assert_eq!(slow.read_reply().body(), b"hi\n");
    drop(slow);
    // Well before the 15 s idle timeout, every one of them is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while fds() > baseline {
        assert!(std::time::Instant::now() < deadline, "{} fds open, {baseline} before", fds());
        std::thread::sleep(Duration::from_millis(20));
    }
}
