//! Stage 3: the event loop on epoll, via mio ("Sync I/O" in the benchmark).
//!
//! **What it teaches.** The loop of `select`/`poll`, with the interest list
//! kept *in the kernel*: each socket is registered once, and `epoll_wait`
//! returns only the ready ones, so a wake-up costs O(ready), not
//! O(connections). mio's epoll is edge-triggered: an event says "something
//! changed", so the handler must read and write until `WouldBlock` (which
//! [`Conn::advance`](crate::conn::Conn::advance) does) or it will never hear
//! of that socket again. WRITABLE is asked for only while output is owed.
//!
//! **Where blocking work runs.** In the loop thread: file reads (and fib)
//! block every other client while they run. That is deliberate: it is the
//! "Sync I/O" half of the homework's comparison. The asynchronous models
//! reuse this very loop ([`run_loop`]) and only change *where the work runs*
//! by passing another [`Backend`].
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook_mio::v1_0::Signals;

use crate::backend::Backend;
use crate::clients::{Client, Clients};
use crate::conn::{ConnId, Inline};
use crate::error::ServerError;
use crate::models::Server;
use crate::net;
use crate::service::Service;
use crate::signals::{self, HANDLED, STOP_SIGNALS};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const COMPLETIONS: Token = Token(2);

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

/// Runs the `event` model: the loop below with blocking work inline.
pub fn run(server: Server) -> Result<(), ServerError> {
    run_loop(server, |_registry, _token| Ok(Inline))
}

/// The mio event loop, shared by `event`, `event-async`, `event-aio` and
/// `uring`; they differ only in the backend `make_backend` builds. It is
/// given the registry and the token under which to register whatever
/// source announces completed work.
///
/// With `--threads N`, N such loops run on N threads, each with its own
/// `SO_REUSEPORT` listener on the same port (the kernel spreads new
/// connections across them), its own backend, and the one shared service
/// and cache. Only the first loop handles `SIGHUP`, so the cache is cleared
/// (and logged) once; every loop handles `SIGINT`/`SIGTERM`.
pub fn run_loop<B: Backend>(
    server: Server,
    make_backend: impl Fn(&Registry, Token) -> io::Result<B> + Sync,
) -> Result<(), ServerError> {
    let loops = server.config.threads.unwrap_or(1);
    let local = server.listener.local_addr().map_err(ServerError::io("cannot read the bound address"))?;
    let extra_listeners: Vec<TcpListener> = (1..loops).map(|_| net::listen(local, true)).collect::<Result<_, _>>()?;
    let start = StartLine { ready: Barrier::new(loops), failed: AtomicBool::new(false) };
    std::thread::scope(|scope| {
        let others: Vec<_> = extra_listeners
            .iter()
            .enumerate()
            .map(|(i, listener)| {
                let (server, start, make_backend) = (&server, &start, &make_backend);
                scope.spawn(move || one_loop(server, listener, i + 1, start, make_backend))
            })
            .collect();
        let first = one_loop(&server, &server.listener, 0, &start, &make_backend);
        others.into_iter().map(|other| other.join().expect("an event loop panicked")).fold(first, Result::and)
    })
}

/// Lets every loop finish its set-up before the server announces itself.
struct StartLine {
    ready: Barrier,
    failed: AtomicBool,
}

