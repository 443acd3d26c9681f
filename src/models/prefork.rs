//! Apache's classic design: N processes, forked once, share the listener.
//!
//! **What it teaches.** Forking per connection pays for a `fork` every
//! time; prefork pays it N times at start-up. The parent binds, forks
//! `--threads N` workers (default: one per core), and from then on only
//! supervises: it forwards `SIGHUP` and `SIGTERM` to the workers and
//! replaces any worker that dies. Each worker is the iterative server on
//! the *shared* listening socket: the kernel hands each new connection to
//! one of the workers blocked in `accept`.
//!
//! **How it waits.** Workers block in `accept`, then in `read`; the parent
//! waits on a signalfd ([`crate::process`]). **Where blocking work runs.**
//! In the worker serving the connection. **Cost.** N processes, each with
//! its own cache (a `SIGHUP` clears all of them; each logs its own line);
//! at most N clients are served at once, and a keep-alive client occupies
//! a worker until it leaves, so N must cover the concurrency you expect.
//!
//! ```text
//! server --model prefork --threads 8 --root fixtures
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::blocking::{accept_until_stopped, LiveConnections};
use crate::error::ServerError;
use crate::log::info;
use crate::models::Server;
use crate::process::{self, ParentSignals};
use crate::signals::Request;

/// Forks the workers and supervises them until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let mut parent_signals = ParentSignals::block()?;
    let workers = server.config.threads.unwrap_or_else(crate::config::cores);
    let mut children = HashSet::new();
    for _ in 0..workers {
        children.insert(spawn_worker(&server)?);
    }
    server.announce()?;
    loop {
        let arrived = parent_signals.wait(None);
        if arrived.requests.contains(&Request::Stop) {
            crate::signals::log_stopping(children.len());
            process::signal_all(&children, Signal::SIGTERM);
            process::wait_for_children(&mut parent_signals, &mut children);
            return Ok(());
        }
        if arrived.requests.contains(&Request::ClearCache) {
            process::signal_all(&children, Signal::SIGHUP);
        }
        if arrived.child_exited {
            for pid in process::reap(&mut children) {
                let replacement = spawn_worker(&server)?;
                info!("worker {pid} exited; started worker {replacement}");
                children.insert(replacement);
            }
        }
    }
}

/// One worker: the iterative server on the shared listener, with its own
/// signal handling (installed before its signals are unblocked, so a
/// forwarded signal is never lost or fatal).
fn spawn_worker(server: &Server) -> Result<Pid, ServerError> {
    // Keep every signal blocked until the worker's handlers exist.
    process::fork_child(&process::ALL_BLOCKED, || {
        let live = Arc::new(LiveConnections::default());
        let Server { service, limits, .. } = server;
        let unblock = || {
            process::unblock_all();
            Ok(())
        };
        let served = accept_until_stopped(server, &live, unblock, |stream| {
            live.serve_here(stream, service, *limits);
        });
        if let Err(err) = served {
            crate::log::always!("server: worker {}: {err}", std::process::id());
        }
    })
}
