//! What the blocking models share: serving one connection start to finish
//! in the calling thread, and an accept loop that a signal can stop.
//!
//! A thread blocked in `read` cannot be told to stop, so a graceful stop
//! shuts down the *reading* side of every live connection: the blocked read
//! returns end-of-stream, the response in flight is still written, and the
//! thread returns on its own.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clients::SWEEP_INTERVAL;
use crate::conn::{Conn, Inline, Limits, Status};
use crate::error::ServerError;
use crate::log::info;
use crate::models::Server;
use crate::net::is_fd_exhaustion;
use crate::refusal::Refusal;
use crate::service::Service;
use crate::signals;

/// How long to stop accepting when the process is out of file descriptors.
pub const FD_EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);

/// The connections blocking models are serving, so a stop can reach them
/// and `--max-conns` can count them.
#[derive(Debug, Default)]
pub struct LiveConnections {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// Shared with each connection's [`Ticket`] (not `dup`ed: a
    /// connection costs one fd, not two).
    streams: Mutex<HashMap<u64, Arc<TcpStream>>>,
}

/// A connection admitted into [`LiveConnections`], waiting to be served
/// (perhaps on another thread); it counts towards the limit until it is
/// served or dropped.
#[derive(Debug)]
pub struct Ticket {
    live: Arc<LiveConnections>,
    id: u64,
    stream: Arc<TcpStream>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl LiveConnections {
    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops reading from every live connection (see the module docs).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for stream in self.lock().values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<TcpStream>>> {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections admitted and not yet finished.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is live.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Admits `stream` if fewer than `max_conns` are live; otherwise tells
    /// the client `ERR 503` and closes it.
    pub fn admit(self: &Arc<Self>, stream: TcpStream, max_conns: usize, service: &Service) -> Option<Ticket> {
        if self.len() >= max_conns {
            crate::clients::refuse(stream, Refusal::Overloaded, service);
            return None;
        }
        let stream = Arc::new(stream);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Arc::clone(&stream));
        // Checked after registering, so a stop cannot slip in between.
        if self.is_stopping() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        Some(Ticket { live: Arc::clone(self), id, stream })
    }

    /// Serves every request on the admitted connection until the client is
    /// done, blocking the calling thread throughout: the same [`Conn`]
    /// state machine as the event loops, which on a blocking socket simply
    /// never sees `WouldBlock`.
    ///
    /// A read timeout of [`SWEEP_INTERVAL`] wakes the thread now and then
    /// to check the connection's time limits, so a slow or idle client
    /// cannot hold a thread (or the only slot, in `iterative`) for ever.
    pub fn serve(ticket: Ticket, service: &Service, limits: Limits) {
        let mut stream = &*ticket.stream;
        let _ = stream.set_read_timeout(Some(SWEEP_INTERVAL));
        let _ = stream.set_write_timeout(Some(SWEEP_INTERVAL));
        let mut conn = Conn::new(service, limits);
        while conn.advance(&mut stream, service, &mut Inline, 0) == Status::Open {
            if conn.is_expired(Instant::now()) {
                break;
            }
        }
        // Dropping the ticket takes the connection off the live list.
    }

    /// Admits `stream` as the only connection this thread (or process)
    /// serves and serves it right here, blocking: how `iterative`, a
    /// `prefork` worker and a `fork` child run a connection.
    pub fn serve_here(self: &Arc<Self>, stream: TcpStream, service: &Service, limits: Limits) {
        if let Some(ticket) = self.admit(stream, 1, service) {
            LiveConnections::serve(ticket, service, limits);
        }
    }

    /// After a stop: waits until every live connection has finished, or
    /// until [`STOP_GRACE`](signals::STOP_GRACE) has passed.
    pub fn wait_until_idle(&self) {
        let deadline = Instant::now() + signals::STOP_GRACE;
        while !self.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Installs the signal watcher, calls `on_ready` (which announces the
/// server), then accepts connections and hands each to `serve` until
/// `SIGINT`/`SIGTERM`, which also stops every connection in `live`.
/// `SIGHUP` clears the cache from the watcher thread.
pub fn accept_until_stopped(
    server: &Server,
    live: &Arc<LiveConnections>,
    on_ready: impl FnOnce() -> Result<(), ServerError>,
    mut serve: impl FnMut(TcpStream),
) -> Result<(), ServerError> {
    let Server { listener, service, .. } = server;
    let wake = wake_address(listener.local_addr().map_err(ServerError::io("cannot read the bound address"))?);
    let stopping = Arc::clone(live);
    signals::spawn_watcher(Arc::clone(service), move || {
        stopping.stop();
        // accept() blocks; a connection to ourselves makes it return.
        let _ = TcpStream::connect(wake);
    })
    .map_err(ServerError::io("cannot install signal handlers"))?;
    on_ready()?;
    while !live.is_stopping() {
        let accepted = listener.accept();
        if live.is_stopping() {
            return Ok(());
        }
        match accepted {
            Ok((stream, _peer)) => serve(stream),
            Err(err) if is_fd_exhaustion(&err) => {
                info!("accept: {err}; pausing accepts");
                std::thread::sleep(FD_EXHAUSTION_PAUSE);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => info!("accept: {err}"),
        }
    }
    Ok(())
}

/// For models that run each connection on another thread: accepts until
/// stopped, admits each connection under `--max-conns` (past it: 503), and
/// hands `dispatch` a job that serves it; after a stop, waits for the live
/// connections to finish. `threads` and `pool` differ only in `dispatch`.
pub fn dispatch_connections(
    server: &Server,
    mut dispatch: impl FnMut(Box<dyn FnOnce() + Send>),
) -> Result<(), ServerError> {
    let live = Arc::new(LiveConnections::default());
    accept_until_stopped(
        server,
        &live,
        || server.announce(),
        |stream| {
            let Some(ticket) = live.admit(stream, server.max_conns, &server.service) else { return };
            let (service, limits) = (Arc::clone(&server.service), server.limits);
            dispatch(Box::new(move || LiveConnections::serve(ticket, &service, limits)));
        },
    )?;
    live.wait_until_idle();
    Ok(())
}

/// An address that reaches `local`: a wildcard bind is reached via loopback.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}
