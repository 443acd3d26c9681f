//! Stage 2, with threads: a fixed pool, the Rust book's final chapter as a
//! server model.
//!
//! **What it teaches.** `threads` creates a thread per connection, without
//! bound. Here `--workers N` workers (default: one per core) are started
//! once and take connections from a queue ([`ThreadPool`]), so thread
//! creation is paid at start-up and memory is bounded. The queue is bounded
//! too: connections queued or being served count against `--max-conns`,
//! and past it a client gets `ERR 503` rather than an ever longer wait.
//! The catch is the one every blocking design has: a worker is tied up for
//! as long as its client stays connected, so N keep-alive clients occupy
//! the whole pool and the next one waits in the queue.
//!
//! **How it waits.** Workers block in `read`; the main thread in `accept`.
//! **Where blocking work runs.** On the worker serving the connection.
//!
//! ```text
//! server --model pool --workers 8 --root fixtures
//! ```

use std::sync::Arc;

use crate::blocking::StoppableAcceptor;
use crate::error::ServerError;
use crate::server::Server;
use crate::thread_pool::ThreadPool;

/// Serves connections on a fixed pool of threads until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let pool = ThreadPool::fixed("conn", server.workers).map_err(ServerError::io("cannot start the thread pool"))?;
    let acceptor = StoppableAcceptor::install(&server)?;
    server.announce()?;
    // wait: poll(2) until a client knocks (false once a stop begins).
    while acceptor.wait() {
        // accept: take it; queued ones count against --max-conns (past it: 503).
        let Some(connection) = acceptor.accept(server.max_open_conns) else { continue };
        // dispatch: queue the connection for the next free worker.
        let (service, limits) = (Arc::clone(&server.service), server.limits);
        pool.execute(move || connection.serve(&service, limits));
    }
    // stop: the live connections finish their responses, within a grace period.
    acceptor.wait_until_idle();
    Ok(())
}
