//! Stage 2, with processes: Apache's classic design, N processes forked once
//! sharing the listener.
//!
//! **What it teaches.** Forking per connection pays for a `fork` every
//! time; prefork pays it N times at start-up. The parent binds, forks
//! `--workers N` workers (default: one per core), and from then on only
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
//! server --model prefork --workers 8 --root fixtures
//! ```

use std::collections::HashSet;

use crate::blocking::StoppableAcceptor;
use crate::error::ServerError;
use crate::log::{always, info};
use crate::process::{self, ParentSignals};
use crate::server::Server;
use crate::signals::SignalAction;
use crate::sys::{Pid, Signal};

/// Forks the workers and supervises them until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let mut parent_signals = ParentSignals::block()?;
    let mut children = HashSet::new();
    for _ in 0..server.workers {
        children.insert(spawn_worker(&server)?);
    }
    server.announce()?;
    loop {
        let arrived = parent_signals.wait(None);
        if arrived.actions.contains(&SignalAction::Stop) {
            info!("stopping: {} workers finish their connections", children.len());
            process::signal_all(&children, Signal::TERM);
            process::wait_for_children(&mut parent_signals, &mut children);
            return Ok(());
        }
        if arrived.actions.contains(&SignalAction::ClearCache) {
            process::signal_all(&children, Signal::HUP);
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
/// signal watcher, installed before its signals are unblocked, so that a
/// forwarded signal is never lost or fatal.
fn spawn_worker(server: &Server) -> Result<Pid, ServerError> {
    process::fork_child(|| match StoppableAcceptor::install(server) {
        Ok(acceptor) => {
            process::unblock_all();
            // The iterative loop; every worker polls the one listener, and
            // a worker that loses the race for a client polls again.
            while acceptor.wait() {
                if let Some(connection) = acceptor.accept(1) {
                    connection.serve(&server.service, server.limits);
                }
            }
        }
        Err(err) => always!("server: worker {}: {err}", std::process::id()),
    })
}
