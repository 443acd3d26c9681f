//! The table of open connections that every readiness loop keeps.
//!
//! `select`, `poll` and the mio loops differ in how they *wait*; what they do
//! with a connection once it is ready is the same and lives here: admit it
//! (or refuse it when the server is full), advance it, deliver completed
//! work, drop it when it is done, and drain everything on a graceful stop.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::conn::{refuse, Conn, ConnId, Executor, Limits, Status, SWEEP_INTERVAL};
use crate::error::ServerError;
use crate::log::info;
use crate::net::{self, Accepted, FD_EXHAUSTION_PAUSE};
use crate::output::Sink;
use crate::protocol::Response;
use crate::refusal::Refusal;
use crate::server::Server;
use crate::service::Service;
use crate::signals::{self, SelfPipe, SignalAction};
use crate::slab::Slab;

/// One open connection: its socket and its protocol state.
#[derive(Debug)]
pub struct Connection<S> {
    /// The socket.
    pub socket: S,
    /// The protocol state.
    pub conn: Conn,
    /// Whether the loop currently asks for writable events (mio loops use this
    /// to re-register only when interest changes).
    pub writable_registered: bool,
}

/// Every open connection of one loop, by id.
#[derive(Debug)]
pub struct Connections<S> {
    open: Slab<Connection<S>>,
    max_conns: usize,
    limits: Limits,
    /// When connections were last checked against their time limits.
    last_sweep: Instant,
    /// While set, accepting is paused because the process ran out of fds.
    accept_paused_until: Option<Instant>,
    /// Set by a graceful stop: exit when every connection is done, or then.
    stop_deadline: Option<Instant>,
}

impl<S: Sink + Read> Connections<S> {
    /// An empty table that admits at most `max_conns` connections.
    pub fn new(max_conns: usize, limits: Limits) -> Connections<S> {
        Connections {
            open: Slab::default(),
            max_conns,
            limits,
            last_sweep: Instant::now(),
            accept_paused_until: None,
            stop_deadline: None,
        }
    }

    /// Whether one more connection fits.
    pub fn has_room(&self) -> bool {
        self.open.len() < self.max_conns
    }

    /// Takes a freshly accepted socket and does what it can at once (the time
    /// service answers here). Returns its id if it stays open. Ids carry a
    /// generation ([`Slab`]), so a late event or completion for a closed
    /// connection cannot reach a newer one in the same slot.
    pub fn admit(&mut self, socket: S, service: &Service, executor: &mut dyn Executor) -> Option<ConnId> {
        if !self.has_room() {
            refuse(socket, Refusal::Overloaded);
            return None;
        }
        let conn = Conn::new(service, self.limits);
        let id = self.open.insert(Connection { socket, conn, writable_registered: false });
        self.advance(id, service, executor).map(|_| id)
    }

    /// Advances connection `id` after an event; drops it if it is done.
    /// Returns the client if it stays open. Unknown ids (a stale event for a
    /// connection already closed) are ignored.
    pub fn advance(&mut self, id: ConnId, service: &Service, executor: &mut dyn Executor) -> Option<&Connection<S>> {
        let connection = self.open.get_mut(id)?;
        if connection.conn.advance(&mut connection.socket, service, executor, id) == Status::Closed {
            self.open.remove(id);
            return None;
        }
        self.open.get(id)
    }

    /// Delivers the response of work that ran elsewhere, then advances.
    pub fn complete(
        &mut self,
        id: ConnId,
        response: Response,
        service: &Service,
        executor: &mut dyn Executor,
    ) -> Option<&Connection<S>> {
        self.open.get_mut(id)?.conn.complete(response);
        self.advance(id, service, executor)
    }

