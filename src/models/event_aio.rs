//! Stage 4: the event loop with POSIX asynchronous I/O, the book's literal
//! interface (OSTEP 33.6).
//!
//! It extends the `event` model: its one use of that model is
//! [`event::run_with_backend`], built here with this file's backend, [`PosixAio`]
//! (driven by the stage-4 models' shared [`KernelBackend`]).
//!
//! **What it teaches.** `aio_read` takes a control block (`struct aiocb`:
//! the fd, a buffer, a length, an offset) and returns at once; the read
//! happens "in the background". The book then asks how the program learns
//! that it finished: polling `aio_error` in a loop, or a signal. Here the
//! control block asks for a realtime signal on completion
//! (`SIGEV_SIGNAL`), and the signal reaches the loop as an ordinary event:
//! `signal-hook-mio` turns it into a readable pipe in the epoll set. On
//! that event the loop asks `aio_error` of each pending read (never
//! otherwise: no busy polling) and collects the finished ones with
//! `aio_return`.
//!
//! **What glibc does underneath.** Linux has no POSIX AIO system call for
//! buffered files: glibc implements `aio_read` in user space with a pool of
//! helper threads that run plain `pread`, then raise the requested signal.
//! So this model is `event-async` with glibc's threads instead of ours (and
//! a signal instead of an eventfd): the interface is asynchronous, the
//! implementation is threads. (Linux's native `io_submit` AIO is
//! asynchronous only for `O_DIRECT`; io_uring, the `uring` model, is the
//! kernel's real answer.)
//!
//! **Other systems, and the homework's hint.** How a completion is
//! announced is where platforms differ. macOS has no realtime signals, and
//! a plain signal from AIO arrives with `si_code` 0, so it cannot say which
//! read finished (the homework's note); FreeBSD can post completions to a
//! kqueue (`SIGEV_KEVENT`, `EVFILT_AIO`), a filter mio does not expose.
//! So on every system but Linux the model takes the book's other answer:
//! the control block asks for no notification (`SIGEV_NONE`), and while
//! reads are pending the loop wakes every millisecond
//! ([`KernelReads::next_check`]) to ask `aio_error` of each. One
//! [`Notification`] type holds the difference.
//!
//! **Where blocking work runs.** File reads in glibc's AIO threads; fib on
//! `--readers` threads. **Cost.** An `aiocb` (~170 bytes) and a buffer per
//! pending read; one signal per completion.
//!
//! ```text
//! server --model event-aio --root fixtures --read-delay-ms 100
//! ```

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::{Registry, Token};

use crate::backend::{Coalescing, KernelBackend, KernelReads, PendingRead};
use crate::error::ServerError;
use crate::models::event;
use crate::server::Server;

/// Runs the `event-aio` model: the mio loop with reads by `aio_read`.
pub fn run(server: Server) -> Result<(), ServerError> {
    event::run_with_backend(server, |readers, registry, token| {
        KernelBackend::<PosixAio>::open(readers, registry, token).map(Coalescing::new)
    })
}

/// How the loop learns that reads have finished: the one place where the
/// platforms differ (see the module docs).
#[cfg(target_os = "linux")]
mod notification {
    use std::io;
    use std::time::Instant;

    use mio::{Interest, Registry, Token};
    use signal_hook_mio::v1_0::Signals;

    /// A realtime signal per completion, read through the loop's poll.
    pub struct Notification {
        signal: Signals,
    }

    /// The realtime signal glibc raises when a read completes. The first
    /// few realtime signals belong to glibc itself, which `SIGRTMIN()`
    /// accounts for.
    fn aio_signal() -> i32 {
        libc::SIGRTMIN() + 2
    }

    impl Notification {
        pub fn open(registry: &Registry, token: Token) -> io::Result<Notification> {
            let mut signal = Signals::new([aio_signal()])?;
            registry.register(&mut signal, token, Interest::READABLE)?;
            Ok(Notification { signal })
        }

        /// Fills in how a control block asks to be announced.
        pub fn request(sigevent: &mut libc::sigevent) {
            sigevent.sigev_notify = libc::SIGEV_SIGNAL;
            sigevent.sigev_signo = aio_signal();
        }

        /// Whether any read may have finished. Draining the signals first
        /// means a completion racing with the scan raises a new event.
        pub fn any_finished(&mut self) -> bool {
            self.signal.pending().count() > 0
        }

        /// No timer needed: the signal wakes the loop.
        pub fn next_check(&self, _pending: bool) -> Option<Instant> {
            None
        }
    }
}

/// No usable completion signal: poll `aio_error` while reads are pending.
#[cfg(not(target_os = "linux"))]
mod notification {
    use std::io;
    use std::time::{Duration, Instant};

