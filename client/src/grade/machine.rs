//! Not gradable is not a zero: when the grading machine, not the
//! submission, is at fault (no loopback, no free port, a sandbox that
//! denies io_uring or kernel AIO), the grader says so in one line and
//! every report format marks the run as not graded, instead of giving the
//! student a score of 0 for the machine's failing.
//!
//! Two ways to find out: [`preflight`] before the first server starts
//! (can the grader itself listen on loopback and connect to itself?), and
//! [`fault_in`] when a server would not start (did it fail on an interface
//! this machine denies to everyone? the grader probes it itself).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The machine cannot grade: the reason, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotGradable(pub String);

impl std::fmt::Display for NotGradable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not gradable on this machine: {} (the machine is at fault, not the submission)", self.0)
    }
}

impl std::error::Error for NotGradable {}

/// Whether this machine can grade at all: the grader listens on loopback,
/// connects to itself and exchanges a byte. `Err` names what failed.
pub fn preflight() -> Result<(), NotGradable> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|err| NotGradable(format!("cannot listen on 127.0.0.1 (no loopback, or no free port): {err}")))?;
    let addr = listener.local_addr().map_err(|err| NotGradable(format!("loopback: {err}")))?;
    let mut client = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|err| NotGradable(format!("loopback refused a connection to {addr}: {err}")))?;
    let (mut server, _) = listener.accept().map_err(|err| NotGradable(format!("loopback: cannot accept: {err}")))?;
    let exchanged = client.write_all(b"?").and_then(|()| {
        server.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut byte = [0u8];
        server.read_exact(&mut byte)
    });
    exchanged.map_err(|err| NotGradable(format!("loopback does not carry bytes: {err}")))
}

/// When a server failed to start (or died at once) with `log`: the
/// machine's fault, if its words name an interface this machine denies
/// (the grader tries it itself: a denial that is the student's bug is not
/// the machine's).
pub fn fault_in(log: &str) -> Option<NotGradable> {
    let lower = log.to_lowercase();
    let denied_words = ["operation not permitted", "permission denied", "function not implemented", "eperm", "enosys"];
    if !denied_words.iter().any(|words| lower.contains(words)) {
        return None;
    }
    if lower.contains("io_uring") || lower.contains("io-uring") || lower.contains("uring") {
        if let Err(why) = probe_io_uring() {
            return Some(NotGradable(format!("io_uring is denied here ({why}), and the server needs it")));
        }
    }
    if lower.contains("aio") || lower.contains("io_setup") {
        if let Err(why) = probe_kernel_aio() {
            return Some(NotGradable(format!(
                "asynchronous I/O (AIO) is denied here ({why}), and the server needs it"
            )));
        }
    }
    None
}

/// Sets up (and tears down) a small io_uring: `Err` when the kernel or a
/// sandbox (seccomp, `kernel.io_uring_disabled`) refuses.
#[cfg(target_os = "linux")]
fn probe_io_uring() -> Result<(), String> {
    io_uring::IoUring::new(2).map(drop).map_err(|err| format!("io_uring_setup: {err}"))
}

#[cfg(not(target_os = "linux"))]
fn probe_io_uring() -> Result<(), String> {
    Err("io_uring is Linux only".into())
}

/// Creates (and destroys) a kernel AIO context: `Err` when refused.
#[cfg(target_os = "linux")]
fn probe_kernel_aio() -> Result<(), String> {
    let mut context: libc::c_ulong = 0;
    // SAFETY: io_setup(2) writes one context id into `context`, which
    // lives through the call; io_destroy releases it again.
    let made = unsafe { libc::syscall(libc::SYS_io_setup, 1 as libc::c_long, &mut context as *mut libc::c_ulong) };
    if made != 0 {
        return Err(format!("io_setup: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `context` was just created by io_setup.
    unsafe { libc::syscall(libc::SYS_io_destroy, context) };
    Ok(())
}

/// Elsewhere POSIX AIO is the C library's; nothing to probe.
#[cfg(not(target_os = "linux"))]
fn probe_kernel_aio() -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_with_loopback_is_gradable() {
        assert_eq!(preflight(), Ok(()));
    }

    #[test]
    fn a_students_own_permission_error_is_not_the_machines() {
        assert_eq!(fault_in("cannot open root: Permission denied\n"), None);
        assert_eq!(fault_in("listening on 127.0.0.1:1\n"), None);
        // io_uring named: the grader tries it itself; where it works here,
        // the failure is the server's.
        if probe_io_uring().is_ok() {
            assert_eq!(fault_in("io_uring_setup: Operation not permitted (os error 1)"), None);
        }
    }
}
