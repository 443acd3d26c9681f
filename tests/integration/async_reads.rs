//! The asynchronous models: a slow read never blocks the loop, concurrent
//! misses are merged, and the cache survives SIGHUP storms intact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::process::Signal;

use crate::support::{fixtures, Server, ASYNC_MODELS};

/// Nine small files, `f0` .. `f8`, each with distinct content.
fn nine_files() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for i in 0..9 {
        std::fs::write(root.path().join(format!("f{i}")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    root
}

#[test]
fn a_cached_request_is_answered_while_slow_reads_are_pending() {
    let root = nine_files();
    for model in ASYNC_MODELS.iter() {
        let server =
            Server::start(&["--model", model, "--root", root.path().to_str().unwrap(), "--read-delay-ms", "300"]);
        assert_eq!(server.get("f0").body(), b"file 0\n", "{model}: warms the cache");
        // Eight clients each start an uncached read that takes 300 ms ...
        let mut slow: Vec<_> = (1..9)
            .map(|i| {
                let mut conn = server.connect();
                conn.send(format!("f{i}\n").as_bytes());
                conn
            })
            .collect();
        // ... and meanwhile the cached file comes back, before any of them.
        assert_eq!(server.get("f0").body(), b"file 0\n", "{model}");
        for conn in &mut slow {
            assert!(!conn.has_data(), "{model}: a slow read finished before the cached answer");
        }
        for (i, conn) in slow.iter_mut().enumerate() {
            let i = i + 1;
            assert_eq!(conn.read_reply().body(), format!("file {i}\n").repeat(i + 1).into_bytes(), "{model}");
        }
    }
}

#[test]
fn concurrent_misses_on_one_file_are_all_answered_correctly() {
    for model in ASYNC_MODELS.iter() {
        let server =
            Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--read-delay-ms", "200"]);
        let expected = std::fs::read(fixtures().join("data/64k.bin")).unwrap();
        let mut conns: Vec<_> = (0..20).map(|_| server.connect()).collect();
        for conn in &mut conns {
            conn.send(b"data/64k.bin\n");
        }
        for conn in &mut conns {
            assert_eq!(conn.read_reply().body(), expected, "{model}");
        }
        // That they shared one read is checked by backend's unit tests.
        server.signal(Signal::HUP);
        server.wait_for_log("cache cleared: 1 files, 65536 bytes", 1);
    }
}

#[test]
fn fifty_sighups_during_concurrent_requests_never_corrupt_a_response() {
    let files = ["test.txt", "data/1k.bin", "data/64k.bin", "data/1m.txt", "docs/readme.md"];
    let expected: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(fixtures().join(f)).unwrap()).collect();
    for model in ["event", "event-async", "event-aio", "uring", "select", "tokio"] {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap(), "--quiet"]);
        let clearing = AtomicBool::new(true);
        std::thread::scope(|scope| {
            for worker in 0..8 {
                let (server, expected, clearing) = (&server, &expected, &clearing);
                scope.spawn(move || {
                    let mut conn = server.connect();
                    // Until the 50 clears are done (bounded in count too).
                    for round in 0..20_000 {
                        if !clearing.load(Ordering::SeqCst) {
                            break;
                        }
                        let which = (worker + round) % files.len();
                        assert_eq!(conn.get(files[which].as_bytes()).body(), expected[which], "{model}");
                    }
                });
            }
            // Standard signals do not queue: wait for each clear before the
            // next SIGHUP, so all 50 really happen during the run.
            for sent in 1..=50 {
                server.signal(Signal::HUP);
                server.wait_for_log("cache cleared", sent);
            }
            clearing.store(false, Ordering::SeqCst);
        });
    }
}

#[test]
fn the_storage_delay_applies_to_streamed_files_too() {
    // With --cache-size 0 every file is streamed; the simulated storage must
    // still be slow: 100 ms into a 400 ms delay, nothing may have arrived.
    let root = nine_files();
    for model in ASYNC_MODELS.iter() {
        let slow = Server::start(&[
            "--model",
            model,
            "--root",
            root.path().to_str().unwrap(),
            "--cache-size",
            "0",
            "--read-delay-ms",
            "400",
        ]);
        let mut pending = slow.connect();
        pending.send(b"f1\n");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!pending.has_data(), "{model}: a streamed miss skipped the storage delay");
        assert_eq!(pending.read_reply().body(), b"file 1\nfile 1\n", "{model}");
    }
}

#[test]
fn a_read_started_before_a_sighup_does_not_refill_the_cache_with_old_content() {
    // The trap of chapter "async-await": a miss reads the file it opened;
    // the file is replaced and SIGHUP clears the cache while that read is
    // still waiting on storage. The read's answer is the old content (it is
    // the old file), but it must not go into the cleared cache.
    for model in ASYNC_MODELS.iter() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("f");
        std::fs::write(&path, b"old\n").unwrap();
        let server =
            Server::start(&["--model", model, "--root", root.path().to_str().unwrap(), "--read-delay-ms", "1000"]);
        let mut pending = server.connect();
        pending.send(b"f\n");
        std::thread::sleep(Duration::from_millis(100)); // opened, now waiting on storage
        std::fs::write(root.path().join("f.new"), b"new\n").unwrap();
        std::fs::rename(root.path().join("f.new"), &path).unwrap();
        server.signal(Signal::HUP);
        server.wait_for_log("cache cleared", 1);
        assert!(!pending.has_data(), "{model}: the read finished before the clear; the test proves nothing");
        assert_eq!(
            pending.read_reply().body(),
            b"old\n",
            "{model}: the read in flight answers from the file it opened"
        );
        assert_eq!(server.get("f").body(), b"new\n", "{model}: a read started before SIGHUP refilled the cache");
    }
}
