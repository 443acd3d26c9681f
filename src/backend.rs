//! Where a readiness loop's blocking work runs, and how its completions
//! come back to the loop (DESIGN section 8).
//!
//! The mio loop ([`crate::models::event::run_loop`]) is written once. What
//! distinguishes `event`, `event-async`, `event-aio` and `uring` is the
//! [`Backend`] it is given: run the work inline, on a thread pool, with
//! POSIX AIO, or with io_uring. Every asynchronous backend announces
//! finished work by making a source in the loop's `Poll` readable (a
//! [`mio::Waker`], a signal, an eventfd); the loop then asks it for
//! [`Backend::completed`] work and resumes those connections.
//!
//! Two helpers are shared by the asynchronous backends:
//! [`Coalescing`] merges concurrent misses on the same file into one read,
//! and [`DelayQueue`] simulates slow storage (`--read-delay-ms`) for reads
//! the kernel performs, without blocking any thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Registry, Token, Waker};

use crate::conn::{ConnId, Executor, Inline};
use crate::protocol::Response;
use crate::service::{FileRead, Work};
use crate::thread_pool::ThreadPool;

/// Where a loop's blocking work runs, and how its completions come back.
pub trait Backend: Executor {
    /// Appends finished work, as (connection, response), to `done`.
    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>);

    /// When the loop must ask for completions even if no source fires
    /// (a simulated storage delay running out); `None` if never.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// The `event` model's backend: everything runs inline, nothing completes later.
impl Backend for Inline {
    fn completed(&mut self, _done: &mut Vec<(ConnId, Response)>) {}
}

/// Finished work posted by other threads, and the waker that tells the loop.
#[derive(Debug, Clone)]
pub struct Completions {
    shared: Arc<CompletionQueue>,
}

#[derive(Debug)]
struct CompletionQueue {
    finished: Mutex<Vec<(ConnId, Response)>>,
    waker: Waker,
}

impl Completions {
    /// A queue whose posts wake the loop polling `registry` with `token`
    /// (mio allows one waker per `Poll`).
    pub fn new(registry: &Registry, token: Token) -> io::Result<Completions> {
        let shared = CompletionQueue { finished: Mutex::new(Vec::new()), waker: Waker::new(registry, token)? };
        Ok(Completions { shared: Arc::new(shared) })
    }

    /// Another handle to the same queue, for a worker thread.
    pub fn clone_handle(&self) -> Completions {
        self.clone()
    }

    /// Called by a worker thread: queue the response and wake the loop.
    pub fn post(&self, conn: ConnId, response: Response) {
        self.lock().push((conn, response));
        // If the wake fails the loop is gone (shutting down): nothing to do.
        let _ = self.shared.waker.wake();
    }

