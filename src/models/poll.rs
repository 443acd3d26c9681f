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

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::conn::{ConnId, Inline};
use crate::connections::Connections;
use crate::error::ServerError;
use crate::server::Server;
use crate::trace;

/// Serves every client from one thread with `poll(2)` until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let (mut signal_pipe, mut connections) = Connections::start_readiness_loop(&server)?;
    let Server { listener, service, .. } = &server;

    while !connections.should_exit() {
        // 1. Say what we are interested in: signal pipes, listener, clients.
        let [clear_fd, stop_fd] = signal_pipe.fds();
        let mut watched =
            vec![PollFd::from_borrowed_fd(clear_fd, PollFlags::IN), PollFd::from_borrowed_fd(stop_fd, PollFlags::IN)];
        let accepting = connections.is_accepting();
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
        let timeout =
            connections.wait_timeout().map(|t| Timespec::try_from(t).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 }));
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
        let listener_ready = accepting && is_ready(&watched[2]);
        let ready: Vec<ConnId> = watched[first_connection..]
            .iter()
            .zip(&ids)
            .filter(|(pollfd, _)| is_ready(pollfd))
            .map(|(_, &id)| id)
            .collect();
        drop(watched);

        for action in signal_pipe.take() {
            connections.on_signal(action, service, &mut Inline);
        }
        for id in ready {
            connections.advance(id, service, &mut Inline);
        }
        connections.close_expired();
        if listener_ready && connections.is_accepting() {
            connections.accept_pending(listener, service, &mut Inline, |_| true);
        }
    }
    Ok(())
}
