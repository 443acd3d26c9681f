//! What the stage-4 models share: the seam where a readiness loop's
//! blocking work runs, and how its completions come back to the loop
//! (`docs/design.md`, "the plan/execute seam").
//!
//! The mio loop ([`crate::models::event::run_with_backend`]) is written once. What
//! distinguishes `event`, `event-async`, `event-aio` and `uring` is the
//! [`Executor`] it is opened with ([`Open`]), each in its model's own file: run the work
//! inline (`event`), on a thread pool (`event-async`'s `ThreadPoolReads`),
//! with POSIX AIO or with io_uring (`event-aio`'s `PosixAio` and `uring`'s
//! `Uring`, each a [`KernelReads`] that [`KernelBackend`] drives). Every asynchronous backend
//! announces finished work by making a source in the loop's `Poll`
//! readable (a [`mio::Waker`], a signal, an eventfd); the loop then asks it
//! for [`Executor::completed`] work and resumes those connections.
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
use std::time::Duration;

use mio::{Registry, Token};

pub use coalescing::Coalescing;
pub use completions::Completions;
pub use kernel::{KernelBackend, KernelReads, PendingRead};

/// How long a reader thread (`--readers`) waits for work before it exits.
pub const READER_KEEP_ALIVE: Duration = Duration::from_secs(10);

#[cfg(doc)]
use crate::conn::Executor;

/// How an event loop opens its backend: with at most `readers` reader
/// threads (`--readers`), registering in `registry` under `token` the
/// source that wakes the loop for completions (if its work finishes
/// elsewhere). Each backend's `open` has this shape.
pub type Open<B> = fn(readers: usize, registry: &Registry, token: Token) -> io::Result<B>;