/// One event loop: loop `index` of `--threads`, on `listener`.
fn one_loop<B: Backend>(
    server: &Server,
    listener: &TcpListener,
    index: usize,
    start: &StartLine,
    make_backend: &(impl Fn(&Registry, Token) -> io::Result<B> + Sync),
) -> Result<(), ServerError> {
    let set_up = || -> io::Result<_> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        listener.set_nonblocking(true)?;
        registry.register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
        let handled: &[i32] = if index == 0 { &HANDLED } else { &STOP_SIGNALS };
        let mut signals = Signals::new(handled)?;
        registry.register(&mut signals, SIGNALS, Interest::READABLE)?;
        let backend = make_backend(&registry, COMPLETIONS)?;
        Ok((poll, registry, signals, backend))
    };
    let ready = set_up();
    if ready.is_err() {
        start.failed.store(true, Ordering::SeqCst);
    }
    start.ready.wait();
    let (mut poll, registry, mut signals, mut backend) =
        ready.map_err(ServerError::io("cannot set up the event loop"))?;
    if start.failed.load(Ordering::SeqCst) {
        return Ok(()); // another loop failed and reports why
    }
    if index == 0 {
        server.announce()?;
    }
    let Server { service, limits, max_conns, config, .. } = server;
    let loops = config.threads.unwrap_or(1);

    let mut clients = Clients::new(max_conns.div_ceil(loops), *limits);
    let mut events = Events::with_capacity(EVENTS_PER_WAIT);
    let mut done = Vec::new();
    while !clients.should_exit() {
        let timeout =
            [clients.wait_timeout(), backend.next_deadline().map(|at| at.saturating_duration_since(Instant::now()))]
                .into_iter()
                .flatten()
                .min();
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ServerError::io("epoll_wait")(err)),
        }
        for event in events.iter() {
            match event.token() {
                LISTENER if clients.is_accepting() => accept(listener, &mut clients, service, &mut backend, &registry),
                LISTENER => {}
                SIGNALS => {
                    for signal in signals.pending() {
                        if let Some(request) = signals::request_for(signal) {
                            clients.on_signal(request, service, &mut backend);
                        }
                    }
                    if clients.is_stopping() {
                        let _ = registry.deregister(&mut SourceFd(&listener.as_raw_fd()));
                    }
                }
                COMPLETIONS => {}
                Token(id) => {
                    if event.is_read_closed() {
                        if let Some(client) = clients.get_mut(id) {
                            client.conn.note_peer_hung_up();
                        }
                    }
                    clients.advance(id, service, &mut backend);
                    update_interest(&registry, &mut clients, id);
                }
            }
        }
        // Completions are collected every turn, not only on their event, so
        // that a delayed completion due now is not missed.
        backend.completed(&mut done);
        for (id, response) in done.drain(..) {
            clients.complete(id, response, service, &mut backend);
            update_interest(&registry, &mut clients, id);
        }
        clients.close_expired();
        // Out of fds earlier: no event will announce that some were freed.
        if clients.is_accept_paused() && clients.is_accepting() {
            accept(listener, &mut clients, service, &mut backend, &registry);
        }
    }
    Ok(())
}

fn accept(
    listener: &TcpListener,
    clients: &mut Clients<TcpStream>,
    service: &Service,
    backend: &mut impl Backend,
    registry: &Registry,
) {
    for id in clients.accept_pending(listener, service, backend, |_| true) {
        let Some(client) = clients.get_mut(id) else { continue };
        let fd = client.socket.as_raw_fd();
        client.writable_registered = client.conn.wants_write();
        if registry.register(&mut SourceFd(&fd), Token(id), interest(client)).is_err() {
            // Cannot watch it: drop it rather than leave it hanging.
            clients.remove(id);
        }
    }
}

fn interest(client: &Client<TcpStream>) -> Interest {
    if client.writable_registered {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// Asks for WRITABLE only while output is owed: with edge-triggered epoll an
/// always-on WRITABLE would wake the loop after every write for nothing.
fn update_interest(registry: &Registry, clients: &mut Clients<TcpStream>, id: ConnId) {
    let Some(client) = clients.get_mut(id) else { return };
    if client.conn.wants_write() == client.writable_registered {
        return;
    }
    client.writable_registered = client.conn.wants_write();
    let fd = client.socket.as_raw_fd();
    if registry.reregister(&mut SourceFd(&fd), Token(id), interest(client)).is_err() {
        clients.remove(id);
    }
}
