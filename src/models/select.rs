//! Stage 2: one thread, many clients, with `select(2)`.
//!
//! **What it teaches.** The event-based idea of OSTEP chapter 33: instead of
//! a thread per client, one loop asks the kernel "which of these sockets
//! can I read or write without blocking?" and serves only those. Every
//! socket is non-blocking, and all per-client progress lives in a
//! [`Conn`](crate::conn::Conn) state machine rather than on a thread's stack.
//!
//! **How it waits.** `select` with a read set and a write set, rebuilt from
//! scratch on every iteration (the kernel overwrites them with the answer).
//! Two costs show here: the sets are bitmaps of `FD_SETSIZE` (1024) bits,
//! so an fd numbered 1024 or above cannot be watched at all (such a client
//! is refused with `ERR 503` and the server keeps serving), and each call
//! scans every watched fd, O(n) per wake-up.
//!
//! **Where blocking work runs.** Inline, in the loop: a slow disk read
//! stalls every client (the same trade-off as the `event` model).
//! **Cost.** One thread; per client a socket and a small `Conn`.
//!
//! ```text
//! server --model select --service time --port 7070
//! client 1 & client 2 & client 3 &    # three clients, served concurrently
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use crate::conn::{refuse, Inline};
use crate::connections::Connections;
use crate::error::ServerError;
use crate::lifecycle::Lifecycle;
use crate::net::{self, Accepted};
use crate::refusal::Refusal;
use crate::server::Server;
use crate::service::Service;
use crate::signals::{self, SelfPipe};
use crate::trace;

/// Serves every client from one thread with `select(2)` until stopped.
pub fn run(server: Server) -> Result<(), ServerError> {
    let mut signal_pipe =
        SelfPipe::install(&signals::HANDLED).map_err(ServerError::io("cannot install signal handlers"))?;
    server.announce()?;
    let Server { listener, service, .. } = &server;
    listener.set_nonblocking(true).map_err(ServerError::io("cannot make the listener non-blocking"))?;
    let listener_fd = listener.as_raw_fd();
    let mut connections: Connections<TcpStream> = Connections::new(server.max_open_conns, server.limits);
    let mut lifecycle = Lifecycle::default();

    while !lifecycle.should_exit(connections.len()) {
        // 1. Say what we are interested in.
        let mut readable = FdSet::new();
        let mut writable = FdSet::new();
        for fd in signal_pipe.fds() {
            readable.insert(fd.as_raw_fd());
        }
        if lifecycle.is_accepting() {
            readable.insert(listener_fd);
        }
        for (_, connection) in connections.iter() {
            let fd = connection.socket.as_raw_fd();
            if connection.conn.wants_read() {
                readable.insert(fd);
            }
            if connection.conn.wants_write() {
                writable.insert(fd);
            }
        }

        // 2. Wait until some of it is possible.
        let (_turn, mut wait) = (trace::span("turn"), trace::span("wait")); // --trace
        match select(&mut readable, &mut writable, lifecycle.wait_timeout(connections.len())) {
            Ok(ready) => wait.arg("ready", || ready as u64),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ServerError::io("select")(err)),
        }
        drop(wait);
        let _handle = trace::span("handle");

        // 3. Do it.
        for action in signal_pipe.take() {
            if lifecycle.on_signal(action, service, connections.len()) {
                connections.finish_all(service, &mut Inline);
            }
        }
        let ready: Vec<_> = connections
            .iter()
            .filter(|(_, connection)| {
                let fd = connection.socket.as_raw_fd();
                readable.contains(fd) || writable.contains(fd)
            })
            .map(|(id, _)| id)
            .collect();
        for id in ready {
            connections.advance(id, service, &mut Inline);
        }
        if lifecycle.sweep_is_due() {
            connections.close_expired();
        }
        if lifecycle.is_accepting() && readable.contains(listener_fd) {
            accept(listener, &mut connections, &mut lifecycle, service);
        }
    }
    Ok(())
}

/// Accepts every connection waiting on the (non-blocking) listener. One
/// whose fd is too large for an `fd_set` could never be watched: it is told
/// 503 and closed, and the server goes on serving. Out of fds, accepting
/// pauses briefly.
fn accept(
    listener: &TcpListener,
    connections: &mut Connections<TcpStream>,
    lifecycle: &mut Lifecycle,
    service: &Service,
) {
    loop {
        match net::accept(listener, true) {
            Accepted::Connection(stream) if !FdSet::fits(stream.as_raw_fd()) => refuse(stream, Refusal::Overloaded),
            Accepted::Connection(stream) => {
                connections.admit(stream, service, &mut Inline);
            }
            Accepted::Retry => {}
            Accepted::Drained => return,
            Accepted::Pause => return lifecycle.pause_accepting(),
        }
    }
}

/// A `fd_set` bitmap: the syscall boundary, kept safe for the loop above.
struct FdSet {
    set: libc::fd_set,
    max_fd: RawFd,
}

impl FdSet {
    fn new() -> FdSet {
        // SAFETY: fd_set is a plain bitmap for which all-zero bytes is the
        // valid empty set (what FD_ZERO produces).
        let set = unsafe { std::mem::zeroed() };
        FdSet { set, max_fd: -1 }
    }

    /// Whether `fd` can be represented in an `fd_set` at all.
    fn fits(fd: RawFd) -> bool {
        (0..libc::FD_SETSIZE as RawFd).contains(&fd)
    }

    fn insert(&mut self, fd: RawFd) {
        assert!(FdSet::fits(fd), "fd {fd} is beyond FD_SETSIZE; it should have been refused");
        // SAFETY: `fd` is within 0..FD_SETSIZE (checked above), so FD_SET
        // writes inside the bitmap.
        unsafe { libc::FD_SET(fd, &mut self.set) };
        self.max_fd = self.max_fd.max(fd);
    }

    fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: FD_ISSET only reads the bitmap, at an index checked in range.
        FdSet::fits(fd) && unsafe { libc::FD_ISSET(fd, &self.set) }
    }
}

/// `select(2)` over a read and a write set; the sets are replaced by the
/// ready subsets.
fn select(readable: &mut FdSet, writable: &mut FdSet, timeout: Option<Duration>) -> io::Result<usize> {
    let nfds = readable.max_fd.max(writable.max_fd) + 1;
    let mut tv = timeout.map(|t| libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    });
    let tv_ptr = tv.as_mut().map_or(std::ptr::null_mut(), |tv| tv as *mut libc::timeval);
    // SAFETY: both sets are valid fd_set values owned by the caller and only
    // hold fds below FD_SETSIZE; nfds bounds the scan; the exception set is
    // null (allowed); tv_ptr is null or points to a live timeval.
    let ready = unsafe { libc::select(nfds, &mut readable.set, &mut writable.set, std::ptr::null_mut(), tv_ptr) };
    if ready < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ready as usize)
    }
}