    use mio::{Registry, Token};

    /// How often the loop looks at pending reads.
    const POLL_INTERVAL: Duration = Duration::from_millis(1);

    pub struct Notification;

    impl Notification {
        pub fn open(_registry: &Registry, _token: Token) -> io::Result<Notification> {
            Ok(Notification)
        }

        pub fn request(sigevent: &mut libc::sigevent) {
            sigevent.sigev_notify = libc::SIGEV_NONE;
        }

        pub fn any_finished(&mut self) -> bool {
            true
        }

        pub fn next_check(&self, pending: bool) -> Option<Instant> {
            pending.then(|| Instant::now() + POLL_INTERVAL)
        }
    }
}

pub use notification::Notification;

/// Reads in flight through POSIX AIO.
pub struct PosixAio {
    notification: Notification,
    pending: Vec<(AioRead, PendingRead)>,
}

impl KernelReads for PosixAio {
    fn open(registry: &Registry, token: Token) -> io::Result<PosixAio> {
        Ok(PosixAio { notification: Notification::open(registry, token)?, pending: Vec::new() })
    }

    fn next_check(&self) -> Option<Instant> {
        self.notification.next_check(!self.pending.is_empty())
    }

    fn submit(&mut self, mut read: PendingRead) -> Result<(), (PendingRead, io::Error)> {
        let fd = read.file().as_raw_fd();
        let (buffer, offset) = read.unfilled();
        match AioRead::start(fd, buffer, offset) {
            Ok(aio) => {
                self.pending.push((aio, read));
                Ok(())
            }
            Err(err) => Err((read, err)),
        }
    }

    fn reap(&mut self, finished: &mut Vec<(PendingRead, io::Result<usize>)>) {
        if !self.notification.any_finished() {
            return;
        }
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].0.result() {
                None => i += 1,
                Some(result) => {
                    let (_aio, read) = self.pending.swap_remove(i);
                    finished.push((read, result));
                }
            }
        }
    }
}

impl std::fmt::Debug for PosixAio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosixAio").field("pending", &self.pending.len()).finish()
    }
}

/// One `aio_read` in flight: the syscall boundary. The control block is
/// boxed so its address is stable; the buffer it points into belongs to the
/// [`PendingRead`] kept beside it, whose heap allocation never moves.
/// Dropping an unfinished read cancels it and waits, so glibc never writes
/// into freed memory.
struct AioRead {
    control: Box<libc::aiocb>,
    finished: bool,
}

impl AioRead {
    /// Submits the read of `buffer.len()` bytes of `fd` at `offset`.
    fn start(fd: i32, buffer: &mut [u8], offset: u64) -> io::Result<AioRead> {
        // SAFETY: aiocb is a plain C struct for which all-zero is a valid,
        // empty value (the documented way to initialise one).
        let mut control: Box<libc::aiocb> = Box::new(unsafe { std::mem::zeroed() });
        control.aio_fildes = fd;
        control.aio_buf = buffer.as_mut_ptr().cast();
        control.aio_nbytes = buffer.len();
        control.aio_offset = offset as libc::off_t;
        Notification::request(&mut control.aio_sigevent);
        // SAFETY: the control block is boxed (stable address) and outlives
        // the operation (Drop waits for it); the buffer it names stays
        // allocated and untouched until the read is reaped or waited for,
        // and `fd` stays open because the PendingRead owning it lives as
        // long as this AioRead.
        if unsafe { libc::aio_read(&mut *control) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AioRead { control, finished: false })
    }

    /// `None` while in progress, else the byte count or error.
    fn result(&mut self) -> Option<io::Result<usize>> {
        // SAFETY: the control block was submitted by aio_read and not yet
        // reaped (aio_return is called at most once, below).
        match unsafe { libc::aio_error(&*self.control) } {
            libc::EINPROGRESS => None,
            status => {
                self.finished = true;
                // SAFETY: the operation is complete (aio_error said so);
                // aio_return releases its resources, exactly once.
                let returned = unsafe { libc::aio_return(&mut *self.control) };
                Some(if status == 0 { Ok(returned as usize) } else { Err(io::Error::from_raw_os_error(status)) })
            }
        }
    }
}

impl Drop for AioRead {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // SAFETY: cancelling a submitted operation on its own fd is allowed
        // whatever its state.
        unsafe { libc::aio_cancel(self.control.aio_fildes, &mut *self.control) };
        while self.result().is_none() {
            let list = [&*self.control as *const libc::aiocb];
            // SAFETY: `list` holds one pointer to a live, submitted control
            // block; a null timeout waits until it completes.
            unsafe { libc::aio_suspend(list.as_ptr(), 1, std::ptr::null()) };
        }
    }
}
