//! Children that die with their parent: nothing the benchmark, the
//! grader or `client` starts may outlive it, even when it aborts or is
//! SIGKILLed (no destructor runs then).
//!
//! On Linux (and FreeBSD) the kernel does it: [`die_with_parent`] asks,
//! in the child between `fork` and `exec`, for `SIGKILL` when the parent
//! dies (`PR_SET_PDEATHSIG`, prctl(2)). Elsewhere the child stays in the
//! parent's process group, which a terminal's Ctrl-C reaches as a whole.
//!
//! The death signal is sent when the *thread* that forked the child
//! exits, not the process. Spawn from a thread that lives as long as the
//! child is wanted (the main thread, or the test's own thread for a child
//! the test drops before it returns).
//!
//! A child's own children are not covered: nginx's workers outlive a
//! killed master. For them, a [`Watchdog`] kills a whole process group
//! when this process dies, however it dies; another removes the
//! benchmark's scratch files.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Makes the child `command` will start die (`SIGKILL`) when this thread
/// of this process dies; see the module doc. Returns `command`.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed: it makes two raw
        // syscalls (prctl/procctl and getppid) and allocates nothing (an
        // `Errno` converts to `io::Error` without allocating).
        unsafe {
            command.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
                // The parent may have died before the prctl: then no signal
                // will ever come, so the child gives up now.
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
    command
}

/// A watchdog process that cleans up after this process when it dies: it
/// waits on a pipe only this process can write to, and the kernel closes
/// the pipe when this process ends, however it ends (no destructor runs
/// after a `SIGKILL`). It works on every Unix.
///
/// Dropping the watchdog stops it without cleaning up: clean up yourself
/// first.
#[derive(Debug)]
pub struct Watchdog {
    watchdog: Child,
    /// The write end; never written, only held open.
    _pipe: ChildStdin,
}

impl Watchdog {
    /// Kills process group `group` (a child started with
    /// `process_group(0)`: its pid) when this process dies: for programs
    /// whose own children do not follow their parent's death (nginx's
    /// workers, a student's forking server).
    pub fn kill_group(group: u32) -> io::Result<Watchdog> {
        // `kill -9 -PGID`: the form every `sh` takes (dash rejects `--`).
        Watchdog::start(r#"read -r _ignored; kill -9 "-$0" 2>/dev/null"#, std::ffi::OsStr::new(&group.to_string()))
    }

    /// Removes directory `dir` and everything in it when this process dies
    /// (the benchmark's generated files, which its `TempDir` removes only
    /// when it gets to run).
    pub fn remove_dir(dir: &std::path::Path) -> io::Result<Watchdog> {
        Watchdog::start(r#"read -r _ignored; rm -rf -- "$0""#, dir.as_os_str())
    }

    /// Runs `script` with `$0` set to `argument` once the pipe closes.
    fn start(script: &str, argument: &std::ffi::OsStr) -> io::Result<Watchdog> {
        // `read` returns at end of file: when every writer is gone. The
        // pipe is close-on-exec, so no other child holds the write end.
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(argument)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C at the terminal must not stop the
            // watchdog before the group it watches.
            .process_group(0)
            .spawn()?;
        let pipe = watchdog.stdin.take().expect("piped");
        Ok(Watchdog { watchdog, _pipe: pipe })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Killed, not woken: a woken watchdog would signal a group id the
        // system may since have given to someone else.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}
