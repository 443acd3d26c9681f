//! The per-connection state machine, written once for every model.
//!
//! A [`Conn`] holds a bounded input buffer (the [`Parser`]), a queue of
//! pending output ([`Output`]), and whether a request's blocking work is in
//! flight. [`Conn::advance`] does everything that can be done *now*: write
//! what is queued, turn buffered requests into responses, read more, until
//! the socket would block or the connection has to wait for something.
//!
//! Where the blocking work of a request runs is not the connection's
//! business: it hands [`Work`] to an [`Executor`]. The `Inline` executor runs
//! it on the spot (blocking models, and the `event` loop on purpose); the
//! asynchronous models start it elsewhere and later call [`Conn::complete`].
//!
//! On a blocking socket `advance` simply blocks where a non-blocking socket
//! would return `WouldBlock`, so the iterative and thread-based models use
//! the very same code.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::output::{Output, Sink};
use crate::protocol::{Body, Framing, ParseLimits, Parser, Response, READ_CHUNK_BYTES};
use crate::refusal::Refusal;
use crate::service::{Plan, Service, Work};

/// Stop reading requests from a client while this much output is queued for
/// it (backpressure): a client that pipelines but never reads cannot make
/// the server buffer without bound.
pub const MAX_QUEUED_OUTPUT_BYTES: u64 = 1 << 20;

/// What one connection may take (DESIGN section 5): sizes and times.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and head sizes.
    pub parse: ParseLimits,
    /// A request must arrive complete within this time of its first byte
    /// (a slow sender holds a connection for no longer).
    pub request_timeout: Duration,
    /// A keep-alive connection with nothing to do is closed after this.
    pub idle_timeout: Duration,
    /// A response that makes no write progress for this long is dropped.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            parse: ParseLimits::default(),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Identifies a connection to an executor (a loop's token).
pub type ConnId = usize;

/// Where the blocking part of a request runs.
pub trait Executor {
    /// Runs `work` for connection `conn` and returns its response now, or
    /// starts it elsewhere and returns `None`; the loop then calls
    /// [`Conn::complete`] with the response once it is done.
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response>;
}

/// Runs the work right here, blocking the caller.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inline;

impl Executor for Inline {
    fn execute(&mut self, _conn: ConnId, work: Work) -> Option<Response> {
        Some(work.run_blocking())
    }
}

/// Whether the loop should keep a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep it; call `advance` again on its next event.
    Open,
    /// Everything owed has been sent (or the peer is gone): drop it.
    Closed,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Conn {
    parser: Parser,
    output: Output,
    /// Set while a request's work runs elsewhere: how to frame its answer.
    waiting: Option<Framing>,
    /// The client shut down its sending side (read returned 0).
    peer_closed: bool,
    /// Close once the queued output is written; read no more requests.
    closing: bool,
    limits: Limits,
    /// When bytes last moved in either direction.
    last_progress: Instant,
    /// When the first byte of the request now being received arrived.
    request_started: Option<Instant>,
    /// Set once a response streams a file (head and body leave in two
    /// writes, and Nagle would hold the second back for the client's
    /// delayed ACK); `TCP_NODELAY` is then set before the next write. A
    /// response sent in one `writev` never waits, so most connections
    /// never pay for the `setsockopt`.
    wants_nodelay: NoDelay,
    /// The readiness event said the peer has hung up (EPOLLRDHUP): read
    /// until end-of-stream, even after a short read (see `try_advance`).
    peer_hung_up: bool,
}

/// Whether `TCP_NODELAY` is needed and set (see [`Conn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoDelay {
    NotNeeded,
    Needed,
    Set,
}

impl Conn {
    /// A new connection; for the time service its whole answer is queued at once.
    pub fn new(service: &Service, limits: Limits) -> Conn {
        let mut conn = Conn {
            parser: Parser::new(limits.parse),
            output: Output::default(),
            waiting: None,
            peer_closed: false,
            closing: false,
            limits,
            last_progress: Instant::now(),
            request_started: None,
            wants_nodelay: NoDelay::NotNeeded,
            peer_hung_up: false,
        };
        if let Some(greeting) = service.greeting() {
            conn.output.push_bytes(greeting);
            conn.closing = true;
        }
        conn
    }

    /// A connection that is only told why it is refused, then closed.
    pub fn refused(refusal: Refusal) -> Conn {
        let mut conn = Conn {
            parser: Parser::default(),
            output: Output::default(),
            waiting: None,
            peer_closed: false,
            closing: true,
            limits: Limits::default(),
            last_progress: Instant::now(),
            request_started: None,
            wants_nodelay: NoDelay::NotNeeded,
            peer_hung_up: false,
        };
        conn.output.push_response(Framing::Line, Response::Refused(refusal));
        conn
    }

    /// Does all the work possible now; see the module docs. I/O errors mean
    /// the peer is gone, so they close the connection rather than propagate.
    pub fn advance<S: Sink + Read>(
        &mut self,
        socket: &mut S,
        service: &Service,
        executor: &mut dyn Executor,
        id: ConnId,
    ) -> Status {
        match self.try_advance(socket, service, executor, id) {
            Ok(()) if self.is_finished() => Status::Closed,
            Ok(()) => Status::Open,
            Err(_) => Status::Closed,
        }
    }

