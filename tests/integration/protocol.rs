//! The line protocol, on every model: framing, errors, pipelining, dribbling.

use crate::support::{fixtures, Reply, Server, MODELS};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(path)).unwrap()
}

#[test]
fn files_are_served_byte_exact_and_missing_ones_are_404() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut conn = server.connect();
        for path in ["test.txt", "./test.txt", "data/1k.bin", "data/64k.bin", "data/1m.txt", "docs/nested/deep.txt"] {
            let expected = fixture(path);
            assert_eq!(conn.get(path.as_bytes()).body(), expected, "{model}: {path}");
        }
        assert_eq!(conn.get(b"no/such/file"), Reply::Err(404), "{model}");
        // A refusal that does not close: the connection keeps serving.
        assert_eq!(conn.get(b"tiny.txt").body(), fixture("tiny.txt"), "{model}");
    }
}

#[test]
fn the_time_service_writes_rfc3339_utc_and_closes() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--service", "time"]);
        let text = String::from_utf8(server.connect().read_to_end()).unwrap();
        let line = text.strip_suffix('\n').unwrap_or_else(|| panic!("{model}: {text:?} lacks a newline"));
        // e.g. 2026-11-26T10:11:12Z
        assert_eq!(line.len(), 20, "{model}: {line:?}");
        assert!(line.ends_with('Z') && line.as_bytes()[10] == b'T', "{model}: {line:?}");
        assert!(line[..4].parse::<u32>().unwrap() >= 2024, "{model}: {line:?}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut conn = server.connect();
        conn.send(b"test.txt\ntiny.txt\r\nmissing\ndata/1k.bin\n");
        assert_eq!(conn.read_reply().body(), fixture("test.txt"), "{model}");
        assert_eq!(conn.read_reply().body(), fixture("tiny.txt"), "{model}");
        assert_eq!(conn.read_reply(), Reply::Err(404), "{model}");
        assert_eq!(conn.read_reply().body(), fixture("data/1k.bin"), "{model}");
    }
}

#[test]
fn a_request_dribbled_one_byte_at_a_time_is_served() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut conn = server.connect();
        for &byte in b"docs/nested/deep.txt\n" {
            conn.send(&[byte]);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(conn.read_reply().body(), fixture("docs/nested/deep.txt"), "{model}");
    }
}

#[test]
fn an_overlong_line_is_414_then_closed_and_an_empty_one_400() {
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut conn = server.connect();
        conn.send(&vec![b'a'; 5000]);
        assert_eq!(conn.read_reply(), Reply::Err(414), "{model}");
        assert!(conn.is_closed_by_server(), "{model}: 414 closes");

        let mut conn = server.connect();
        assert_eq!(conn.get(b""), Reply::Err(400), "{model}");
        assert!(conn.is_closed_by_server(), "{model}: 400 closes");
        assert_eq!(server.get("tiny.txt").body(), fixture("tiny.txt"), "{model}: still serving");
    }
}
