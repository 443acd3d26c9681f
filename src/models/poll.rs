//! Stage 2: the same loop as `select`, waiting with `poll(2)`.
//!
//! **What it teaches.** `poll` fixes `select`'s worst limit: it takes an
//! array of `(fd, events)` records instead of fixed-size bitmaps, so any fd
//! number can be watched and no client is refused for having a large fd.
//! What it does not fix is the cost per wake-up: the whole array is copied
//! into the kernel and scanned on every call, O(n) in the number of
//! connections even when only one is ready. That is the motivation for
//! epoll (the `event` model), which keeps the interest list in the kernel.
//!
//! **How it waits.** `poll` on an array rebuilt each iteration.
//! **Where blocking work runs.** Inline, in the loop.
//! **Cost.** One thread; per client a socket, a `Conn` and an 8-byte `pollfd`.
//!
//! ```text
//! server --model poll --root fixtures   # then: client 0 ./test.txt ./docs/a.txt
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::conn::{ConnId, Inline};
use crate::connections::Connections;
use crate::error::ServerError;
use crate::lifecycle::Lifecycle;
use crate::net::{self, Accepted};
use crate::server::Server;
use crate::service::Service;
use crate::signals::{self, SelfPipe};
use crate::trace;

/// Serves every client from one thread with `poll(2)` until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let mut signal_pipe =
        SelfPipe::install(&signals::HANDLED).map_err(ServerError::io("cannot install signal handlers"))?;
    server.announce()?;
    let Server { listener, service, .. } = &server;
    listener.set_nonblocking(true).map_err(ServerError::io("cannot make the listener non-blocking"))?;
    let mut connections: Connections<TcpStream> = Connections::new(server.max_open_conns, server.limits);
    let mut lifecycle = Lifecycle::default();

    while !lifecycle.should_exit(connections.len()) {
        // 1. Say what we are interested in: signal pipes, listener, clients.
        let mut watched: Vec<PollFd> =
            signal_pipe.fds().map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)).collect();
        let listener_at = watched.len();
        let accepting = lifecycle.is_accepting();
        if accepting {
            watched.push(PollFd::new(listener, PollFlags::IN));
        }
        let first_connection = watched.len();
        let mut ids: Vec<ConnId> = Vec::with_capacity(connections.len());
        for (id, connection) in connections.iter() {
            let mut events = PollFlags::empty();
            if connection.conn.wants_read() {
                events |= PollFlags::IN;
            }
            if connection.conn.wants_write() {
                events |= PollFlags::OUT;
            }
            if !events.is_empty() {
                watched.push(PollFd::new(&connection.socket, events));
                ids.push(id);
            }
        }

        // 2. Wait until some of it is possible.
        let timeout = lifecycle
            .wait_timeout(connections.len())
            .map(|t| Timespec::try_from(t).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 }));
        let (_turn, mut wait) = (trace::span("turn"), trace::span("wait")); // --trace
        match rustix::event::poll(&mut watched, timeout.as_ref()) {
            Ok(ready) => wait.arg("ready", || ready as u64),
            Err(rustix::io::Errno::INTR) => continue,
            Err(errno) => return Err(ServerError::io("poll")(io::Error::from(errno))),
        }
        drop(wait);
        let _handle = trace::span("handle");

        // 3. Do it. (Error and hang-up flags count as ready: advancing the
        // connection is what discovers and cleans up the failure.)
        let is_ready = |pollfd: &PollFd| !pollfd.revents().is_empty();
        let listener_ready = accepting && is_ready(&watched[listener_at]);
        let ready: Vec<ConnId> = watched[first_connection..]
            .iter()
            .zip(&ids)
            .filter(|(pollfd, _)| is_ready(pollfd))
            .map(|(_, &id)| id)
            .collect();
        drop(watched);

        for action in signal_pipe.take() {
            if lifecycle.on_signal(action, service, connections.len()) {
                connections.finish_all(service, &mut Inline);
            }
        }
        for id in ready {
            connections.advance(id, service, &mut Inline);
        }
        if lifecycle.sweep_is_due() {
            connections.close_expired();
        }
        if listener_ready && lifecycle.is_accepting() {
            accept(listener, &mut connections, &mut lifecycle, service);
        }
    }
    Ok(())
}

/// Accepts every connection waiting on the (non-blocking) listener; any fd
/// number will do for `poll`. Out of fds, accepting pauses briefly.
fn accept(
    listener: &TcpListener,
    connections: &mut Connections<TcpStream>,
    lifecycle: &mut Lifecycle,
    service: &Service,
) {
    loop {
        match net::accept(listener, true) {
            Accepted::Connection(stream) => {
                connections.admit(stream, service, &mut Inline);
            }
            Accepted::Retry => {}
            Accepted::Drained => return,
            Accepted::Pause => return lifecycle.pause_accepting(),
        }
    }
}
