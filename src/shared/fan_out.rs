//! `--workers N` for the event models (and `tokio --runtime
//! current-thread-per-core`): N copies of one event loop, each on its own
//! thread and its own `SO_REUSEPORT` listener on the same port (the kernel
//! spreads new connections across them), sharing the one service and cache.
//!
//! Kept apart from the loop itself, which reads the same with one worker
//! or many. Only the first loop handles `SIGHUP`, so the cache is cleared
//! (and logged) once; every loop handles `SIGINT`/`SIGTERM`. The server is
//! announced once every loop is set up, or not at all if one failed.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use crate::error::ServerError;
use crate::net::{self, ListenOptions};
use crate::server::Server;
use crate::signals::{HANDLED, STOP_SIGNALS};

/// One loop's place among the workers.
#[derive(Debug)]
pub struct Seat<'a> {
    /// The listener this loop accepts on.
    pub listener: &'a TcpListener,
    server: &'a Server,
    is_first: bool,
    start: &'a StartLine,
}

/// Lets every loop finish its set-up before the server announces itself.
#[derive(Debug)]
struct StartLine {
    ready: Barrier,
    failed: AtomicBool,
}

impl Seat<'_> {
    /// The signals this loop handles (only the first clears the cache).
    pub fn signals(&self) -> &'static [i32] {
        if self.is_first {
            &HANDLED
        } else {
            &STOP_SIGNALS
        }
    }

    /// Whether this is the first loop (the one that announces the server).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // called by uring-net only, which is Linux's
    pub fn is_first(&self) -> bool {
        self.is_first
    }

    /// This loop's share of `--max-conns`.
    pub fn max_open_conns(&self) -> usize {
        self.server.max_open_conns.div_ceil(self.server.workers)
    }

    /// Called by each loop with the outcome of its set-up: waits for every
    /// other loop, then the first announces the server. `None` when another
    /// loop failed (that loop reports why).
    pub fn take_place<T>(&self, set_up: io::Result<T>) -> Result<Option<T>, ServerError> {
        if set_up.is_err() {
            self.start.failed.store(true, Ordering::SeqCst);
        }
        self.start.ready.wait();
        let set_up = set_up.map_err(ServerError::io("cannot set up the event loop"))?;
        if self.start.failed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if self.is_first {
            self.server.announce()?;
        }
        Ok(Some(set_up))
    }
}

/// Runs `one_loop` once per worker, each with its [`Seat`], and returns
/// when all have returned: the first error, if any.
pub fn run_per_worker(
    server: &Server,
    one_loop: impl Fn(&Server, Seat<'_>) -> Result<(), ServerError> + Sync,
) -> Result<(), ServerError> {
    let local = server.listener.local_addr().map_err(ServerError::io("cannot read the bound address"))?;
    let extra_listeners: Vec<TcpListener> = (1..server.workers)
        .map(|_| net::listen(local, ListenOptions { reuse_port: true, ..server.listen_options }))
        .collect::<Result<_, _>>()?;
    let start = StartLine { ready: Barrier::new(server.workers), failed: AtomicBool::new(false) };
    let seat = |listener, is_first| Seat { listener, server, is_first, start: &start };
    std::thread::scope(|scope| {
        let others: Vec<_> = extra_listeners
            .iter()
            .map(|listener| {
                let (one_loop, seat) = (&one_loop, seat(listener, false));
                scope.spawn(move || one_loop(server, seat))
            })
            .collect();
        let mut outcome = one_loop(server, seat(&server.listener, true));
        for other in others {
            let other =
                other.join().unwrap_or_else(|_| Err(ServerError::io("an event loop")(io::Error::other("panicked"))));
            outcome = outcome.and(other);
        }
        outcome
    })
}
