//! `tokio --runtime current-thread-per-core`: the flavour the model tables
//! do not run (they take the default, one multi-thread runtime). N runtimes
//! on N `SO_REUSEPORT` listeners must still behave as one server: every
//! file served, a stalled client blocks no one (one cache that one `SIGHUP`
//! clears: `processes.rs`, with `event`'s loops), `--max-conns` across them, a `SIGTERM` that drains them all,
//! and no fd left behind.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::support::{
    assert_a_hundred_clients_are_served, assert_fds_come_back, fixtures, open_fds, Reply, Server, IO_TIMEOUT,
};

/// More runtimes than cores, so that connections land on several of them.
const PER_CORE: [&str; 6] = ["--model", "tokio", "--runtime", "current-thread-per-core", "--workers", "4"];

fn start(root: &str, extra: &[&str]) -> Server {
    let mut args = PER_CORE.to_vec();
    args.extend(["--root", root]);
    args.extend(extra);
    Server::start(&args)
}

#[test]
fn every_runtime_serves_and_a_stalled_client_blocks_none() {
    let server = start(fixtures().to_str().unwrap(), &[]);
    let mut stalled: Vec<_> = (0..8).map(|_| server.connect()).collect();
    for conn in &mut stalled {
        conn.send(b"test.t"); // half a request on (likely) every runtime, then silence
    }
    assert_a_hundred_clients_are_served(&server, "tokio per core");
    for conn in &mut stalled {
        conn.send(b"xt\n");
        assert!(conn.read_reply().body().starts_with(b"Hello"));
    }
}

#[test]
fn max_conns_holds_across_the_runtimes() {
    let server = start(fixtures().to_str().unwrap(), &["--max-conns", "2"]);
    let mut held: Vec<_> = (0..2).map(|_| server.connect()).collect();
    for conn in &mut held {
        assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n");
    }
    // Whichever runtime the kernel picks, the third connection is one too many.
    for _ in 0..8 {
        assert_eq!(server.connect().get(b"tiny.txt"), Reply::Err(503));
    }
    held.pop();
    let deadline = Instant::now() + IO_TIMEOUT;
    while server.connect().get(b"tiny.txt") != Reply::Ok(b"hi\n".to_vec()) {
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_every_runtime_then_exits_0() {
    let server = start(fixtures().to_str().unwrap(), &["--read-delay-ms", "400"]);
    let mut conns: Vec<_> = (0..8).map(|_| server.connect()).collect();
    for conn in &mut conns {
        conn.send(b"test.txt\n");
    }
    std::thread::sleep(Duration::from_millis(100)); // the reads are now in flight
    server.signal(Signal::TERM);
    for conn in &mut conns {
        assert!(conn.read_reply().body().starts_with(b"Hello"), "the in-flight response completes");
        assert!(conn.is_closed_by_server(), "then the connection closes");
    }
    assert_eq!(server.wait_exit(), Some(0));
}

#[test]
fn an_idle_server_stops_at_once() {
    let server = start(fixtures().to_str().unwrap(), &[]);
    assert_eq!(server.get("tiny.txt").body(), b"hi\n");
    let asked = Instant::now();
    server.signal(Signal::TERM);
    assert_eq!(server.wait_exit(), Some(0));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?} to stop with nothing in flight");
}

#[test]
fn clients_that_hang_up_leave_no_fd_behind() {
    let server = start(fixtures().to_str().unwrap(), &[]);
    assert_eq!(server.get("tiny.txt").body(), b"hi\n");
    let baseline = open_fds(server.pid());
    for garbage in
        [&b"\xff\xfe\x00garbage"[..], b"GET /", b"test.txt", b"GET / HTTP/1.1\r\nX: y", b"data/64k.bin\n"].repeat(20)
    {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let _ = stream.write_all(garbage);
    }
    assert_fds_come_back(&server, baseline, "tokio per core");
    assert_eq!(server.get("tiny.txt").body(), b"hi\n", "still serving");
}
