//! A thread per connection: concurrency without an event loop.
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

use crate::blocking::{accept_until_stopped, LiveConnections};
use crate::error::ServerError;
use crate::models::Server;
use crate::refusal::Refusal;

/// Serves each connection on a new thread until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let live = Arc::new(LiveConnections::default());
    accept_until_stopped(
        &server,
        &live,
        || server.announce(),
        |stream| {
            let Some(ticket) = live.admit(stream, server.max_conns, &server.service) else { return };
            let (live, service, limits) = (Arc::clone(&live), Arc::clone(&server.service), server.limits);
            let spawned =
                std::thread::Builder::new().name("conn".into()).spawn(move || live.serve(ticket, &service, limits));
            if let Err(err) = spawned {
                // Out of threads: the ticket went down with the closure; say so.
                crate::log::info!("cannot start a thread: {err} ({:?})", Refusal::Overloaded);
            }
        },
    )?;
    live.wait_until_idle();
    Ok(())
}