    /// Called by the loop: move everything posted so far into `done`.
    pub fn take_into(&self, done: &mut Vec<(ConnId, Response)>) {
        done.append(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(ConnId, Response)>> {
        self.shared.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Merges concurrent cache misses on one file into a single read.
///
/// A hundred clients asking for the same uncached file at once should cost
/// one read, not a hundred. The first miss (the leader) goes to the inner
/// backend; later misses on the same key join its waiting list and receive
/// a share of the leader's response (a reference to the same buffer).
/// Files too large to cache are streamed per connection and never merged.
#[derive(Debug)]
pub struct Coalescing<B> {
    inner: B,
    /// Key being read -> connections waiting for it besides the leader.
    waiting: HashMap<Vec<u8>, Vec<ConnId>>,
    /// Leader connection -> the key it is reading.
    leaders: HashMap<ConnId, Vec<u8>>,
}

impl<B: Backend> Coalescing<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Coalescing<B> {
        Coalescing { inner, waiting: HashMap::new(), leaders: HashMap::new() }
    }
}

impl<B: Backend> Executor for Coalescing<B> {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        if let Work::Read(read) = &work {
            if read.reads_into_memory() {
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
}

impl<B: Backend> Backend for Coalescing<B> {
    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        let first_new = done.len();
        self.inner.completed(done);
        let mut shares = Vec::new();
        for (conn, response) in &done[first_new..] {
            let Some(key) = self.leaders.remove(conn) else { continue };
            for follower in self.waiting.remove(&key).unwrap_or_default() {
                // In-memory reads are always shareable; 500 is the honest
                // answer should that ever change.
                shares
                    .push((follower, response.share().unwrap_or(Response::Refused(crate::refusal::Refusal::Internal))));
            }
        }
        done.append(&mut shares);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.inner.next_deadline()
    }
}

/// Runs every piece of blocking work on a thread pool, posting each result
/// to [`Completions`]: the whole of `event-async`, and the fib half of the
/// kernel-driven backends.
#[derive(Debug)]
pub struct PoolBackend {
    pool: ThreadPool,
    completions: Completions,
}

impl PoolBackend {
    /// A pool of `threads` workers whose results wake the loop polling
    /// `registry` with `token`.
    pub fn new(threads: usize, registry: &Registry, token: Token) -> io::Result<PoolBackend> {
        Ok(PoolBackend { pool: ThreadPool::new("worker", threads)?, completions: Completions::new(registry, token)? })
    }
}

impl Executor for PoolBackend {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        let completions = self.completions.clone_handle();
        self.pool.execute(move || completions.post(conn, work.run_blocking()));
        None
    }
}

impl Backend for PoolBackend {
    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        self.completions.take_into(done);
    }
}

/// A kernel interface that reads files asynchronously (POSIX AIO, io_uring):
/// all that distinguishes `event-aio` from `uring`.
pub trait KernelReads {
    /// Starts reading the unfilled part of `read`. On failure the read is
    /// handed back with the error, to be answered with 500.
    fn submit(&mut self, read: PendingRead) -> Result<(), (PendingRead, io::Error)>;
    /// Collects reads the kernel has finished (fully or in part) since the
    /// last call, each with the byte count or error it reported.
    fn reap(&mut self, finished: &mut Vec<(PendingRead, io::Result<usize>)>);
}

/// A file read the kernel is filling: the buffer, and how much is filled.
#[derive(Debug)]
pub struct PendingRead {
    conn: ConnId,
    /// Boxed: a pending read travels through `Result`s and stays small.
    read: Box<FileRead>,
    buffer: Vec<u8>,
    filled: usize,
}

impl PendingRead {
    fn new(conn: ConnId, read: FileRead) -> PendingRead {
        let len = read.file.len as usize;
        PendingRead { conn, read: Box::new(read), buffer: vec![0; len], filled: 0 }
    }

    /// The open file being read.
    pub fn file(&self) -> &std::fs::File {
        &self.read.file.file
    }

    /// Where the kernel should put the next bytes, and the file offset they
    /// come from. The buffer never moves while the read is pending.
    pub fn unfilled(&mut self) -> (&mut [u8], u64) {
        (&mut self.buffer[self.filled..], self.filled as u64)
    }

    /// Accounts for one kernel read. Returns the response when the read is
    /// over (filled, failed, or the file ended early because it shrank), or
    /// the pending read again when more must be read.
    fn advance(mut self, result: io::Result<usize>) -> Result<(ConnId, Response), PendingRead> {
        match result {
            Ok(n) if n > 0 && self.filled + n < self.buffer.len() => {
                self.filled += n;
                Err(self)
            }
            Ok(n) => {
                self.filled += n;
                self.buffer.truncate(self.filled);
                Ok((self.conn, self.read.finish(Ok(self.buffer))))
            }
            Err(err) => Ok((self.conn, self.read.finish(Err(err)))),
        }
    }
}

/// The backend of the kernel-driven models: file reads go to the kernel
/// interface `K`, simulated storage delay is a timer (no thread sleeps),
/// files too large to cache are streamed without a read, and CPU-bound work
/// goes to a thread pool, since no kernel interface computes fib.
#[derive(Debug)]
pub struct KernelBackend<K> {
    kernel: K,
    delayed: DelayQueue<(ConnId, FileRead)>,
    compute: PoolBackend,
}

impl<K: KernelReads> KernelBackend<K> {
    /// Reads with `kernel`, computes on `compute`.
    pub fn new(kernel: K, compute: PoolBackend) -> KernelBackend<K> {
        KernelBackend { kernel, delayed: DelayQueue::default(), compute }
    }

    /// Starts reading `read` now. A file too large to cache (or any file,
    /// with caching off) needs no read: it is streamed with `sendfile`, and
    /// its response comes back at once, as does that of a read that is over
    /// before it reached the kernel.
    fn start(&mut self, conn: ConnId, read: FileRead) -> Option<Response> {
        if !read.reads_into_memory() {
            return Some(read.finish(Ok(Vec::new())));
        }
        self.continue_read(PendingRead::new(conn, read)).map(|(_, response)| response)
    }

    /// Hands (the rest of) a read to the kernel. An empty file, or a submit
    /// the kernel refuses (answered with 500), is over at once.
    fn continue_read(&mut self, pending: PendingRead) -> Option<(ConnId, Response)> {
        if pending.filled == pending.buffer.len() {
            return pending.advance(Ok(0)).ok();
        }
        match self.kernel.submit(pending) {
            Ok(()) => None,
            Err((pending, err)) => pending.advance(Err(err)).ok(),
        }
    }
}

impl<K: KernelReads> Executor for KernelBackend<K> {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        match work {
            // The simulated delay stands for the storage, so it applies to
            // every miss, whether the file is then read or streamed.
            Work::Read(read) if !read.delay.is_zero() => {
                self.delayed.push(read.delay, (conn, read));
                None
            }
            Work::Read(read) => self.start(conn, read),
            compute @ Work::Compute(_) => self.compute.execute(conn, compute),
        }
    }
}

impl<K: KernelReads> Backend for KernelBackend<K> {
    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        for (conn, read) in self.delayed.pop_due() {
            done.extend(self.start(conn, read).map(|response| (conn, response)));
        }
        let mut reaped = Vec::new();
        self.kernel.reap(&mut reaped);
        for (pending, result) in reaped {
            match pending.advance(result) {
                Ok(finished) => done.push(finished),
                Err(more) => done.extend(self.continue_read(more)),
            }
        }
        self.compute.completed(done);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.delayed.next_deadline()
    }
}