    /// Graceful stop: every connection finishes what is in flight and closes.
    /// Idle connections close at once.
    pub fn begin_stop(&mut self, service: &Service, executor: &mut dyn Executor) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(Instant::now() + signals::STOP_GRACE);
        signals::log_stopping(self.open.len());
        crate::trace::instant("stop signal", [Some(("in_flight", self.open.len() as u64)), None]);
        let ids: Vec<ConnId> = self.open.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(connection) = self.open.get_mut(id) {
                connection.conn.close_when_done();
            }
            self.advance(id, service, executor);
        }
    }

    /// Acts on a signal: clear the cache, or begin a graceful stop.
    pub fn on_signal(&mut self, action: SignalAction, service: &Service, executor: &mut dyn Executor) {
        match action {
            SignalAction::ClearCache => signals::clear_cache(service),
            SignalAction::Stop => self.begin_stop(service, executor),
        }
    }

    /// Whether accepting was paused for lack of fds (the loop must retry by
    /// itself once the pause is over: no new event will say so).
    pub fn is_accept_paused(&self) -> bool {
        self.accept_paused_until.is_some()
    }

    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Whether the loop should exit: stopping, and everyone served or out
    /// of time (then it says how many connections it drops unfinished).
    pub fn should_exit(&self) -> bool {
        let Some(deadline) = self.stop_deadline else { return false };
        if self.open.is_empty() {
            return true;
        }
        let out_of_time = Instant::now() >= deadline;
        if out_of_time {
            info!("stop grace period over: closing {} connections unfinished", self.open.len());
        }
        out_of_time
    }

    /// Whether the loop should wait for new connections now.
    pub fn is_accepting(&self) -> bool {
        self.stop_deadline.is_none() && self.accept_paused_until.is_none_or(|until| Instant::now() >= until)
    }

    /// How long the loop may wait before something here needs attention
    /// (an accept pause ending, the stop deadline, the next sweep for
    /// expired connections); `None` is "forever".
    pub fn wait_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let next_sweep = (!self.open.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        [self.accept_paused_until, self.stop_deadline, next_sweep]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .min()
    }

    /// Closes connections that outlived a time limit (slow senders, idle
    /// keep-alives, stalled readers). Scanning every connection costs
    /// O(n), so it runs at most once per [`SWEEP_INTERVAL`]: at 10,000
    /// connections that is a few microseconds a second, and a timer wheel
    /// would buy nothing worth its code.
    pub fn close_expired(&mut self) {
        let now = Instant::now();
        if now < self.last_sweep + SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        self.open.retain(|connection| !connection.conn.is_expired(now));
    }

    /// Mutable access to one client (to record registration changes).
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection<S>> {
        self.open.get_mut(id)
    }

    /// Drops a connection at once (the loop could not watch it).
    pub fn remove(&mut self, id: ConnId) {
        self.open.remove(id);
    }

    /// Every open connection.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Connection<S>)> {
        self.open.iter()
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

impl Connections<TcpStream> {
    /// What a hand-written readiness loop (`select`, `poll`) starts with:
    /// the signal self-pipe installed, then the server announced, the
    /// listener made non-blocking, and an empty table.
    pub fn start_readiness_loop(server: &Server) -> Result<(SelfPipe, Connections<TcpStream>), ServerError> {
        let signal_pipe = SelfPipe::install().map_err(ServerError::io("cannot install signal handlers"))?;
        server.announce()?;
        server.listener.set_nonblocking(true).map_err(ServerError::io("cannot make the listener non-blocking"))?;
        Ok((signal_pipe, Connections::new(server.max_open_conns, server.limits)))
    }

    /// Accepts every pending connection on a non-blocking listener. `fits`
    /// decides whether the loop can watch an fd at all (select's FD_SETSIZE);
    /// those that do not fit are refused with 503. Returns the ids admitted.
    /// Out of fds, it pauses accepting briefly and keeps serving the rest.
    pub fn accept_pending(
        &mut self,
        listener: &TcpListener,
        service: &Service,
        executor: &mut dyn Executor,
        fits: impl Fn(RawFd) -> bool,
    ) -> Vec<ConnId> {
        let mut admitted = Vec::new();
        self.accept_paused_until = None;
        loop {
            let stream = match net::accept(listener, true) {
                Accepted::Connection(stream) => stream,
                Accepted::Drained => break,
                Accepted::Retry => continue,
                Accepted::OutOfFds => {
                    self.accept_paused_until = Some(Instant::now() + FD_EXHAUSTION_PAUSE);
                    break;
                }
            };
            if !fits(stream.as_raw_fd()) {
                refuse(stream, Refusal::Overloaded);
                continue;
            }
            admitted.extend(self.admit(stream, service, executor));
        }
        admitted
    }
}
