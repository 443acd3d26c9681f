//! The fast path on purpose: a server that answers each request before the
//! client reads again. The load generator once started the next request
//! from inside the handler of the last response, so each response that was
//! already waiting added a call chain to the stack; tens of thousands of
//! them in a row overflowed it (`./benchmark.sh` against `threads`).
//!
//! Here the stub server and the client share one CPU: the client's send
//! wakes the stub, which (a waiting reader woken on its own core) writes
//! the answer before the client gets back to read it, request after
//! request. The test fails by aborting (stack overflow) or by a wrong count.

// Pinning to one CPU (sched_getcpu) is Linux's; the recursion it
// provokes is the same everywhere.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use client::grade::wire::{Conn, Reply};

/// Requests on the one connection: far more frames than a thread's stack
/// holds if each answered request nested a call chain.
const REQUESTS: usize = 50_000;
const BODY: &[u8] = b"hello";

/// Runs this thread (and the threads and processes it starts from now on,
/// which inherit the mask) on the one CPU it is on now.
fn pin_to_one_cpu() {
    let mut one = rustix::thread::CpuSet::new();
    one.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &one).expect("sched_setaffinity");
}

/// A line-protocol stub: one connection, `OK 5\nhello` written the moment
/// each request line arrives; returns how many it answered. Connections
/// that close without a request (`client bench` first checks that a server
/// accepts) are skipped.
fn stub_server() -> (SocketAddr, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answering = std::thread::spawn(move || {
        let (mut reader, mut writer, mut line) = loop {
            let (stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            if matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                break (reader, writer, line);
            }
        };
        let mut answered = 0;
        loop {
            let mut reply = format!("OK {}\n", BODY.len()).into_bytes();
            reply.extend_from_slice(BODY);
            if writer.write_all(&reply).is_err() {
                break;
            }
            answered += 1;
            line.clear();
            if !matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                break;
            }
        }
        answered
    });
    (addr, answering)
}

#[test]
fn client_bench_survives_tens_of_thousands_of_answers_waiting_before_its_reads() {
    pin_to_one_cpu();
    let (addr, stub) = stub_server();
    let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
    command.args(["bench", "--conns", "1", "--threads", "1", "--path", "f", "--json", "--timeout", "60"]);
    command.args(["--requests", &REQUESTS.to_string(), "--addr", &addr.to_string()]);
    let mut bench = client::child::die_with_parent(&mut command).stdout(Stdio::piped()).spawn().unwrap();
    // The least priority: the stub, woken by a request, takes the CPU at
    // once (wakeup preemption) and answers before the client reads.
    let pid = rustix::process::Pid::from_child(&bench);
    rustix::process::setpriority_process(Some(pid), 19).expect("setpriority");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = bench.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = bench.kill();
            let _ = bench.wait();
            panic!("client bench did not finish {REQUESTS} requests in 240 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut bench.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "client bench failed ({status}): {out}");
    assert!(out.contains(&format!("\"requests\":{REQUESTS},\"errors\":0,")), "{out}");
    assert_eq!(stub.join().unwrap(), REQUESTS);
}

#[test]
fn the_graders_exchanges_survive_tens_of_thousands_of_answers_waiting_before_its_reads() {
    pin_to_one_cpu();
    let (addr, stub) = stub_server();
    // This thread (the client) at the least priority, the stub started
    // before it at the usual one: the stub answers before the client reads.
    rustix::process::setpriority_process(None, 19).expect("setpriority");
    let mut conn = Conn::open(addr, Duration::from_secs(240)).unwrap();
    for i in 0..REQUESTS {
        assert_eq!(conn.request(b"f").unwrap(), Reply::Ok(BODY.to_vec()), "request {i}");
    }
    drop(conn);
    assert_eq!(stub.join().unwrap(), REQUESTS);
}
