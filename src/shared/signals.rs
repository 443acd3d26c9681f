//! Signals: `SIGHUP` clears the cache, `SIGINT`/`SIGTERM` stop gracefully.
//!
//! A signal handler may do almost nothing safely, so no model acts inside
//! one. `signal-hook` turns each signal into something the model already
//! waits on:
//!
//! * mio loops register [`signal_hook_mio::v1_0::Signals`] in their `Poll`;
//! * `select`/`poll` loops watch a [`SelfPipe`] (the classic self-pipe trick:
//!   the handler writes a byte, the loop sees the pipe readable);
//! * blocking models run [`spawn_watcher`], a thread that waits for signals;
//! * `tokio` awaits tokio's own signal streams, and `uring-net` keeps a
//!   read of a self-pipe submitted on its ring;
//! * the parents of `fork` and `prefork` read a `signalfd` (`process.rs`).
//!
//! `docs/design.md` ("Signals, per model") says which model uses which, and why.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::log::{always, info};
use crate::service::Service;

/// How long a graceful stop waits for in-flight responses before exiting anyway.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The signals every model handles.
pub const HANDLED: [i32; 3] = [SIGHUP, SIGINT, SIGTERM];

/// The signals that ask for a graceful stop.
pub const STOP_SIGNALS: [i32; 2] = [SIGINT, SIGTERM];

/// What a signal asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// `SIGHUP`: drop every cached file.
    ClearCache,
    /// `SIGINT`/`SIGTERM`: stop accepting, finish in-flight responses, exit 0.
    Stop,
}

/// Maps a raw signal number to what it asks for.
pub fn action_for(signal: i32) -> Option<SignalAction> {
    match signal {
        SIGHUP => Some(SignalAction::ClearCache),
        SIGINT | SIGTERM => Some(SignalAction::Stop),
        _ => None,
    }
}

/// Clears the cache and logs `cache cleared: <files> files, <bytes> bytes`.
pub fn clear_cache(service: &Service) {
    let cleared = service.cache().clear();
    crate::trace::instant(
        "SIGHUP: cache cleared",
        [Some(("files", cleared.files as u64)), Some(("bytes", cleared.bytes))],
    );
    always!("cache cleared: {} files, {} bytes", cleared.files, cleared.bytes);
}

/// Logs that a stop has begun.
pub fn log_stopping(in_flight: usize) {
    let connections = if in_flight == 1 { "connection" } else { "connections" };
    info!("stopping: finishing {in_flight} {connections} (at most {}s)", STOP_GRACE.as_secs());
}

/// The self-pipe trick, for loops that can wait only on fds (`select(2)`,
/// `poll(2)`, and `uring-net`, which reads the pipes through its ring): a
/// handler per signal writes a byte to that signal's pipe, and the loop
/// sees the read end readable. One pipe per signal, so the loop knows
/// which arrived. Dropping it removes the handlers.
#[derive(Debug)]
pub struct SelfPipe {
    /// Each signal handled, with the read end of its pipe.
    pipes: Vec<(i32, UnixStream)>,
    /// The handlers, removed on drop (they own the write ends).
    handlers: Vec<signal_hook::SigId>,
}

impl SelfPipe {
    /// Installs handlers for `signals` that write a byte to their pipes.
    pub fn install(signals: &[i32]) -> io::Result<SelfPipe> {
        let mut self_pipe = SelfPipe { pipes: Vec::new(), handlers: Vec::new() };
        for &signal in signals {
            let (reader, writer) = UnixStream::pair()?;
            reader.set_nonblocking(true)?;
            writer.set_nonblocking(true)?; // the handler must never block
            self_pipe.handlers.push(signal_hook::low_level::pipe::register(signal, writer)?);
            self_pipe.pipes.push((signal, reader));
        }
        Ok(self_pipe)
    }

    /// The fds to wait on for readability.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pipes.iter().map(|(_, reader)| reader.as_fd())
    }

    /// How many pipes (one per signal) there are.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by uring-net only, which is Linux's
    pub fn len(&self) -> usize {
        self.pipes.len()
    }

    /// Pipe `index`: its signal and its read end.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by uring-net only, which is Linux's
    pub fn pipe(&self, index: usize) -> (i32, &UnixStream) {
        let (signal, reader) = &self.pipes[index];
        (*signal, reader)
    }

    /// Empties the pipes and returns what was asked since the last call.
    pub fn take(&mut self) -> Vec<SignalAction> {
        let mut actions = Vec::new();
        for (signal, reader) in &mut self.pipes {
            if drain(reader) {
                actions.extend(action_for(*signal));
            }
        }
        actions.dedup(); // SIGINT and SIGTERM both ask for one stop
        actions
    }
}

impl Drop for SelfPipe {
    fn drop(&mut self) {
        for handler in self.handlers.drain(..) {
            signal_hook::low_level::unregister(handler);
        }
    }
}

fn drain(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    let mut any = false;
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        any |= n > 0;
    }
    any
}

/// For blocking models: a thread that clears the cache on `SIGHUP` and, on
/// `SIGINT`/`SIGTERM`, calls `on_stop` (which returns how many connections
/// are still being served) then exits the process after [`STOP_GRACE`] if
/// the model has not finished by itself.
pub fn spawn_watcher(service: Arc<Service>, on_stop: impl FnOnce() -> usize + Send + 'static) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new(HANDLED)?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut on_stop = Some(on_stop);
        for signal in signals.forever() {
            match action_for(signal) {
                Some(SignalAction::ClearCache) => clear_cache(&service),
                Some(SignalAction::Stop) => {
                    if let Some(stop) = on_stop.take() {
                        crate::trace::instant("stop signal", [None; 2]); // before the model can end and write the trace
                        log_stopping(stop());
                        std::thread::spawn(|| {
                            std::thread::sleep(STOP_GRACE);
                            info!("stop grace period over: exiting with connections unfinished");
                            std::process::exit(0);
                        });
                    }
                }
                None => {}
            }
        }
    })?;
    Ok(())
}
