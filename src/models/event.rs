//! Stage 2: the event loop on epoll, via mio ("Sync I/O" in the benchmark).
//!
//! **What it teaches.** The loop of `select`/`poll`, with the interest list
//! kept *in the kernel*: each socket is registered once, and `epoll_wait`
//! returns only the ready ones, so a wake-up costs O(ready), not
//! O(connections). mio's epoll is edge-triggered: an event says "something
//! changed", so the handler must read and write until `WouldBlock` (which
//! [`Conn::advance`](crate::conn::Conn::advance) does) or it will never hear
//! of that socket again. WRITABLE is asked for once output is first owed.
//!
//! **Where blocking work runs.** In the loop thread: file reads (and fib)
//! block every other client while they run. That is deliberate: it is the
//! "Sync I/O" half of the homework's comparison. The asynchronous models
//! reuse this very loop ([`run_with_backend`]) and only change *where the work runs*
//! by opening another [`Executor`]: [`Inline`] here, `ThreadPoolReads` (its
//! reads merged by `Coalescing`) in `event-async`.
//!
//! **Cost.** One thread; per client a socket, a `Conn`, and an epoll entry.
//! Syscalls per cached request: one `epoll_wait` (shared), one `read`,
//! one `writev`, one `read` returning `WouldBlock`.
//!
//! ```text
//! server --root fixtures               # the default model is `event`
//! client 0 ./test.txt
//! kill -HUP <pid>                      # clears the cache
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook_mio::v1_0::Signals;

use crate::backend::Open;
use crate::conn::{ConnId, Executor, Inline};
use crate::connections::{Connection, Connections};
use crate::error::ServerError;
use crate::fan_out::{self, Seat};
use crate::lifecycle::Lifecycle;
use crate::net::{self, Accepted};
use crate::server::Server;
use crate::service::Service;
use crate::signals;
use crate::trace;

// The loop's own tokens, at the top of the range: connections are
// `Token(id.to_usize())`, and slab ids never come near these.
const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const COMPLETIONS: Token = Token(usize::MAX - 2);

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// Runs the `event` model: the loop below with blocking work inline.
pub fn run(server: Server) -> Result<(), ServerError> {
    run_with_backend(server, |_readers, _registry, _token| Ok(Inline))
}

/// The mio event loop, shared by `event`, `event-async`, `event-aio` and
/// `uring`; they differ only in the backend each loop opens with `open`.
/// With `--workers N`, [`fan_out`] runs N of these loops.
pub fn run_with_backend<B: Executor>(server: Server, open: Open<B>) -> Result<(), ServerError> {
    fan_out::run_per_worker(&server, |server, seat| event_loop(server, seat, open))
}

