//! The server models, one file each (DESIGN section 4).
//!
//! Each differs from its neighbours only in *where it waits* and *where the
//! blocking part of a request runs*; parsing, the sandbox, the cache and the
//! connection state machine are shared.

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
pub mod uring;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::cache::FileCache;
use crate::config::{Config, Model};
use crate::conn::Limits;
use crate::error::ServerError;
use crate::log::info;
use crate::net;
use crate::protocol::ParseLimits;
use crate::sandbox::Root;
use crate::service::Service;

/// What every model starts from: a bound listener and the shared service.
#[derive(Debug)]
pub struct Server {
    /// The listening socket, already announced on stdout.
    pub listener: TcpListener,
    /// Protocol, sandbox and cache, shared by every thread.
    pub service: Arc<Service>,
    /// What each connection may take: sizes and times.
    pub limits: Limits,
    /// Connections served at once per loop.
    pub max_conns: usize,
    /// The whole configuration, for model-specific settings.
    pub config: Config,
}

impl Server {
    /// Prints `listening on <ip>:<port>`. Each model calls this once its
    /// signal handling is in place: the line promises that the server is
    /// ready, and a `SIGHUP` sent before the handler exists would kill it.
    pub fn announce(&self) -> Result<(), ServerError> {
        let local = net::announce(&self.listener)?;
        let config = &self.config;
        info!(
            "{} model serving {} from {} on {local} (pid {})",
            config.model.name(),
            config.service.name(),
            config.root.display(),
            std::process::id()
        );
        Ok(())
    }
}

/// Starts the configured model and serves until `SIGINT`/`SIGTERM`.
pub fn run(config: Config) -> Result<(), ServerError> {
    crate::log::set_quiet(config.quiet);
    let root = Root::open(&config.root, config.allow_hidden)?;
    if config.model == Model::Uring {
        drop(uring::new_ring()?); // refuse before announcing, not after
    }
    let cache = Arc::new(FileCache::new(config.cache_bytes, config.cache_max_file_bytes));
    let service = Arc::new(Service::new(config.service, root, cache, config.read_delay));
    // Several event loops each bind their own listener to the same port.
    let reuse_port = config.threads.is_some_and(|n| n > 1);
    let listener = net::listen(SocketAddr::new(config.addr, config.port), reuse_port)?;
    let capacity = net::connection_capacity();
    if capacity < config.max_conns {
        info!(
            "the open-file limit allows {capacity} connections, fewer than --max-conns {} (raise ulimit -n)",
            config.max_conns
        );
    }
    let server = Server {
        listener,
        service,
        limits: Limits {
            parse: ParseLimits { max_line_bytes: config.max_line_bytes, max_head_bytes: config.max_head_bytes },
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
        },
        max_conns: config.max_conns.min(capacity),
        config,
    };
    match server.config.model {
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
        Model::Uring => uring::run(server),
    }
}
