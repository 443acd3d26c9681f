//! The syscall layer: the server calls the system through rustix, and here,
//! in one place, are the few calls rustix does not offer (for `fork` and
//! `prefork`: `fork` itself, signal masks and Linux's `signalfd`; for the
//! listener: `TCP_DEFER_ACCEPT`), each
//! `unsafe` block with the reason it is sound. A model reads as a
//! listing of system calls; the raw C interface stays below this line.

use std::io;

pub use rustix::process::{Pid, Signal};

/// A set of signals (`sigset_t`), for blocking them or reading them from a
/// [`SignalFd`].
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl std::fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalSet")
    }
}

impl SignalSet {
    /// The set of `signals` (`sigemptyset(3)`, `sigaddset(3)`).
    pub fn of(signals: &[Signal]) -> SignalSet {
        // SAFETY: sigemptyset initialises the zeroed set it is given, and
        // sigaddset only writes into that set; a named Signal is valid.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in signals {
                libc::sigaddset(&mut set, signal.as_raw());
            }
            SignalSet(set)
        }
    }

    /// Blocks the set for the calling thread (`pthread_sigmask(3)`).
    pub fn block(&self) -> io::Result<()> {
        self.mask(libc::SIG_BLOCK)
    }

    /// Unblocks the set for the calling thread.
    pub fn unblock(&self) -> io::Result<()> {
        self.mask(libc::SIG_UNBLOCK)
    }

    fn mask(&self, how: libc::c_int) -> io::Result<()> {
        // SAFETY: the set is initialised, and a null old-set pointer is
        // allowed (the previous mask is not wanted).
        match unsafe { libc::pthread_sigmask(how, &self.0, std::ptr::null_mut()) } {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Which side of a [`fork`] the caller is on.
#[derive(Debug)]
pub enum Forked {
    /// The parent, with the new child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// `fork(2)`.
///
/// # Safety
///
/// The calling process must be single-threaded: the child is a copy of the
/// calling thread alone, and a lock held by any other thread would stay
/// locked in it for ever.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Pid::from_raw(pid).map(Forked::Parent).ok_or_else(|| io::Error::other("fork returned no pid")),
    }
}

/// The signals of a [`SignalSet`], blocked, read from an fd (Linux's
/// `signalfd(2)`), non-blocking and closed on exec.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct SignalFd(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl SignalFd {
    /// Opens a signalfd for `set` (which the caller has blocked).
    pub fn open(set: &SignalSet) -> io::Result<SignalFd> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: -1 asks for a new fd; the set is initialised.
        let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The number of the next signal that has arrived, without waiting;
    /// `None` if none.
    pub fn read(&self) -> Option<i32> {
        // A read returns whole `signalfd_siginfo` records, whose first
        // field is the signal number (u32).
        let mut record = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match rustix::io::read(&self.0, &mut record) {
            Ok(n) if n == record.len() => Some(u32::from_ne_bytes([record[0], record[1], record[2], record[3]]) as i32),
            _ => None,
        }
    }
}

#[cfg(target_os = "linux")]
impl std::os::fd::AsFd for SignalFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Sets Linux's `TCP_DEFER_ACCEPT` on a listening socket: `accept` hands a
/// connection over once data has arrived, or after about `seconds`
/// (`tcp(7)`). rustix has no call for this option.
#[cfg(target_os = "linux")]
pub fn set_tcp_defer_accept(socket: &impl std::os::fd::AsFd, seconds: i32) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let seconds: libc::c_int = seconds;
    // SAFETY: `socket` is an open socket for the whole call, and the
    // option value is a live c_int whose size is passed with it.
    let status = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match status {
        0 => Ok(()),
        _ => Err(rustix::io::Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(rustix::io::Errno::INVAL)),
    }
}
