//! The server models, one file each: the listings the guide walks through.
//!
//! Each differs from its neighbours only in *where it waits* and *where the
//! blocking part of a request runs*; parsing, the sandbox, the cache and the
//! connection state machine are shared (`docs/design.md` draws the layers).

pub mod async_reads;
pub mod event;
pub mod event_aio;
pub mod event_async;
pub mod fork;
pub mod iterative;
pub mod poll;
pub mod pool;
pub mod prefork;
pub mod select;
pub mod threads;
pub mod tokio;
#[cfg(target_os = "linux")]
pub mod uring;

use crate::config::{Config, Model};
use crate::error::ServerError;
use crate::server::Server;

/// Starts the configured model and serves until `SIGINT`/`SIGTERM`.
pub fn start(config: Config) -> Result<(), ServerError> {
    crate::log::set_quiet(config.quiet);
    if config.model == Model::Uring {
        uring_available()?; // refuse before binding, not after announcing
    }
    let server = Server::bind(config)?;
    match server.model() {
        Model::Iterative => iterative::run(server),
        Model::Fork => fork::run(server),
        Model::Prefork => prefork::run(server),
        Model::Threads => threads::run(server),
        Model::Pool => pool::run(server),
        Model::Select => select::run(server),
        Model::Poll => poll::run(server),
        Model::Event => event::run(server),
        Model::EventAsync => event_async::run(server),
        Model::EventAio => event_aio::run(server),
        #[cfg(target_os = "linux")]
        Model::Uring => uring::run(server),
        Model::Tokio => tokio::run(server),
        #[cfg(not(target_os = "linux"))]
        Model::Uring => unreachable!("refused by uring_available"),
    }
}

/// Whether io_uring can be used here: a kernel that allows it (Linux), or
/// an error that names the model to use instead.
fn uring_available() -> Result<(), ServerError> {
    #[cfg(target_os = "linux")]
    return uring::new_ring().map(drop);
    #[cfg(not(target_os = "linux"))]
    return Err(ServerError::Unavailable {
        model: "uring",
        reason: "io_uring is a Linux interface".into(),
        instead: "event-async",
    });
}
