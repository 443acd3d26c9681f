//! What the stage-4 models share: the seam where a readiness loop's
//! blocking work runs, and how its completions come back to the loop
//! (`docs/design.md`, "the plan/execute seam").
//!
//! The mio loop ([`crate::models::event::run_with_backend`]) is written once. What
//! distinguishes `event`, `event-async`, `event-aio` and `uring` is the
//! [`Backend`] it is built with, each in its model's own file: run the work
//! inline (`event`), on a thread pool (`event-async`'s `ThreadPoolReads`),
//! with POSIX AIO or with io_uring (`event-aio`'s `PosixAio` and `uring`'s
//! `Uring`, each a [`KernelReads`] that [`KernelBackend`] drives). Every asynchronous backend
//! announces finished work by making a source in the loop's `Poll`
//! readable (a [`mio::Waker`], a signal, an eventfd); the loop then asks it
//! for [`Backend::completed`] work and resumes those connections.
//!
//! Two helpers are shared by the asynchronous backends: [`Coalescing`]
//! merges concurrent misses on the same file into one read, and
//! [`DelayQueue`](delay_queue::DelayQueue) simulates slow storage (`--read-delay-ms`) for reads the
//! kernel performs, without blocking any thread.

mod alarm;
mod coalescing;
mod completions;
pub(crate) mod delay_queue;
mod kernel;

use std::io;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

pub use coalescing::Coalescing;
pub use completions::Completions;
pub use kernel::{KernelBackend, KernelReads, PendingRead};

/// How long a reader thread (`--readers`) waits for work before it exits.
pub const READER_KEEP_ALIVE: Duration = Duration::from_secs(10);

use crate::conn::{ConnId, Executor, Inline};
use crate::protocol::Response;

/// Where a loop's blocking work runs, and how its completions come back.
pub trait Backend: Executor + Sized {
    /// Builds the backend of one event loop, with at most `readers` reader
    /// threads (`--readers`). A backend whose work finishes
    /// elsewhere registers, in `registry` under `token`, the source that
    /// makes the loop wake up for completions.
    fn open(readers: usize, registry: &Registry, token: Token) -> io::Result<Self>;

    /// Appends finished work, as (connection, response), to `done`.
    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>);

    /// When the loop must ask for completions even if no source fires
    /// (a simulated storage delay running out); `None` if never.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// The `event` model's backend: everything runs inline, nothing completes later.
impl Backend for Inline {
    fn open(_readers: usize, _registry: &Registry, _token: Token) -> io::Result<Inline> {
        Ok(Inline)
    }

    fn completed(&mut self, _done: &mut Vec<(ConnId, Response)>) {}
}