    fn try_advance<S: Sink + Read>(
        &mut self,
        socket: &mut S,
        service: &Service,
        executor: &mut dyn Executor,
        id: ConnId,
    ) -> io::Result<()> {
        // A read that returned less than it asked for emptied the socket:
        // reading again would only return WouldBlock (a wasted syscall per
        // request). Edge-triggered epoll reports any later data as a new
        // event, level-triggered loops ask again anyway, and a blocking
        // socket is simply read on the next call. One exception: a hang-up
        // that arrived with the data is reported once, in the event that
        // woke us; then we must read on to see the end of the stream.
        let mut drained = false;
        loop {
            if self.wants_nodelay == NoDelay::Needed {
                let _ = rustix::net::sockopt::set_tcp_nodelay(socket.as_fd(), true);
                self.wants_nodelay = NoDelay::Set;
            }
            let queued = self.output.queued_bytes();
            self.output.write_to(socket)?;
            if self.output.queued_bytes() < queued {
                self.last_progress = Instant::now();
            }
            if self.serve_buffered(service, executor, id) {
                continue; // new output: try to write it straight away
            }
            if !self.wants_read() || drained {
                return Ok(());
            }
            match self.parser.read_from(socket) {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    drained = n < READ_CHUNK_BYTES && !self.peer_hung_up;
                    self.last_progress = Instant::now();
                    if self.request_started.is_none() {
                        self.request_started = Some(self.last_progress);
                    }
                    // A sender dribbling bytes never lets a blocking read
                    // time out, so the request deadline is checked here.
                    if self.is_expired(self.last_progress) {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    }

    /// Answers complete buffered requests, in order, until one has to wait or
    /// the output queue is full. Returns whether any output was queued.
    fn serve_buffered(&mut self, service: &Service, executor: &mut dyn Executor, id: ConnId) -> bool {
        let mut queued = false;
        while self.may_start_request() {
            let Some(parsed) = self.parser.next_request() else { break };
            queued = true;
            // The next request's clock starts with its first byte, which
            // may already be buffered behind this one.
            self.request_started = self.parser.has_partial_request().then(Instant::now);
            match parsed {
                Err(malformed) => self.respond(malformed.framing, Response::Refused(malformed.refusal)),
                Ok(request) => match service.plan(&request) {
                    Plan::Ready(response) => self.respond(request.framing, response),
                    Plan::Blocking(work) => match executor.execute(id, work) {
                        Some(response) => self.respond(request.framing, response),
                        None => {
                            self.waiting = Some(request.framing);
                            queued = false;
                        }
                    },
                },
            }
        }
        queued
    }

    /// Delivers the response to the request whose work was running elsewhere.
    /// The loop should call [`Conn::advance`] afterwards to send it.
    pub fn complete(&mut self, response: Response) {
        let framing = self.waiting.take().unwrap_or(Framing::Line);
        self.respond(framing, response);
    }

    fn respond(&mut self, framing: Framing, response: Response) {
        if let Response::Refused(refusal) = &response {
            self.closing |= refusal.closes_connection();
        }
        self.closing |= framing.closes_after();
        if matches!(response, Response::Content(Body::File { .. })) && self.wants_nodelay == NoDelay::NotNeeded {
            self.wants_nodelay = NoDelay::Needed;
        }
        self.output.push_response(framing, response);
    }

    fn may_start_request(&self) -> bool {
        !self.closing && self.waiting.is_none() && self.output.queued_bytes() < MAX_QUEUED_OUTPUT_BYTES
    }

    /// Whether the loop should want readable events for this connection.
    pub fn wants_read(&self) -> bool {
        self.may_start_request() && !self.peer_closed
    }

    /// Whether the loop should want writable events: only while output is owed.
    pub fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether blocking work for this connection is in flight.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// For a graceful stop: finish the request in flight and what is queued,
    /// start no new request, then close.
    pub fn close_when_done(&mut self) {
        self.closing = true;
    }

    /// Edge-triggered loops call this when an event reports that the peer
    /// hung up (mio's `is_read_closed`): the end of the stream may already
    /// be queued behind the data, and no further event will announce it.
    pub fn note_peer_hung_up(&mut self) {
        self.peer_hung_up = true;
    }

    /// Whether the connection has outlived a time limit at `now`: a
    /// response stalled, a request arriving too slowly, or idle too long.
    /// Work in flight has no deadline (it is the server's own doing).
    pub fn is_expired(&self, now: Instant) -> bool {
        let since = |at: Instant| now.saturating_duration_since(at);
        if self.waiting.is_some() {
            false
        } else if !self.output.is_empty() {
            since(self.last_progress) > self.limits.write_timeout
        } else if let Some(started) = self.request_started.filter(|_| self.parser.has_partial_request()) {
            since(started) > self.limits.request_timeout
        } else {
            since(self.last_progress) > self.limits.idle_timeout
        }
    }

    /// Nothing owed, nothing in flight, and no more requests will be served.
    pub fn is_finished(&self) -> bool {
        self.output.is_empty() && self.waiting.is_none() && (self.closing || self.peer_closed)
    }
}
