//! Stage 4: the event loop with file reads on a thread pool ("Async I/O").
//!
//! It extends the `event` model: its one use of that model is
//! [`event::run_with_backend`], built here with this file's backend,
//! [`ThreadPoolReads`].
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

use std::io;

use mio::{Registry, Token};

use crate::backend::{Coalescing, Completions, READER_KEEP_ALIVE};
use crate::conn::{ConnId, Executor};
use crate::error::ServerError;
use crate::models::event;
use crate::protocol::Response;
use crate::server::Server;
use crate::service::Work;
use crate::thread_pool::ThreadPool;

/// Runs the `event-async` model: the mio loop with reads on a thread pool.
pub fn run(server: Server) -> Result<(), ServerError> {
    event::run_with_backend(server, |readers, registry, token| {
        ThreadPoolReads::open(readers, registry, token).map(Coalescing::new)
    })
}

/// Runs every piece of blocking work on a pool of reader threads that
/// grows with demand (up to `--readers`), posting each result to
/// [`Completions`], which wakes the loop.
#[derive(Debug)]
pub struct ThreadPoolReads {
    pool: ThreadPool,
    completions: Completions,
}

impl ThreadPoolReads {
    /// Up to `readers` threads, started as reads arrive, whose results
    /// wake the loop polling `registry` with `token` (an [`Open`](crate::backend::Open)).
    pub fn open(readers: usize, registry: &Registry, token: Token) -> io::Result<ThreadPoolReads> {
        let pool = ThreadPool::elastic("reader", readers, READER_KEEP_ALIVE);
        Ok(ThreadPoolReads { pool, completions: Completions::new(registry, token)? })
    }
}

impl Executor for ThreadPoolReads {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        let completions = self.completions.clone();
        self.pool.execute(move || completions.post(conn, work.run_blocking()));
        None
    }

    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        self.completions.take_into(done);
    }
}
