//! What the blocking models share: an accept loop that a signal can stop,
//! and serving one connection start to finish in the calling thread.
//!
//! A thread blocked in `accept` or `read` cannot be told to stop, so a
//! graceful stop does two things from the signal-watcher thread. It writes
//! to a pipe that the accepting thread waits on beside the listener (with
//! `poll`), so waiting for a client ends. (Connecting to the server itself
//! would also wake a blocked `accept`, but with `prefork` a *sibling*
//! worker can take that connection, and the sleeper sleeps on.) And it
//! sets a flag that every serving thread looks at each time its read times
//! out (every [`SWEEP_INTERVAL`]): the connection then finishes the
//! response in flight, starts no other, and closes, staged if the client
//! may still be sending (`conn.rs`). (Shutting down the reading side
//! instead would wake the read at once, but it fakes the client's
//! end-of-stream, and bytes the client sends after it would then make the
//! close a reset.)

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::conn::{refuse, Conn, ConnId, Inline, Limits, Status, SWEEP_INTERVAL};
use crate::error::ServerError;
use crate::log::info;
use crate::net::{self, Accepted, FD_EXHAUSTION_PAUSE};
use crate::refusal::Refusal;
use crate::server::Server;
use crate::service::Service;
use crate::signals;

/// A listener whose wait for clients (`poll(2)` beside a stop pipe) a `SIGINT`/`SIGTERM` ends, and
/// the connections it has handed out, so the same signal reaches them too.
/// `SIGHUP` clears the cache from the watcher thread.
#[derive(Debug)]
pub struct StoppableAcceptor<'a> {
    listener: &'a TcpListener,
    live: Arc<BlockingConnections>,
    /// Readable once a stop has begun.
    stop_pipe: UnixStream,
}

impl<'a> StoppableAcceptor<'a> {
    /// Starts the signal-watcher thread for `server`'s listener.
    pub fn install(server: &'a Server) -> Result<StoppableAcceptor<'a>, ServerError> {
        let set_up = || -> io::Result<(UnixStream, UnixStream)> {
            // Waited on with poll, then accepted without blocking: another
            // thread or process sharing the listener may win the race.
            server.listener.set_nonblocking(true)?;
            UnixStream::pair()
        };
        let (stop_pipe, mut stop_writer) = set_up().map_err(ServerError::io("cannot set up the listener"))?;
        let live = Arc::new(BlockingConnections::default());
        let stopping = Arc::clone(&live);
        signals::spawn_watcher(Arc::clone(&server.service), move || {
            let in_flight = stopping.stop();
            let _ = stop_writer.write_all(b"x");
            in_flight
        })
        .map_err(ServerError::io("cannot install signal handlers"))?;
        Ok(StoppableAcceptor { listener: &server.listener, live, stop_pipe })
    }

    /// Blocks until a client may be waiting on the listener (`true`) or a
    /// stop has begun (`false`): `poll(2)` on the listener and the stop pipe.
    pub fn wait(&self) -> bool {
        let _wait = crate::trace::span("wait"); // --trace
        while !self.live.is_stopping() {
            let mut wait_for = [PollFd::new(self.listener, PollFlags::IN), PollFd::new(&self.stop_pipe, PollFlags::IN)];
            match rustix::event::poll(&mut wait_for, None) {
                Ok(_) => return !self.live.is_stopping(),
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => {
                    info!("poll: {errno}");
                    std::thread::sleep(FD_EXHAUSTION_PAUSE);
                }
            }
        }
        false
    }

    /// Takes the waiting client without blocking, admitted among at most
    /// `max_open` live connections. `None` if there was none (another
    /// thread or process sharing the listener won it) or it was refused:
    /// past `max_open` it is told 503 and closed; out of fds, accepting
    /// pauses briefly.
    pub fn accept(&self, max_open: usize) -> Option<BlockingConnection> {
        match net::accept(self.listener, false) {
            Accepted::Connection(stream) => {
                // Served with blocking calls. On the BSDs and macOS an
                // accepted socket inherits the listener's O_NONBLOCK;
                // on Linux it never does, and the call would be wasted.
                if cfg!(not(target_os = "linux")) && stream.set_nonblocking(false).is_err() {
                    return None;
                }
                self.live.admit(stream, max_open)
            }
            Accepted::Pause => {
                std::thread::sleep(FD_EXHAUSTION_PAUSE);
                None
            }
            Accepted::Drained | Accepted::Retry => None, // a sibling took it, or it failed alone
        }
    }

    /// After a stop: waits until every live connection has finished, or
    /// until [`STOP_GRACE`](signals::STOP_GRACE) has passed.
    pub fn wait_until_idle(&self) {
        let deadline = Instant::now() + signals::STOP_GRACE;
        while !self.live.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The connections blocking models are serving, so a stop can reach them
/// and `--max-conns` can count them.
#[derive(Debug, Default)]
pub struct BlockingConnections {
    stopping: AtomicBool,
    /// Connections admitted and not yet dropped.
    open: AtomicUsize,
}

/// A connection admitted into [`BlockingConnections`], to be served (perhaps
/// on another thread); it counts towards the limit until it is dropped.
#[derive(Debug)]
pub struct BlockingConnection {
    live: Arc<BlockingConnections>,
    stream: TcpStream,
}

impl Drop for BlockingConnection {
    fn drop(&mut self) {
        self.live.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockingConnections {
    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Tells every live connection to finish and close (see the module
    /// docs); returns how many there are.
    pub fn stop(&self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        self.open.load(Ordering::SeqCst)
    }

    fn is_empty(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// Admits `stream` if fewer than `max_open` are live; otherwise tells
    /// the client `ERR 503` and closes it.
    pub fn admit(self: &Arc<Self>, stream: TcpStream, max_open: usize) -> Option<BlockingConnection> {
        let room = |open: usize| (open < max_open).then_some(open + 1);
        if self.open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, room).is_err() {
            refuse(stream, Refusal::Overloaded);
            return None;
        }
        Some(BlockingConnection { live: Arc::clone(self), stream })
    }
}

impl BlockingConnection {
    /// Serves every request on the connection until the client is done,
    /// blocking the calling thread throughout: the same [`Conn`] state
    /// machine as the event loops, which on a blocking socket simply never
    /// sees `WouldBlock`. Dropping the connection afterwards closes it.
    ///
    /// A read timeout of [`SWEEP_INTERVAL`] wakes the thread now and then
    /// to check the connection's time limits, so a slow or idle client
    /// cannot hold a thread (or the only slot, in `iterative`) for ever.
    ///
    /// A bug that panics while serving takes this connection only, closed
    /// as the unwinding drops it: not its thread (`iterative`'s only one, a
    /// `pool` or `prefork` worker).
    pub fn serve(self, service: &Service, limits: Limits) {
        let _serve = crate::trace::span("serve"); // --trace: one connection, start to end
        let serve = std::panic::AssertUnwindSafe(|| self.serve_to_the_end(service, limits));
        let _ = std::panic::catch_unwind(serve);
    }

    fn serve_to_the_end(&self, service: &Service, limits: Limits) {
        let mut stream = &self.stream;
        let _ = stream.set_read_timeout(Some(SWEEP_INTERVAL));
        let _ = stream.set_write_timeout(Some(SWEEP_INTERVAL));
        let mut conn = Conn::new(service, limits);
        let unused_id = ConnId::from_usize(0); // Inline needs no id
        while conn.advance(&mut stream, service, &mut Inline, unused_id) == Status::Open {
            if conn.is_expired(Instant::now()) {
                break;
            }
            if self.live.is_stopping() {
                conn.close_when_done();
            }
        }
    }
}
