//! Real signals: SIGHUP clears the cache (the documented contract), SIGTERM
//! stops gracefully with exit status 0.

use rustix::process::Signal;

use crate::support::{Server, MODELS};

/// The cache contract, for one model, on one connection: content is
/// cached until SIGHUP.
fn cached_until_sighup(model: &str) {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("page.txt");
    std::fs::write(&file, b"old content").unwrap();
    let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
    let mut conn = server.connect();
    assert_eq!(conn.get(b"page.txt").body(), b"old content", "{model}");
    std::fs::write(&file, b"new content, longer").unwrap();
    assert_eq!(conn.get(b"page.txt").body(), b"old content", "{model}: served from the cache");
    server.signal(Signal::HUP);
    server.wait_for_log("cache cleared: 1 files, 11 bytes", 1);
    assert_eq!(conn.get(b"page.txt").body(), b"new content, longer", "{model}: fresh after SIGHUP");
}

#[test]
fn sighup_clears_the_cache_of_every_model() {
    for model in MODELS.iter() {
        cached_until_sighup(model);
    }
}

#[test]
fn the_cache_is_shared_across_connections_except_under_fork() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("page.txt");
    for model in MODELS.iter().filter(|&&m| m != "prefork") {
        std::fs::write(&file, b"first").unwrap();
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        assert_eq!(server.get("page.txt").body(), b"first", "{model}");
        std::fs::write(&file, b"second").unwrap();
        // fork: each connection's process has its own copy of the cache.
        // (prefork is left out: two connections may reach different workers.)
        let expected: &[u8] = if *model == "fork" { b"second" } else { b"first" };
        assert_eq!(server.get("page.txt").body(), expected, "{model}");
    }
}

#[test]
fn with_a_zero_cache_every_read_is_fresh() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("page.txt");
    for model in MODELS.iter() {
        std::fs::write(&file, b"first").unwrap();
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap(), "--cache-size", "0"]);
        assert_eq!(server.get("page.txt").body(), b"first", "{model}");
        std::fs::write(&file, b"second").unwrap();
        assert_eq!(server.get("page.txt").body(), b"second", "{model}");
        server.signal(Signal::HUP);
        server.wait_for_log("cache cleared: 0 files, 0 bytes", 1);
    }
}

#[test]
fn sigterm_exits_0_and_idle_servers_stop_at_once() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", crate::support::fixtures().to_str().unwrap()]);
        assert_eq!(server.get("tiny.txt").body(), b"hi\n");
        server.signal(Signal::TERM);
        assert_eq!(server.wait_exit(), Some(0), "{model}");
    }
}

#[test]
fn sigint_finishes_the_response_in_flight_then_exits_0() {
    for model in MODELS.iter() {
        let server = Server::start(&[
            "--model",
            model,
            "--root",
            crate::support::fixtures().to_str().unwrap(),
            "--read-delay-ms",
            "400",
        ]);
        let mut conn = server.connect();
        conn.send(b"test.txt\n");
        std::thread::sleep(std::time::Duration::from_millis(100)); // the read is now in flight
        server.signal(Signal::INT);
        assert!(conn.read_reply().body().starts_with(b"Hello"), "{model}: the in-flight response completes");
        assert!(conn.is_closed_by_server(), "{model}: then the connection closes");
        assert_eq!(server.wait_exit(), Some(0), "{model}");
    }
}

#[test]
fn a_sighup_right_after_the_listening_line_is_handled_not_fatal() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", crate::support::fixtures().to_str().unwrap()]);
        server.signal(Signal::HUP);
        server.wait_for_log("cache cleared: 0 files, 0 bytes", 1);
        assert_eq!(server.get("tiny.txt").body(), b"hi\n", "{model}: still alive and serving");
    }
}

#[test]
fn a_closed_stderr_never_crashes_or_hangs_the_server() {
    use std::io::BufRead;
    for model in MODELS.iter() {
        // Tied to this thread: a failed assertion leaves no server behind.
        let mut child = crate::support::die_with_parent(&mut std::process::Command::new(env!("CARGO_BIN_EXE_server")))
            .args(["--port", "0", "--model", model, "--root", crate::support::fixtures().to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap().parse().unwrap();
        drop(child.stderr.take()); // nobody reads the log any more: writes get EPIPE
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, Signal::HUP).unwrap(); // logs "cache cleared"
        for _ in 0..3 {
            assert_eq!(crate::support::LineClient::connect(addr).get(b"tiny.txt").body(), b"hi\n", "{model}");
        }
        rustix::process::kill_process(pid, Signal::TERM).unwrap(); // logs "stopping"
        let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{model}: did not stop");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "{model}");
    }
}
