//! The process and thread models: no child outlives the server, prefork
//! replaces dead workers, several event loops share one port and cache.

use rustix::process::Signal;

use crate::support::{fixtures, Server};

/// The server's child processes, from /proc.
fn children(pid: i32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn is_alive(pid: i32) -> bool {
    // A reaped process has no /proc entry; a zombie says so in its status.
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| !status.contains("State:\tZ"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn sigterm_leaves_no_child_behind() {
    for model in ["fork", "prefork"] {
        let root = fixtures();
        let mut args = vec!["--model", model, "--root", root.to_str().unwrap()];
        if model == "prefork" {
            args.extend(["--workers", "3"]); // fork forks per connection and takes no --workers
        }
        let server = Server::start(&args);
        // A connection in progress, so fork has a child too.
        let mut conn = server.connect();
        assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n");
        let pid = server.pid();
        wait_until("the children exist", || !children(pid).is_empty());
        let kids = children(pid);
        server.signal(Signal::TERM);
        assert!(conn.is_closed_by_server(), "{model}: the idle connection is closed");
        assert_eq!(server.wait_exit(), Some(0), "{model}");
        for kid in kids {
            wait_until("the child is gone", || !is_alive(kid));
        }
    }
}

#[test]
fn idle_blocking_models_stop_at_once_not_after_the_grace_period() {
    // A blocked accept() must hear SIGTERM. Waking it by connecting to
    // ourselves failed for prefork: a sibling worker took the connection,
    // and the sleeper slept on until the 5 s grace period killed it.
    for (model, workers) in [("prefork", "4"), ("iterative", ""), ("threads", ""), ("pool", "4")] {
        let root = fixtures();
        let mut args = vec!["--model", model, "--root", root.to_str().unwrap()];
        if !workers.is_empty() {
            args.extend(["--workers", workers]); // iterative and threads take no --workers
        }
        let server = Server::start(&args);
        assert_eq!(server.connect().get(b"tiny.txt").body(), b"hi\n");
        let asked = std::time::Instant::now();
        server.signal(Signal::TERM);
        assert_eq!(server.wait_exit(), Some(0), "{model}");
        let took = asked.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "{model} took {took:?} to stop with nothing in flight");
    }
}

#[test]
fn children_die_with_a_killed_parent() {
    for model in ["fork", "prefork"] {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut conn = server.connect();
        assert_eq!(conn.get(b"tiny.txt").body(), b"hi\n");
        wait_until("the children exist", || !children(server.pid()).is_empty());
        let kids = children(server.pid());
        server.signal(Signal::KILL);
        for kid in kids {
            wait_until("the orphan is gone", || !is_alive(kid));
        }
    }
}

#[test]
fn prefork_replaces_a_worker_that_dies() {
    let server = Server::start(&["--model", "prefork", "--workers", "2", "--root", fixtures().to_str().unwrap()]);
    wait_until("two workers", || children(server.pid()).len() == 2);
    let victim = children(server.pid())[0];
    rustix::process::kill_process(rustix::process::Pid::from_raw(victim).unwrap(), Signal::KILL).unwrap();
    wait_until("a replacement", || {
        let now = children(server.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    server.wait_for_log(&format!("worker {victim} exited; started worker"), 1);
    for _ in 0..10 {
        assert_eq!(server.get("tiny.txt").body(), b"hi\n");
    }
}

#[test]
fn several_event_loops_or_runtimes_share_one_port_and_one_cache() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("page.txt");
    // tokio's runtimes per core share the port the way event's loops do.
    let tokio_per_core = "tokio --runtime current-thread-per-core";
    for model in ["event", "event-async", "event-aio", "uring", tokio_per_core] {
        std::fs::write(&file, b"cached").unwrap();
        let mut args: Vec<&str> = model.split(' ').collect();
        args.insert(0, "--model");
        args.extend(["--workers", "3", "--root", root.path().to_str().unwrap()]);
        let server = Server::start(&args);
        assert_eq!(server.get("page.txt").body(), b"cached", "{model}");
        std::fs::write(&file, b"changed").unwrap();
        // Many connections, spread by the kernel over the three loops: all
        // see the one shared cache.
        for _ in 0..30 {
            assert_eq!(server.get("page.txt").body(), b"cached", "{model}");
        }
        server.signal(Signal::HUP);
        server.wait_for_log("cache cleared: 1 files, 6 bytes", 1);
        for _ in 0..30 {
            assert_eq!(server.get("page.txt").body(), b"changed", "{model}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(server.log().matches("cache cleared").count(), 1, "{model}: one clear per SIGHUP, not one per loop");
        server.signal(Signal::TERM);
        assert_eq!(server.wait_exit(), Some(0), "{model}");
    }
}

#[test]
fn fib_answers_known_values_and_refuses_bad_input() {
    let models: &[&str] = if cfg!(target_os = "linux") {
        &["iterative", "event", "event-async", "uring", "pool", "uring-net"]
    } else {
        &["iterative", "event", "event-async", "pool"]
    };
    for &model in models {
        let server = Server::start(&["--model", model, "--service", "fib"]);
        let mut conn = server.connect();
        for (n, expected) in [("0", "0\n"), ("1", "1\n"), ("10", "55\n"), ("30", "832040\n")] {
            assert_eq!(conn.get(n.as_bytes()).body(), expected.as_bytes(), "{model}: fib({n})");
        }
        drop(conn); // iterative serves one connection at a time
        for bad in ["41", "-1", "x", "1.5", "99999999999999999999"] {
            assert_eq!(server.connect().get(bad.as_bytes()), crate::support::Reply::Err(400), "{model}: {bad}");
        }
    }
}

/// The asynchronous models compute off the loop: while one client's fib(40)
/// (seconds of CPU) is being computed, another client's fib(1) is answered.
#[test]
fn a_long_fib_blocks_no_other_client_in_the_asynchronous_models() {
    let models: &[&str] = if cfg!(target_os = "linux") {
        &["event-async", "uring", "uring-net", "tokio"]
    } else {
        &["event-async", "tokio"]
    };
    for &model in models {
        let server = Server::start(&["--model", model, "--service", "fib"]);
        let mut long = server.connect();
        long.send(b"40\n");
        std::thread::sleep(std::time::Duration::from_millis(100)); // let it reach a reader thread
        assert_eq!(server.connect().get(b"1").body(), b"1\n", "{model}");
        assert!(!long.has_data(), "{model}: fib(1) waited for fib(40): the loop computed it itself");
        assert_eq!(long.read_reply().body(), b"102334155\n", "{model}");
    }
}
