//! Stage 1: the iterative server, one client at a time.
//!
//! **What it teaches.** The simplest correct server: accept a connection,
//! serve it to the end, close it, accept the next. Every call blocks, so the
//! code reads top to bottom. Its cost is obvious once two clients arrive
//! together: the second waits, connected but unserved, until the first is
//! done. Try `client 1 & client 2 & client 3 &` against `--service time`:
//! fine. Now against `--service file --read-delay-ms 500` with three paths
//! each: the waits add up.
//!
//! **How it waits.** In `poll(2)` on the listener and a stop pipe until a
//! client knocks (a blocking `accept` would be simpler, but no signal could
//! end it), then `accept` (which does not block) and blocking
//! `read`/`write` on one socket. **Where blocking work runs.** Inline, in
//! the only thread.
//! **Cost.** One thread, one connection's memory; clients queue in the
//! kernel's listen backlog.
//!
//! The only machinery beside the loop is [`StoppableAcceptor`]: `SIGTERM`
//! must be able to end the wait for a client and a blocked `read`.
//!
//! ```text
//! server --model iterative --root fixtures   # then: client 0 ./test.txt
//! ```

use crate::blocking::StoppableAcceptor;
use crate::error::ServerError;
use crate::server::Server;

/// Serves one connection at a time until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let acceptor = StoppableAcceptor::install(&server)?;
    server.announce()?;
    // wait: poll(2) until a client knocks (false once SIGINT/SIGTERM arrives).
    while acceptor.wait() {
        // accept: take it (None: it was gone, or accepting must pause).
        let Some(connection) = acceptor.accept(1) else { continue };
        // serve: read requests and answer them until the client is done.
        connection.serve(&server.service, server.limits);
        // close: `connection` was consumed; its socket is closed.
    }
    Ok(())
}
