//! Stage 2, with processes: the classic Unix server, a process per connection.
//!
//! **What it teaches.** `accept`, then `fork`: the child serves the client
//! with plain blocking calls and exits; the parent closes its copy of the
//! socket and goes straight back to `accept`. Isolation is total (a crash
//! takes down one connection), and the code per connection is as simple as
//! the iterative server's. The costs: a `fork` per connection (copying page
//! tables, even with copy-on-write), a process per client, and no shared
//! memory: each child starts with a *copy* of the parent's cache, and what
//! it caches dies with it, so a file is cached only for the rest of one
//! connection. `SIGHUP` is forwarded to the children, each clearing its copy.
//!
//! **How it waits.** The parent polls the listener and a signalfd (see
//! [`crate::process`] for why not a signal handler); each child blocks in
//! `read`. **Where blocking work runs.** In the child. The parent reaps
//! children on `SIGCHLD` (no zombies) and enforces `--max-conns`.
//!
//! ```text
//! server --model fork --root fixtures
//! ```

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags};

use crate::blocking::BlockingConnections;
use crate::conn::refuse;
use crate::error::ServerError;
use crate::net::{self, Accepted, FD_EXHAUSTION_PAUSE};
use crate::process::{self, ParentSignals};
use crate::refusal::Refusal;
use crate::server::Server;
use crate::signals::{self, SignalAction};
use crate::sys::Signal;

/// Forks a process for every connection until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let mut parent_signals = ParentSignals::block()?;
    server.announce()?;
    let Server { listener, service, limits, max_open_conns, .. } = &server;
    listener.set_nonblocking(true).map_err(ServerError::io("cannot make the listener non-blocking"))?;
    let mut children = HashSet::new();
    loop {
        let mut fds =
            [PollFd::new(listener, PollFlags::IN), PollFd::from_borrowed_fd(parent_signals.as_fd(), PollFlags::IN)];
        if let Err(errno) = rustix::event::poll(&mut fds, None) {
            if errno != rustix::io::Errno::INTR {
                return Err(ServerError::io("poll")(errno.into()));
            }
        }
        let arrived = parent_signals.take();
        process::reap(&mut children);
        if arrived.actions.contains(&SignalAction::ClearCache) {
            signals::clear_cache(service);
            process::signal_all(&children, Signal::HUP);
        }
        if arrived.actions.contains(&SignalAction::Stop) {
            signals::log_stopping(children.len());
            process::signal_all(&children, Signal::TERM);
            process::wait_for_children(&mut parent_signals, &mut children);
            return Ok(());
        }
        loop {
            let stream = match net::accept(listener, false) {
                Accepted::Connection(stream) => stream,
                Accepted::Drained => break,
                Accepted::Pause => {
                    std::thread::sleep(FD_EXHAUSTION_PAUSE);
                    break;
                }
                Accepted::Retry => continue,
            };
            if children.len() >= *max_open_conns {
                refuse(stream, Refusal::Overloaded);
                continue;
            }
            // The child: one connection, served with blocking calls; its
            // own signal watcher, installed before its signals unblock.
            let pid = process::fork_child(|| {
                let live = Arc::new(BlockingConnections::default());
                let stopping = Arc::clone(&live);
                if signals::spawn_watcher(Arc::clone(service), move || stopping.stop()).is_err() {
                    return;
                }
                process::unblock_all();
                if let Some(connection) = live.admit(stream, 1) {
                    connection.serve(service, *limits);
                }
            })?;
            // The parent's copy of the socket is dropped (closed) here.
            children.insert(pid);
        }
    }
}
