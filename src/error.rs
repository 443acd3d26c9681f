//! Errors that stop a server from starting or running, worded so a person
//! can act on them.

use std::io;
use std::net::SocketAddr;

use crate::sandbox::RootError;

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be bound.
    #[error("cannot bind {addr}: {}", bind_hint(.source))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The root directory is unusable.
    #[error(transparent)]
    Root(#[from] RootError),
    /// A model needs a kernel interface this machine refuses.
    #[error("the {model} model cannot run here: {reason} (try --model {instead})")]
    Unavailable {
        /// The model asked for.
        model: &'static str,
        /// What failed.
        reason: String,
        /// A model that works without it.
        instead: &'static str,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the server was doing.
        context: String,
        /// What the kernel said.
        source: io::Error,
    },
}

impl ServerError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl Fn(io::Error) -> ServerError {
        let context = context.into();
        move |source| ServerError::Io { context: context.clone(), source }
    }
}

fn bind_hint(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::AddrInUse => "address in use (is another server running? try --port 0)".into(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges; try --port 0)".into(),
        io::ErrorKind::AddrNotAvailable => {
            "address not available (is it an address of this machine? try --addr 127.0.0.1)".into()
        }
        _ => err.to_string(),
    }
}
