//! One line per event on stderr; `info!` lines are silenced by `--quiet`.
//!
//! stdout is reserved for the single `listening on <ip>:<port>` line that
//! scripts and tests read, so everything else goes to stderr.
//!
//! Logging never panics: `eprintln!` panics when stderr is a pipe whose
//! reader has gone (a closed terminal, a log collector that died), and a
//! server must not fall over, or hang half-stopped, because nobody is
//! listening to it. A line that cannot be written is dropped.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences `info!` lines (`--quiet`); `always!` lines still print.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` is in force.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes one line to stderr, ignoring failure (see the module docs).
///
/// The line is formatted first and written with one `write`: stderr is
/// unbuffered, so `writeln!` would issue a write per piece, and the
/// processes of `fork` and `prefork` share one stderr. A single write of
/// less than `PIPE_BUF` (4 KiB) to a pipe is atomic, so lines never mix.
pub fn write_line(line: fmt::Arguments<'_>) {
    let mut text = line.to_string();
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Logs one event line to stderr unless `--quiet`.
macro_rules! info {
    ($($arg:tt)*) => {
        if !$crate::log::is_quiet() {
            $crate::log::write_line(format_args!($($arg)*));
        }
    };
}

/// Logs a line that `--quiet` does not silence (cache clears, failures).
macro_rules! always {
    ($($arg:tt)*) => {
        $crate::log::write_line(format_args!($($arg)*))
    };
}

pub(crate) use {always, info};
