//! What every model starts from: the listener bound, the service built, the
//! limits fixed. Set up here once, so a model file holds only its loop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::cache::FileCache;
use crate::config::{Config, ServiceKind};
use crate::conn::Limits;
use crate::error::ServerError;
use crate::log::info;
use crate::net::{self, ListenOptions};
use crate::sandbox::Root;
use crate::service::Service;

/// A bound listener and the shared service, ready for a model to run,
/// with the [`Config`] it was made from and what follows from it, worked
/// out once.
#[derive(Debug)]
pub struct Server {
    /// The listening socket; [`Server::announce`] tells the world.
    pub listener: TcpListener,
    /// How it was set up (other loops' listeners are set up the same way).
    pub listen_options: ListenOptions,
    /// Protocol, sandbox and cache, shared by every thread.
    pub service: Arc<Service>,
    /// What each connection may take: sizes and times.
    pub limits: Limits,
    /// Connections served at once: `--max-conns`, lowered to what the
    /// process's open-file limit allows.
    pub max_open_conns: usize,
    /// `--workers`, resolved: event loops, processes or pool threads.
    pub workers: usize,
    /// The flags as given (`--readers`, `--runtime`, `--without`,
    /// `--zero-copy` are read from here by the models that use them).
    pub config: Config,
}

impl Server {
    /// Opens the root, builds the cache and the service, and binds the
    /// listener. Nothing is announced yet.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let root = Root::open(&config.root, config.allow_hidden)?;
        let cache = Arc::new(FileCache::new(config.cache_size.0, config.cache_max_file.0));
        let service = Arc::new(Service::new(config.service, root, cache, config.read_delay()));
        let workers = config.workers();
        // Several event loops each bind their own listener to the same port.
        let listen_options = ListenOptions {
            reuse_port: workers > 1 && config.loops_share_the_port(),
            wait_for_request: config.defer_accept && config.service.client_speaks_first(),
        };
        let listener = net::listen(SocketAddr::new(config.addr, config.port), listen_options)?;
        let capacity = net::connection_capacity();
        if capacity < config.max_conns {
            info!(
                "the open-file limit allows {capacity} connections, fewer than --max-conns {} (raise ulimit -n)",
                config.max_conns
            );
        }
        Ok(Server {
            listener,
            listen_options,
            service,
            limits: config.limits(),
            max_open_conns: config.max_conns.min(capacity),
            workers,
            config,
        })
    }

    /// Prints `listening on <ip>:<port>`. Each model calls this once its
    /// signal handling is in place: the line promises that the server is
    /// ready, and a `SIGHUP` sent before the handler exists would kill it.
    pub fn announce(&self) -> Result<(), ServerError> {
        let local = net::announce(&self.listener)?;
        let what = match self.config.service {
            ServiceKind::File => format!("files from {}", self.config.root.display()),
            other => format!("the {} service", other.name()),
        };
        info!("{} model serving {what} on {local} (pid {})", self.config.model, std::process::id());
        Ok(())
    }
}
