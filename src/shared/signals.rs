//! Signals: `SIGHUP` clears the cache, `SIGINT`/`SIGTERM` stop gracefully.
//!
//! A signal handler may do almost nothing safely, so no model acts inside
//! one. `signal-hook` turns each signal into something the model already
//! waits on:
//!
//! * mio loops register [`signal_hook_mio::v1_0::Signals`] in their `Poll`;
//! * `select`/`poll` loops watch a [`SelfPipe`] (the classic self-pipe trick:
//!   the handler writes a byte, the loop sees the pipe readable);
//! * blocking models run [`spawn_watcher`], a thread that waits for signals.

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

/// The self-pipe for loops that wait with `select(2)` or `poll(2)`: one pipe
/// per kind of request, so the loop knows which signal arrived.
#[derive(Debug)]
pub struct SelfPipe {
    clear: UnixStream,
    stop: UnixStream,
    // The write ends stay open as long as the handlers may write to them.
    _writers: [UnixStream; 2],
}

impl SelfPipe {
    /// Installs handlers that write a byte to the pipes.
    pub fn install() -> io::Result<SelfPipe> {
        let (clear, clear_writer) = UnixStream::pair()?;
        let (stop, stop_writer) = UnixStream::pair()?;
        for stream in [&clear, &stop, &clear_writer, &stop_writer] {
            stream.set_nonblocking(true)?;
        }
        signal_hook::low_level::pipe::register(SIGHUP, clear_writer.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGINT, stop_writer.try_clone()?)?;
        signal_hook::low_level::pipe::register(SIGTERM, stop_writer.try_clone()?)?;
        Ok(SelfPipe { clear, stop, _writers: [clear_writer, stop_writer] })
    }

    /// The fds to wait on for readability.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.clear.as_fd(), self.stop.as_fd()]
    }

    /// Empties the pipes and returns what was asked since the last call.
    pub fn take(&mut self) -> Vec<SignalAction> {
        let mut actions = Vec::new();
        if drain(&mut self.clear) {
            actions.push(SignalAction::ClearCache);
        }
        if drain(&mut self.stop) {
            actions.push(SignalAction::Stop);
        }
        actions
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
