//! What distinguishes the models: concurrency, limits, start-up errors.

use std::process::Command;
use std::time::Duration;

use crate::support::{assert_a_hundred_clients_are_served, fixtures, Reply, Server, CONCURRENT_MODELS, MODELS};

#[test]
fn a_hundred_concurrent_clients_are_all_served_correctly() {
    for model in CONCURRENT_MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        assert_a_hundred_clients_are_served(&server, model);
    }
}

#[test]
fn a_stalled_client_does_not_block_the_others() {
    for model in CONCURRENT_MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut stalled = server.connect();
        stalled.send(b"test.t"); // half a request, then silence
        assert_eq!(server.get("tiny.txt").body(), b"hi\n", "{model}");
        stalled.send(b"xt\n");
        assert!(stalled.read_reply().body().starts_with(b"Hello"), "{model}");
    }
}

#[test]
fn the_iterative_model_serves_one_client_at_a_time() {
    let server = Server::start(&["--model", "iterative", "--root", fixtures().to_str().unwrap()]);
    let mut first = server.connect();
    first.send(b"tiny.txt\n");
    assert_eq!(first.read_reply().body(), b"hi\n");
    // The first connection is still open, so a second one waits in the backlog.
    let mut second = server.connect();
    second.send(b"tiny.txt\n");
    second.set_read_timeout(Duration::from_millis(300));
    assert!(second.try_read_reply().is_none(), "served while the first client was still connected");
    drop(first);
    second.set_read_timeout(crate::support::IO_TIMEOUT);
    assert_eq!(second.read_reply().body(), b"hi\n");
}

#[test]
fn select_refuses_fds_past_fd_setsize_and_keeps_serving() {
    let server = Server::start(&["--model", "select", "--root", fixtures().to_str().unwrap()]);
    // The server's own fds (listener, pipes, root, stdio) take a few slots,
    // so 1100 connections must run past FD_SETSIZE = 1024.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..1100 {
        let mut conn = server.connect();
        conn.send(b"tiny.txt\n");
        match conn.read_reply() {
            Reply::Ok(body) => {
                assert_eq!(body, b"hi\n");
                held.push(conn);
            }
            Reply::Err(503) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(held.len() > 1000 && refused > 50, "held {} refused {refused}", held.len());
    drop(held);
    // Fds are free again: a new client is served.
    let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
    loop {
        match server.get("tiny.txt") {
            Reply::Ok(body) => break assert_eq!(body, b"hi\n"),
            other => assert!(std::time::Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn max_conns_refuses_the_extra_connection_with_503() {
    // prefork's limit is its number of workers: an extra client waits.
    for model in CONCURRENT_MODELS.iter().filter(|&&m| m != "prefork") {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--max-conns", "2"]);
        let mut a = server.connect();
        let mut b = server.connect();
        assert_eq!(a.get(b"tiny.txt").body(), b"hi\n");
        assert_eq!(b.get(b"tiny.txt").body(), b"hi\n");
        assert_eq!(server.connect().get(b"tiny.txt"), Reply::Err(503), "{model}");
        drop(a);
        let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
        while server.connect().get(b"tiny.txt") != Reply::Ok(b"hi\n".to_vec()) {
            assert!(std::time::Instant::now() < deadline, "{model}: slot never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn start_up_errors_say_what_to_do() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap()]);
    let port = server.addr.port().to_string();
    let taken = Command::new(env!("CARGO_BIN_EXE_server")).args(["--port", &port]).output().unwrap();
    assert_eq!(taken.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(stderr.contains("address in use") && stderr.contains("--port 0"), "{stderr}");

    let file_root =
        Command::new(env!("CARGO_BIN_EXE_server")).args(["--port", "0", "--root", "Cargo.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&file_root.stderr);
    assert!(!file_root.status.success() && stderr.contains("is not a directory"), "{stderr}");

    let bad_size =
        Command::new(env!("CARGO_BIN_EXE_server")).args(["--port", "0", "--cache-size", "lots"]).output().unwrap();
    assert_eq!(bad_size.status.code(), Some(2), "clap usage error");
}

#[test]
fn every_model_is_tested() {
    let help = Command::new(env!("CARGO_BIN_EXE_server")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for model in MODELS.iter() {
        assert!(help.contains(model), "--help lacks {model}");
    }
}

/// A 503 is followed by the end of the stream, not a reset, even when the
/// client sent more than its request: the server reads and discards what
/// came, and shuts its side down before it closes (a reset could destroy
/// the 503 on its way, on a real network).
#[test]
fn a_refused_connection_ends_with_a_fin_not_a_reset() {
    for model in CONCURRENT_MODELS.iter().filter(|&&m| m != "prefork") {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--max-conns", "1"]);
        let mut held = server.connect();
        assert_eq!(held.get(b"tiny.txt").body(), b"hi\n", "{model}");
        for _ in 0..20 {
            let mut refused = server.connect();
            refused.send(b"tiny.txt\nmore.txt\nand more, unread\n");
            assert_eq!(refused.read_reply(), Reply::Err(503), "{model}");
            let end = refused.what_follows();
            assert!(matches!(end, Ok(0)), "{model}: after the 503: {end:?}, not the end of the stream");
        }
    }
}
