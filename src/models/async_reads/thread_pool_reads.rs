//! `event-async`'s backend: blocking work on a pool of reader threads.

use std::io;
use std::time::Duration;

use mio::{Registry, Token};

use super::completions::Completions;
use super::Backend;
use crate::conn::{ConnId, Executor};
use crate::elastic_pool::ElasticPool;
use crate::protocol::Response;
use crate::server::Server;
use crate::service::Work;

/// How long a reader thread waits for work before it exits.
const READER_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Runs every piece of blocking work on a pool of reader threads that
/// grows with demand (up to `--readers`), posting each result to
/// [`Completions`]: the whole of `event-async`, and the fib half of the
/// kernel-driven backends.
#[derive(Debug)]
pub struct ThreadPoolReads {
    pool: ElasticPool,
    completions: Completions,
}

impl Executor for ThreadPoolReads {
    // handout: stage 4: send the work to self.pool; on the reader thread run it (work.run_blocking()) and post the response to self.completions (which wakes the loop); return None; read docs/guide/05-asynchronous-reads.md
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        let completions = self.completions.clone();
        self.pool.execute(move || completions.post(conn, work.run_blocking()));
        None
    }
}

impl Backend for ThreadPoolReads {
    /// Up to `--readers` threads, started as reads arrive, whose results
    /// wake the loop polling `registry` with `token`.
    fn open(server: &Server, registry: &Registry, token: Token) -> io::Result<ThreadPoolReads> {
        let pool = ElasticPool::new("reader", server.readers, READER_KEEP_ALIVE);
        Ok(ThreadPoolReads { pool, completions: Completions::new(registry, token)? })
    }

    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        self.completions.take_into(done);
    }
}
