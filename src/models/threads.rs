//! Stage 2, with threads: a thread per connection, concurrency without an
//! event loop.
//!
//! **What it teaches.** Keep the iterative server's blocking, top-to-bottom
//! code, and run each connection on its own thread: the kernel scheduler
//! does the interleaving an event loop does by hand. Threads share one
//! address space, so they share one cache (behind a mutex). The costs are a
//! thread per client (a stack reserved per thread, ~8 MiB of address
//! space, and a few pages actually used), a `clone` per connection, and
//! context switches; and nothing stops a flood from creating thousands of
//! threads except `--max-conns` (past it: `ERR 503`).
//!
//! **How it waits.** Each thread blocks in `read`/`write`; the main thread
//! blocks in `accept`. **Where blocking work runs.** In the connection's
//! thread.
//!
//! ```text
//! server --model threads --root fixtures
//! ```

use std::sync::Arc;

use crate::blocking::StoppableAcceptor;
use crate::error::ServerError;
use crate::log::always;
use crate::server::Server;

/// Serves each connection on a new thread until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let acceptor = StoppableAcceptor::install(&server)?;
    server.announce()?;
    // wait: poll(2) until a client knocks (false once a stop begins).
    while acceptor.wait() {
        // accept: take it, admitted under --max-conns (past it: 503).
        let Some(connection) = acceptor.accept(server.max_open_conns) else { continue };
        // dispatch: the new thread serves the connection to its end.
        let (service, limits) = (Arc::clone(&server.service), server.limits);
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || connection.serve(&service, limits));
        if let Err(err) = spawned {
            // Out of threads: the connection is closed unserved.
            always!("cannot start a thread for a connection: {err}");
        }
    }
    // stop: the live connections finish their responses, within a grace period.
    acceptor.wait_until_idle();
    Ok(())
}
