//! The server models, one file each: the listings the guide walks through.
//!
//! Each differs from its neighbours only in *where it waits* and *where the
//! blocking part of a request runs*; parsing, the sandbox, the cache and the
//! connection state machine are shared (`docs/design.md` draws the layers).

pub mod async_await;
pub mod backend;
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
#[cfg(target_os = "linux")]
pub mod uring;
#[cfg(target_os = "linux")]
pub mod uring_net;

use crate::config::{Config, Model};
use crate::error::ServerError;
use crate::server::Server;

/// Binds the server the configuration describes, then runs its model
/// until `SIGINT`/`SIGTERM`. The model is chosen here, once.
pub fn start(config: Config) -> Result<(), ServerError> {
    crate::log::set_quiet(config.quiet);
    let model = config.model;
    // Writes the trace (if --trace) when dropped, after the loop returns.
    let _trace = crate::trace::start(config.trace.as_deref(), config.trace_events)?;
    let server = Server::bind(config)?;
    match model {
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
        Model::Tokio => async_await::run(server),
        #[cfg(target_os = "linux")]
        Model::Uring => uring::run(server),
        #[cfg(target_os = "linux")]
        Model::UringNet => uring_net::run(server),
        #[cfg(not(target_os = "linux"))]
        Model::Uring | Model::UringNet => Err(ServerError::Unavailable {
            model: model.name(),
            reason: "io_uring is a Linux interface".into(),
            instead: if model == Model::Uring { "event-async" } else { "event" },
        }),
    }
}
