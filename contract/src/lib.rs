//! The contract between the kit's `server` and its `client`, stated once:
//! what one program may rely on about the other without linking to it. The
//! protocols themselves are specified in `docs/assignment.md`; this crate
//! holds the words both programs spell, so that the client (and its
//! grader) build without the server.

#![deny(missing_docs)]

use std::net::SocketAddr;

/// The first line a server prints on stdout, before anything else:
/// `listening on <ip>:<port>` (the port it bound, even after `--port 0`).
pub const LISTENING: &str = "listening on";

/// The listening line for `addr`, without its newline.
pub fn listening_line(addr: SocketAddr) -> String {
    format!("{LISTENING} {addr}")
}

/// The address a listening line announces; `None` if `line` is not one.
/// Surrounding whitespace (the newline) is ignored.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(LISTENING)?.strip_prefix(' ')?.trim().parse().ok()
}

/// The line protocol's answer to a served path: `OK <size>\n`, then the bytes.
pub const OK: &str = "OK";

/// The line protocol's refusal: `ERR <code> <reason>\n` (HTTP's status codes).
pub const ERR: &str = "ERR";

/// The server's models (`--model NAME`), in the order of the stages.
pub const MODELS: [&str; 13] = [
    "iterative",
    "fork",
    "prefork",
    "threads",
    "pool",
    "select",
    "poll",
    "event",
    "event-async",
    "event-aio",
    "uring",
    "tokio",
    "uring-net",
];

/// The models that serve one client at a time (stage 1): a measurement of
/// concurrency leaves them out.
pub const ONE_AT_A_TIME: [&str; 1] = ["iterative"];

/// The models whose file reads leave the thread that waits for sockets
/// free (stage 4, and tokio's blocking pool): a slow read must not delay
/// other clients.
pub const ASYNCHRONOUS_READS: [&str; 5] = ["event-async", "event-aio", "uring", "tokio", "uring-net"];

/// The server's default `--readers`: the most reader threads an
/// asynchronous model starts.
pub const DEFAULT_READERS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_line_reads_back_as_its_address() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(parse_listening_line(&format!("{}\n", listening_line(addr))), Some(addr));
        assert_eq!(parse_listening_line("listening on [::1]:7"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(parse_listening_line("listening on port 4242"), None);
        assert_eq!(parse_listening_line("listening on127.0.0.1:1"), None);
    }
}
