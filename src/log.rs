//! One line per event on stderr, unless `--quiet`.
//!
//! stdout is reserved for the single `listening on <ip>:<port>` line that
//! scripts and tests read, so everything else goes to stderr.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences [`info!`] lines (`--quiet`); warnings still print.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` is in force.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Logs one event line to stderr unless quiet.
macro_rules! info {
    ($($arg:tt)*) => {
        if !$crate::log::is_quiet() {
            eprintln!($($arg)*);
        }
    };
}

pub(crate) use info;
