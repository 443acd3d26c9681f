//! Stage 1: the iterative server, one client at a time.
//!
//! **What it teaches.** The simplest correct server: accept a connection,
//! serve it to the end, accept the next. Every call blocks, so the code reads
//! top to bottom. Its cost is obvious once two clients arrive together: the
//! second waits, connected but unserved, until the first is done. Try
//! `client 1 & client 2 & client 3 &` against `--service time`: fine. Now
//! against `--service file --read-delay-ms 500` with three paths each: the
//! waits add up.
//!
//! **How it waits.** Blocking `accept`, then blocking `read`/`write` on one
//! socket. **Where blocking work runs.** Inline, in the only thread.
//! **Cost.** One thread, one connection's memory; clients queue in the
//! kernel's listen backlog.
//!
//! ```text
//! server --model iterative --root fixtures   # then: client 0 ./test.txt
//! ```

use std::sync::Arc;

use crate::blocking::{accept_until_stopped, LiveConnections};
use crate::error::ServerError;
use crate::models::Server;

/// Serves one connection at a time until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let live = Arc::new(LiveConnections::default());
    let Server { service, limits, .. } = &server;
    accept_until_stopped(
        &server,
        &live,
        || server.announce(),
        |stream| {
            // One at a time, served right here.
            live.serve_here(stream, service, *limits);
        },
    )
}
