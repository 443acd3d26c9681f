//! What every model starts from: the listener bound, the service built, the
//! limits fixed. Set up here once, so a model file holds only its loop.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::cache::FileCache;
use crate::config::{Config, Runtime, ServiceKind, Technique, ZeroCopy};
use crate::conn::Limits;
use crate::error::ServerError;
use crate::log::info;
use crate::net::{self, ListenOptions};
use crate::protocol::ParseLimits;
use crate::sandbox::Root;
use crate::service::Service;

/// A bound listener and the shared service, ready for a model to run.
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
    /// `--readers`: threads of the asynchronous models' reader pool.
    pub readers: usize,
    /// What the start-up log line says: the model and what it serves.
    serving: String,
    /// `--runtime`: how the `tokio` model runs its `--workers`.
    pub runtime: Runtime,
    /// `--without`: the `uring-net` techniques turned off.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by uring-net only, which is Linux's
    pub without: Vec<Technique>,
    /// `--zero-copy`: when `uring-net` sends without copying.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by uring-net only, which is Linux's
    pub zero_copy: ZeroCopy,
}

impl Server {
    /// Opens the root, builds the cache and the service, and binds the
    /// listener. Nothing is announced yet.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let root = Root::open(&config.root, config.allow_hidden)?;
        let cache = Arc::new(FileCache::new(config.cache_bytes, config.cache_max_file_bytes));
        let service = Arc::new(Service::new(config.service, root, cache, config.read_delay));
        let workers = config.workers();
        // Several event loops each bind their own listener to the same port.
        let listen_options = ListenOptions {
            reuse_port: workers > 1 && config.loops_share_the_port(),
            wait_for_request: config.defer_accept && config.service.client_speaks_first(),
        };
        let listener = net::listen(SocketAddr::new(config.addr, config.port), listen_options)?;
        let what = match config.service {
            ServiceKind::File => format!("files from {}", config.root.display()),
            other => format!("the {} service", other.name()),
        };
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
            limits: Limits {
                parse: ParseLimits { max_line_bytes: config.max_line_bytes, max_head_bytes: config.max_head_bytes },
                request_timeout: config.request_timeout,
                idle_timeout: config.idle_timeout,
                write_timeout: config.write_timeout,
            },
            max_open_conns: config.max_conns.min(capacity),
            workers,
            readers: config.readers,
            serving: format!("{} model serving {what}", config.model),
            runtime: config.runtime,
            without: config.without.clone(),
            zero_copy: config.zero_copy,
        })
    }

    /// Prints `listening on <ip>:<port>`. Each model calls this once its
    /// signal handling is in place: the line promises that the server is
    /// ready, and a `SIGHUP` sent before the handler exists would kill it.
    pub fn announce(&self) -> Result<(), ServerError> {
        let local = net::announce(&self.listener)?;
        info!("{} on {local} (pid {})", self.serving, std::process::id());
        Ok(())
    }
}
