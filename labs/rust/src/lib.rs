//! What every lab program needs and no lab teaches: the command line
//! (`docs/assignment.md`), the `listening on` line, and errors that say
//! what failed. The lessons are in `src/bin/stage*.rs`, one program per
//! stage, each read top to bottom.

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// Files from the root, over the line protocol (stage 3 on).
    File,
    /// The time of day, one line per connection (stage 1).
    Time,
}

/// The flags every server of the assignment takes.
#[derive(Debug, Clone, Parser)]
#[command(about = "A lab server of the assignment (docs/assignment.md)")]
pub struct Args {
    /// TCP port on 127.0.0.1; 0 lets the kernel pick.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The directory files are served from; nothing outside it is sent.
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Simulated slow storage: every file read that misses the cache takes this much longer.
    #[arg(long, default_value_t = 0)]
    pub read_delay_ms: u64,
    /// What to serve.
    #[arg(long, value_enum, default_value_t = Service::File)]
    pub service: Service,
}

impl Args {
    /// `--read-delay-ms` as a duration.
    pub fn read_delay(&self) -> Duration {
        Duration::from_millis(self.read_delay_ms)
    }
}

/// An operating-system error, with what the program was doing.
#[derive(Debug)]
pub struct Error {
    what: String,
    source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A lab's result: `Ok`, or what failed and why.
pub type Result<T> = std::result::Result<T, Error>;

/// Says what the program was doing when an `io::Error` happened.
pub trait Context<T> {
    /// The error, with `what` in front of the system's words.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|source| Error { what: what.to_string(), source })
    }
}

/// A C library call's return value: `-1` means it failed, and `errno`
/// (read at once, before anything else can change it) says why.
pub fn check<T: PartialEq + From<i8>>(returned: T) -> io::Result<T> {
    if returned == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(returned)
    }
}

/// Writes the one line a grader waits for, `listening on <ip>:<port>`,
/// to stdout, and flushes it (stdout is not a terminal under a grader, so
/// it would otherwise sit in a buffer).
pub fn announce(addr: SocketAddr) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {addr}").and_then(|()| out.flush()).context("writing the listening line")
}

/// Parses the flags, runs `server`, and turns its error into a message on
/// stderr and a non-zero exit status.
pub fn main(server: impl FnOnce(Args) -> Result<()>) -> ExitCode {
    let args = Args::parse();
    let root = args.root.clone();
    match server(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err} (root {})", root.display());
            ExitCode::FAILURE
        }
    }
}
