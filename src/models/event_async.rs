//! Stage 4a: the event loop with file reads on a thread pool ("Async I/O").
//!
//! **What it teaches.** The `event` loop stalls every client while one
//! file is read. Here the loop never reads a file: it hands the read to a
//! pool of reader threads and goes straight back to serving everyone
//! else. When a reader finishes it posts the response to a queue and wakes
//! the loop through a [`mio::Waker`] (an eventfd in the epoll set); the loop
//! resumes that connection exactly where it left off. Misses on the same
//! file are merged ([`Coalescing`]), so a burst of requests costs one read.
//! CPU-bound work (fib) goes to the same pool.
//!
//! This is what libuv and Tokio's `fs` do on Linux: regular files are
//! always "ready" to epoll, so true asynchrony needs either threads (here)
//! or a kernel interface (`event-aio`, `uring`).
//!
//! **How it waits.** epoll, for sockets and for the waker.
//! **Where blocking work runs.** On reader threads started as reads arrive
//! and stopped when idle (at most `--readers`, default 512), via
//! [`ThreadPoolReads`]. **Cost.** The reader threads' stacks; per miss a channel
//! send, a wake and a mutex; a cache hit is served in the loop as in `event`.
//!
//! ```text
//! server --model event-async --root fixtures --read-delay-ms 100
//! ```

use crate::backend::{Coalescing, ThreadPoolReads};
use crate::error::ServerError;
use crate::models::event;
use crate::server::Server;

/// Runs the `event-async` model: the mio loop with reads on a thread pool.
pub fn run(server: Server) -> Result<(), ServerError> {
    event::run_loop::<Coalescing<ThreadPoolReads>>(server)
}
