//! What the process-based models (`fork`, `prefork`) share: a parent that
//! receives signals without handlers, forks children, and reaps them.
//!
//! **Why the parent's signals need care.** A child created by `fork`
//! inherits its parent's signal handlers and every fd the handlers write to.
//! With the self-pipe of `signal-hook`, a signal sent to a child would be
//! written into the *parent's* pipe: forward a `SIGHUP` to a worker and it
//! comes back to the parent as a new `SIGHUP`, forever.
//!
//! * On Linux the parent blocks its signals and reads them from a
//!   `signalfd`: no handler exists to be inherited, and a child starts with
//!   a clean slate and unblocks what it wants.
//! * Elsewhere (macOS, FreeBSD: no `signalfd`) the parent installs
//!   `signal-hook` handlers that set a flag and write to a pipe, and a new
//!   child unregisters them (`forget_parent_handlers`) before it installs
//!   its own. The signals stay blocked across the `fork`, so none can reach
//!   an inherited handler in between.
//!
//! Either way the parent stays single-threaded, so `fork` is safe.

use std::collections::HashSet;
use std::os::fd::AsFd;

use rustix::process::{waitpid, WaitOptions};

use crate::error::ServerError;
use crate::signals::SignalAction;
use crate::sys::{self, Forked, Pid, Signal, SignalSet};

#[cfg(not(target_os = "linux"))]
pub use handlers::{forget_parent_handlers, ParentSignals};
#[cfg(target_os = "linux")]
pub use signalfd::ParentSignals;

/// Every signal the parent blocks; a child forked by [`fork_child`] keeps
/// them blocked until it has its own handlers, then calls [`unblock_all`].
pub const ALL_BLOCKED: [Signal; 4] = [Signal::HUP, Signal::INT, Signal::TERM, Signal::CHILD];

/// The signals a process-model parent handles: the usual three, plus
/// `SIGCHLD` to learn that a child has exited.
fn parent_signals() -> SignalSet {
    SignalSet::of(&ALL_BLOCKED)
}

/// What the parent learned from the signals that arrived.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrived {
    /// Cache clears and stops asked for, in order.
    pub actions: Vec<SignalAction>,
    /// A child exited: reap.
    pub child_exited: bool,
}

/// Reads the parent's signals from a `signalfd` (Linux).
#[cfg(target_os = "linux")]
mod signalfd {
    use std::os::fd::{AsFd, BorrowedFd};

    use super::{parent_signals, Arrived};
    use crate::error::ServerError;
    use crate::signals;
    use crate::sys::{Signal, SignalFd};

    /// The parent's signals, blocked and readable from an fd.
    #[derive(Debug)]
    pub struct ParentSignals {
        fd: SignalFd,
    }

    impl ParentSignals {
        /// Blocks the signals and opens the signalfd. Call it while the
        /// process is single-threaded: a thread started earlier would keep
        /// the signals unblocked and receive them instead.
        pub fn block() -> Result<ParentSignals, ServerError> {
            parent_signals().block().map_err(ServerError::io("cannot block signals"))?;
            let fd = SignalFd::open(&parent_signals()).map_err(ServerError::io("cannot open a signalfd"))?;
            Ok(ParentSignals { fd })
        }

        /// Reads every signal that has arrived, without waiting.
        pub fn take(&mut self) -> Arrived {
            let mut arrived = Arrived::default();
            while let Some(number) = self.fd.read() {
                if number == Signal::CHILD.as_raw() {
                    arrived.child_exited = true;
                } else {
                    arrived.actions.extend(signals::action_for(number));
                }
            }
            arrived
        }
    }

    impl AsFd for ParentSignals {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }
}

/// Catches the parent's signals with handlers that set flags and wake a
/// pipe (systems without `signalfd`).
#[cfg(not(target_os = "linux"))]
mod handlers {
    use std::io::Read;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use signal_hook::SigId;

    use super::{Arrived, ALL_BLOCKED};
    use crate::error::ServerError;
    use crate::signals;

    /// The handlers' ids: a forked child unregisters them.
    static PARENT_HANDLERS: Mutex<Vec<SigId>> = Mutex::new(Vec::new());

    /// The parent's signals: a flag each, and a pipe that wakes `poll`.
    #[derive(Debug)]
    pub struct ParentSignals {
        wake: UnixStream,
        flags: Vec<(i32, Arc<AtomicBool>)>,
    }

    impl ParentSignals {
        /// Installs the handlers.
        pub fn block() -> Result<ParentSignals, ServerError> {
            let io = ServerError::io("cannot install signal handlers");
            let (wake, writer) = UnixStream::pair().map_err(&io)?;
            wake.set_nonblocking(true).map_err(&io)?;
            writer.set_nonblocking(true).map_err(&io)?;
            let mut ids = PARENT_HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
            let mut flags = Vec::new();
            for signal in ALL_BLOCKED {
                let flag = Arc::new(AtomicBool::new(false));
                ids.push(signal_hook::flag::register(signal.as_raw(), Arc::clone(&flag)).map_err(&io)?);
                let pipe = writer.try_clone().map_err(&io)?;
                ids.push(signal_hook::low_level::pipe::register(signal.as_raw(), pipe).map_err(&io)?);
                flags.push((signal.as_raw(), flag));
            }
            Ok(ParentSignals { wake, flags })
        }