/// Items held back until their time comes: how the kernel-driven backends
/// simulate `--read-delay-ms` without putting any thread to sleep.
#[derive(Debug)]
pub struct DelayQueue<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, T>,
    next_seq: u64,
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        DelayQueue { heap: BinaryHeap::new(), items: HashMap::new(), next_seq: 0 }
    }
}

impl<T> DelayQueue<T> {
    /// Holds `item` for `delay`.
    pub fn push(&mut self, delay: Duration, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((Instant::now() + delay, seq)));
        self.items.insert(seq, item);
    }

    /// When the earliest item is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns every item that is due now.
    pub fn pop_due(&mut self) -> Vec<T> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&Reverse((at, seq))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.extend(self.items.remove(&seq));
        }
        due
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FileCache;
    use crate::config::ServiceKind;
    use crate::protocol::{Body, Framing, Request};
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
    }

    impl Backend for Deferred {
        fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
            done.append(&mut self.finished);
        }
    }

    fn read_of(service: &Service, path: &str) -> Work {
        match service.plan(&Request { target: path.as_bytes().to_vec(), framing: Framing::Line }) {
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

        let mut backend = Coalescing::new(Deferred::default());
        for conn in [1, 2, 3] {
            assert!(backend.execute(conn, read_of(&service, "a")).is_none());
        }
        assert!(backend.execute(4, read_of(&service, "b")).is_none());
        let started: Vec<ConnId> = backend.inner.started.iter().map(|(conn, _)| *conn).collect();
        assert_eq!(started, [1, 4], "one read per file");

        for (conn, work) in std::mem::take(&mut backend.inner.started) {
            backend.inner.finished.push((conn, work.run_blocking()));
        }
        let mut done = Vec::new();
        backend.completed(&mut done);
        let mut bodies: Vec<(ConnId, Vec<u8>)> = done
            .into_iter()
            .map(|(conn, response)| match response {
                Response::Content(Body::Bytes { bytes, .. }) => (conn, bytes.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        bodies.sort();
        let expected: Vec<(ConnId, Vec<u8>)> =
            [(1, "shared"), (2, "shared"), (3, "shared"), (4, "other")].map(|(c, b)| (c, b.into())).into();
        assert_eq!(bodies, expected);
        // The read filled the cache; after a clear, the next miss starts a fresh read.
        service.cache().clear();
        assert!(backend.execute(5, read_of(&service, "a")).is_none() && backend.inner.started.len() == 1);
    }

    #[test]
    fn the_delay_queue_releases_items_in_deadline_order_once_due() {
        let mut queue = DelayQueue::default();
        queue.push(Duration::from_millis(30), "late");
        queue.push(Duration::ZERO, "now");
        assert_eq!(queue.pop_due(), vec!["now"]);
        assert!(queue.next_deadline().is_some_and(|at| at > Instant::now()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(queue.pop_due(), vec!["late"]);
        assert!(queue.is_empty() && queue.next_deadline().is_none());
    }
}