/// One event loop, accepting on its seat's listener until stopped.
fn event_loop<B: Executor>(server: &Server, seat: Seat<'_>, open: Open<B>) -> Result<(), ServerError> {
    let listener = seat.listener;
    let set_up = || -> io::Result<_> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        listener.set_nonblocking(true)?;
        registry.register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new(seat.signals())?;
        registry.register(&mut signals, SIGNALS, Interest::READABLE)?;
        let backend = open(server.config.readers, &registry, COMPLETIONS)?;
        Ok((poll, registry, signals, backend))
    };
    let Some((mut poll, registry, mut signals, mut backend)) = seat.take_place(set_up())? else {
        return Ok(()); // another loop failed to start, and says why
    };
    let service = &server.service;
    let mut connections = Connections::new(seat.max_open_conns(), server.limits);
    let mut lifecycle = Lifecycle::default();
    let mut events = Events::with_capacity(EVENTS_PER_WAIT);
    let mut done = Vec::new();
    while !lifecycle.should_exit(connections.len()) {
        // 1. Wait for events (or until a timer of the loop or the backend is due).
        let _turn = trace::span("turn"); // --trace: the turn, its wait, then its handling
        let backend_due = backend.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
        let timeout = [lifecycle.wait_timeout(connections.len()), backend_due].into_iter().flatten().min();
        let mut wait = trace::span("wait");
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ServerError::io("epoll_wait")(err)),
        }
        wait.arg("events", || events.iter().count() as u64);
        drop(wait);
        let _handle = trace::span("handle");

        // 2. Handle each ready source.
        for event in events.iter() {
            match event.token() {
                LISTENER if lifecycle.is_accepting() => {
                    accept(listener, &mut connections, &mut lifecycle, service, &mut backend, &registry)
                }
                LISTENER => {}
                SIGNALS => {
                    for action in signals.pending().filter_map(signals::action_for) {
                        if lifecycle.on_signal(action, service, connections.len()) {
                            connections.finish_all(service, &mut backend);
                        }
                    }
                    if lifecycle.is_stopping() {
                        let _ = registry.deregister(&mut SourceFd(&listener.as_raw_fd()));
                    }
                }
                COMPLETIONS => {} // collected below, every turn
                Token(packed) => {
                    let id = ConnId::from_usize(packed);
                    connections.advance(id, service, &mut backend);
                    update_interest(&registry, &mut connections, id);
                }
            }
        }

        // 3. Resume connections whose work finished elsewhere. Collected
        // every turn, not only on their event, so that a delayed
        // completion due now is not missed.
        backend.completed(&mut done);
        for (id, response) in done.drain(..) {
            connections.complete(id, response, service, &mut backend);
            update_interest(&registry, &mut connections, id);
        }

        // 4. Housekeeping: time limits, and accepts paused for lack of fds
        // (no event will announce that some were freed).
        if lifecycle.sweep_is_due() {
            connections.close_expired();
        }
        if lifecycle.pause_has_ended() && lifecycle.is_accepting() {
            accept(listener, &mut connections, &mut lifecycle, service, &mut backend, &registry);
        }
    }
    Ok(())
}

/// Accepts every connection waiting on the listener (edge-triggered: all
/// of them, until `WouldBlock`), does what it can for each at once, and
/// registers those still open. Out of fds, accepting pauses briefly.
fn accept(
    listener: &TcpListener,
    connections: &mut Connections<TcpStream>,
    lifecycle: &mut Lifecycle,
    service: &Service,
    backend: &mut impl Executor,
    registry: &Registry,
) {
    loop {
        let stream = match net::accept(listener, true) {
            Accepted::Connection(stream) => stream,
            Accepted::Retry => continue,
            Accepted::Drained => return,
            Accepted::Pause => return lifecycle.pause_accepting(),
        };
        let Some(id) = connections.admit(stream, service, backend) else { continue };
        let Some(connection) = connections.get_mut(id) else { continue };
        let fd = connection.socket.as_raw_fd();
        connection.writable_registered = connection.conn.wants_write();
        if registry.register(&mut SourceFd(&fd), Token(id.to_usize()), interest(connection)).is_err() {
            // Cannot watch it: drop it rather than leave it hanging.
            connections.remove(id);
        }
    }
}

fn interest(connection: &Connection<TcpStream>) -> Interest {
    if connection.writable_registered {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// Asks for WRITABLE the first time output is owed, and keeps it. With
/// edge-triggered epoll a writable event comes only when a full send
/// buffer drains, so a connection whose responses fit in one write never
/// hears of it, and one that streams large files saves two `epoll_ctl`
/// calls per response (on, then off again).
fn update_interest(registry: &Registry, connections: &mut Connections<TcpStream>, id: ConnId) {
    let Some(connection) = connections.get_mut(id) else { return };
    if connection.writable_registered || !connection.conn.wants_write() {
        return;
    }
    connection.writable_registered = true;
    let fd = connection.socket.as_raw_fd();
    if registry.reregister(&mut SourceFd(&fd), Token(id.to_usize()), interest(connection)).is_err() {
        connections.remove(id);
    }
}