        /// Reads every signal that has arrived, without waiting.
        pub fn take(&mut self) -> Arrived {
            let mut drained = [0u8; 64];
            while matches!((&self.wake).read(&mut drained), Ok(n) if n > 0) {}
            let mut arrived = Arrived::default();
            for (signal, flag) in &self.flags {
                if flag.swap(false, Ordering::SeqCst) {
                    if *signal == signal_hook::consts::SIGCHLD {
                        arrived.child_exited = true;
                    } else {
                        arrived.actions.extend(signals::action_for(*signal));
                    }
                }
            }
            arrived
        }
    }

    impl AsFd for ParentSignals {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.wake.as_fd()
        }
    }

    /// In a freshly forked child: drops the handlers inherited from the
    /// parent (they would write into the parent's pipe).
    pub fn forget_parent_handlers() {
        for id in PARENT_HANDLERS.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl ParentSignals {
    /// Waits up to `timeout` (forever if `None`) for a signal.
    pub fn wait(&mut self, timeout: Option<std::time::Duration>) -> Arrived {
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(self.as_fd(), rustix::event::PollFlags::IN)];
        let timeout = timeout
            .map(|t| rustix::event::Timespec::try_from(t).unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 }));
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        self.take()
    }
}

/// Forks; the child runs `child` and exits with status 0, the parent gets
/// the child's pid. The child starts with every signal in [`ALL_BLOCKED`]
/// still blocked, so none is lost or fatal before `child` has installed
/// its own handling and called [`unblock_all`].
pub fn fork_child(child: impl FnOnce()) -> Result<Pid, ServerError> {
    let parent = rustix::process::getpid();
    // Where the parent catches signals with handlers, none may run in the
    // child before the child has replaced them: blocked across the fork.
    #[cfg(not(target_os = "linux"))]
    let _ = parent_signals().block();
    // SAFETY: the parent is single-threaded (see ParentSignals::block), so
    // the child is a complete copy with no lock held by a vanished thread;
    // it runs ordinary Rust code and leaves through exit.
    let forked = unsafe { sys::fork() };
    #[cfg(not(target_os = "linux"))]
    if matches!(forked, Ok(Forked::Parent(_)) | Err(_)) {
        let _ = parent_signals().unblock();
    }
    match forked {
        Ok(Forked::Parent(child)) => Ok(child),
        Ok(Forked::Child) => {
            // If the parent is killed outright (SIGKILL leaves it no chance
            // to stop its children), the kernel sends this child SIGTERM:
            // no orphan keeps serving on the parent's port. The parent may
            // already be gone before the request was made: check.
            #[cfg(target_os = "linux")]
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
            if rustix::process::getppid() != Some(parent) {
                std::process::exit(0);
            }
            #[cfg(not(target_os = "linux"))]
            forget_parent_handlers();
            child();
            // Nothing of the parent's is left unflushed (stdout is flushed
            // right after the `listening on` line), so a plain exit is safe.
            std::process::exit(0)
        }
        Err(err) => Err(ServerError::io("fork")(err)),
    }
}

/// Unblocks every signal the parent blocked (a worker calls this once its
/// own handlers are installed).
pub fn unblock_all() {
    let _ = parent_signals().unblock();
}

/// Reaps every exited child among `children`, without waiting; returns their pids.
pub fn reap(children: &mut HashSet<Pid>) -> Vec<Pid> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None, WaitOptions::NOHANG) {
            Ok(Some((pid, status))) if status.exited() || status.signaled() => {
                children.remove(&pid);
                reaped.push(pid);
            }
            Ok(None) | Err(_) => return reaped,
            Ok(Some(_)) => {} // stopped or continued: still alive
        }
    }
}

/// Sends `signal` to every child.
pub fn signal_all(children: &HashSet<Pid>, signal: Signal) {
    for &pid in children {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// After a stop: waits for the children to exit, at most
/// [`STOP_GRACE`](crate::signals::STOP_GRACE), then kills the rest.
pub fn wait_for_children(signals: &mut ParentSignals, children: &mut HashSet<Pid>) {
    let deadline = std::time::Instant::now() + crate::signals::STOP_GRACE;
    reap(children);
    while !children.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            signal_all(children, Signal::KILL);
            while !children.is_empty() {
                match waitpid(None, WaitOptions::empty()) {
                    Ok(Some((pid, _))) => {
                        children.remove(&pid);
                    }
                    Ok(None) | Err(_) => return,
                }
            }
            return;
        }
        signals.wait(Some(left));
        reap(children);
    }
}
