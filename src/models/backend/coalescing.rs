//! Concurrent misses on one file, merged into a single read.

use std::collections::HashMap;
use std::time::Instant;

use crate::conn::{ConnId, Executor};
use crate::protocol::Response;
use crate::refusal::Refusal;
use crate::service::Work;

/// Merges concurrent cache misses on one file into a single read.
///
/// A hundred clients asking for the same uncached file at once should cost
/// one read, not a hundred. The first miss (the leader) goes to the inner
/// backend; later misses on the same key join its waiting list and receive
/// a share of the leader's response (a reference to the same buffer).
/// Files too large to cache are streamed per connection and never merged;
/// with the cache off (`--cache-size 0`) nothing is merged either, so every
/// request pays for its own read, as the benchmark's uncached rows intend.
#[derive(Debug)]
pub struct Coalescing<B> {
    inner: B,
    /// Key being read -> connections waiting for it besides the leader.
    waiting: HashMap<Vec<u8>, Vec<ConnId>>,
    /// Leader connection -> the key it is reading.
    leaders: HashMap<ConnId, Vec<u8>>,
}

impl<B: Executor> Coalescing<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Coalescing<B> {
        Coalescing { inner, waiting: HashMap::new(), leaders: HashMap::new() }
    }
}

impl<B: Executor> Executor for Coalescing<B> {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        if let Work::Read(read) = &work {
            if read.is_cacheable() {
                let key = &read.file.key;
                if let Some(followers) = self.waiting.get_mut(key) {
                    followers.push(conn);
                    return None; // dropping `work` closes this duplicate open
                }
                self.waiting.insert(key.clone(), Vec::new());
                self.leaders.insert(conn, key.clone());
            }
        }
        let ready = self.inner.execute(conn, work);
        if ready.is_some() {
            // Finished on the spot: nobody can have joined yet.
            if let Some(key) = self.leaders.remove(&conn) {
                self.waiting.remove(&key);
            }
        }
        ready
    }

    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        let first_new = done.len();
        self.inner.completed(done);
        let mut shares = Vec::new();
        for (conn, response) in &done[first_new..] {
            let Some(key) = self.leaders.remove(conn) else { continue };
            for follower in self.waiting.remove(&key).unwrap_or_default() {
                // In-memory reads are always shareable; 500 is the honest
                // answer should that ever change.
                shares.push((follower, response.share().unwrap_or(Response::Refused(Refusal::Internal))));
            }
        }
        done.append(&mut shares);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.inner.next_deadline()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::FileCache;
    use crate::config::ServiceKind;
    use crate::protocol::{Body, Request};
    use crate::sandbox::Root;
    use crate::service::{Plan, Service};

    /// Holds every read it is given until told to finish them.
    #[derive(Default)]
    struct Deferred {
        started: Vec<(ConnId, Work)>,
        finished: Vec<(ConnId, Response)>,
    }

    impl Executor for Deferred {
        fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
            self.started.push((conn, work));
            None
        }

        fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
            done.append(&mut self.finished);
        }
    }

    fn read_of(service: &Service, path: &str) -> Work {
        match service.plan(&Request::line(path.as_bytes().to_vec())) {
            Plan::Blocking(work) => work,
            other => panic!("expected a read, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_misses_on_one_file_share_a_single_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"shared").unwrap();
        std::fs::write(dir.path().join("b"), b"other").unwrap();
        let root = Root::open(dir.path(), false).unwrap();
        let cache = Arc::new(FileCache::new(1 << 20, 1 << 20));
        let service = Service::new(ServiceKind::File, root, cache, Duration::ZERO);
        let id = ConnId::from_usize;

        let mut backend = Coalescing::new(Deferred::default());
        for conn in [1, 2, 3] {
            assert!(backend.execute(id(conn), read_of(&service, "a")).is_none());
        }
        assert!(backend.execute(id(4), read_of(&service, "b")).is_none());
        let started: Vec<ConnId> = backend.inner.started.iter().map(|(conn, _)| *conn).collect();
        assert_eq!(started, [id(1), id(4)], "one read per file");

        for (conn, work) in std::mem::take(&mut backend.inner.started) {
            backend.inner.finished.push((conn, work.run_blocking()));
        }
        let mut done = Vec::new();
        backend.completed(&mut done);
        let mut bodies: Vec<(usize, Vec<u8>)> = done
            .into_iter()
            .map(|(conn, response)| match response {
                Response::Content(Body::Bytes { bytes, .. }) => (conn.to_usize(), bytes.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        bodies.sort();
        let expected: Vec<(usize, Vec<u8>)> =
            [(1, "shared"), (2, "shared"), (3, "shared"), (4, "other")].map(|(c, b)| (c, b.into())).into();
        assert_eq!(bodies, expected);
        // The read filled the cache; after a clear, the next miss starts a fresh read.
        service.cache().clear();
        assert!(backend.execute(id(5), read_of(&service, "a")).is_none() && backend.inner.started.len() == 1);
    }
}
