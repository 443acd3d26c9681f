//! The services (file, time, fib) and the one idea that keeps the models
//! small: the plan/execute seam (`docs/design.md`).
//!
//! [`Service::plan`] answers each parsed request with a [`Plan`]: either a
//! response that is ready now (an error, a cache hit) or a description of the
//! blocking [`Work`] still to do (read this open file, compute fib(n)). The
//! *models* decide where that work runs: the `event` loop runs it inline,
//! a thread pool or the kernel run it elsewhere, blocking models just call
//! [`Work::run_blocking`]. Whoever reads the file hands the bytes to
//! [`FileRead::finish`], which caches them and builds the response, so the
//! cache logic is also written once.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{CachedFile, FileCache};
use crate::config::ServiceKind;
use crate::protocol::{http, Body, Framing, Request, Response};
use crate::refusal::Refusal;
use crate::sandbox::{OpenFile, Root};

/// Largest n the fib service computes: fib(40) takes about a second.
pub const MAX_FIB_N: u32 = 40;

/// What answers requests: shared (behind an `Arc`) by every thread of a server.
#[derive(Debug)]
pub struct Service {
    kind: ServiceKind,
    root: Root,
    cache: Arc<FileCache>,
    read_delay: Duration,
}

/// The answer to a request: ready now, or blocking work still to do.
#[derive(Debug)]
pub enum Plan {
    /// Nothing slow left: send this.
    Ready(Response),
    /// Run this somewhere, then send what it returns.
    Blocking(Work),
}

/// Work that may block or burn CPU: the part a model must place carefully.
#[derive(Debug)]
pub enum Work {
    /// Read a file that missed the cache.
    Read(FileRead),
    /// Compute fib(n) the slow way.
    Compute(u32),
}

/// A cache miss: an open, sandboxed file to read, and what to do with it.
#[derive(Debug)]
pub struct FileRead {
    /// The file, its size and cache key.
    pub file: OpenFile,
    generation: u64,
    cache: Arc<FileCache>,
    /// The simulated storage latency this read must suffer.
    pub delay: Duration,
}

impl Service {
    /// A service of `kind` over `root`, sharing `cache`.
    pub fn new(kind: ServiceKind, root: Root, cache: Arc<FileCache>, read_delay: Duration) -> Service {
        Service { kind, root, cache, read_delay }
    }

    /// The cache (for `SIGHUP`).
    pub fn cache(&self) -> &Arc<FileCache> {
        &self.cache
    }

    /// What to send as soon as a connection is accepted, for services that
    /// read no request (time): the bytes, after which the server closes.
    pub fn greeting(&self) -> Option<Vec<u8>> {
        match self.kind {
            ServiceKind::Time => Some(time_of_day(SystemTime::now())),
            ServiceKind::File | ServiceKind::Fib => None,
        }
    }

    /// Decides how to answer `request` without blocking: never reads a file
    /// or computes anything slow, only looks at the cache and opens the file.
    pub fn plan(&self, request: &Request) -> Plan {
        match self.kind {
            ServiceKind::File => self.plan_file(request),
            ServiceKind::Fib => match parse_fib(&request.target) {
                Some(n) => Plan::Blocking(Work::Compute(n)),
                None => Plan::Ready(Response::Refused(Refusal::BadRequest)),
            },
            // The time service answers on accept and reads no requests.
            ServiceKind::Time => Plan::Ready(Response::Refused(Refusal::BadRequest)),
        }
    }

    fn plan_file(&self, request: &Request) -> Plan {
        let key = match self.root.normalize(&request.target) {
            Ok(key) => key,
            Err(refusal) => return Plan::Ready(Response::Refused(refusal)),
        };
        // A directory's own path (the root, or `dir/`) names its
        // index.html; without one, the directory itself is refused as
        // always (no listings).
        if key.is_empty() || key.ends_with(b"/") {
            let index = [key.as_slice(), b"index.html"].concat();
            match self.plan_normalized(&index) {
                Plan::Ready(Response::Refused(Refusal::NotFound)) => {}
                plan => return plan,
            }
        }
        match self.plan_normalized(&key) {
            // A directory named without its slash: over HTTP, send the
            // client to `dir/` (nginx, Apache and lighttpd answer 301), so
            // that relative links in its index.html resolve under it.
            Plan::Ready(Response::Refused(Refusal::Forbidden))
                if matches!(request.framing, Framing::Http(_))
                    && !key.is_empty()
                    && !key.ends_with(b"/")
                    && self.root.is_directory(&key) =>
            {
                Plan::Ready(Response::Moved(http::directory_location(&key, &request.query)))
            }
            plan => plan,
        }
    }

    fn plan_normalized(&self, key: &[u8]) -> Plan {
        if let Some(hit) = self.cache.get(key) {
            return Plan::Ready(Response::Content(Body::Bytes { bytes: hit.bytes, modified: hit.modified }));
        }
        // Read the generation before opening: a clear after this point makes
        // the insert a no-op rather than caching what may be stale content.
        let generation = self.cache.generation();
        match self.root.open_file(key) {
            Ok(file) => Plan::Blocking(Work::Read(FileRead {
                file,
                generation,
                cache: Arc::clone(&self.cache),
                delay: self.read_delay,
            })),
            Err(refusal) => Plan::Ready(Response::Refused(refusal)),
        }
    }
}

impl Work {
    /// Does the work here, in the calling thread, blocking it.
    ///
    /// A bug that panics here costs its request a 500, not the thread that
    /// runs it (an event loop's, a reader's, a connection's): the panic
    /// hook has printed it, and the cache, the one state the work shares,
    /// stays usable ([`FileCache`]'s lock ignores poisoning).
    pub fn run_blocking(self) -> Response {
        let _work = crate::trace::span(if matches!(self, Work::Read(_)) { "read" } else { "compute" }); // --trace
        let run = std::panic::AssertUnwindSafe(|| match self {
            Work::Read(read) => read.run_blocking(),
            Work::Compute(n) => compute_fib(n),
        });
        std::panic::catch_unwind(run).unwrap_or(Response::Refused(Refusal::Internal))
    }
}

impl FileRead {
    /// Whether the whole file is read into memory (and cached if the
    /// budget allows); larger files are streamed from the open file instead.
    pub fn reads_into_memory(&self) -> bool {
        self.cache.is_small(self.file.len)
    }

    /// Whether the content may be kept and shared between requests (by the
    /// cache, or by [`Coalescing`](crate::backend::Coalescing) among reads
    /// in flight). With the cache off nothing is shared: every request reads.
    pub fn is_cacheable(&self) -> bool {
        self.cache.admits(self.file.len)
    }

    /// Waits out the simulated delay and reads the file in this thread.
    pub fn run_blocking(mut self) -> Response {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if !self.reads_into_memory() {
            return self.finish(Ok(Vec::new()));
        }
        // Reserved up front, but without trusting the size to fit in
        // memory: a file too large for it (a large --cache-max-file) is a
        // 500, not an abort.
        let mut content = Vec::new();
        if content.try_reserve_exact(usize::try_from(self.file.len).unwrap_or(usize::MAX)).is_err() {
            return self.finish(Err(io::ErrorKind::OutOfMemory.into()));
        }
        let result = (&mut self.file.file).take(self.file.len).read_to_end(&mut content).map(|_| content);
        self.finish(result)
    }

    /// Turns the outcome of reading the file (by whichever thread or kernel
    /// interface did it) into the response, caching the content if allowed.
    /// For a file that is not read into memory, `result` is ignored and the
    /// open file itself becomes the (streamed) body.
    pub fn finish(self, result: io::Result<Vec<u8>>) -> Response {
        if !self.reads_into_memory() {
            let OpenFile { file, len, modified, .. } = self.file;
            return Response::Content(Body::File { file, len, modified });
        }
        match result {
            Ok(content) => {
                let bytes: Arc<[u8]> = content.into();
                let modified = self.file.modified;
                self.cache.insert(self.file.key, self.generation, CachedFile { bytes: Arc::clone(&bytes), modified });
                Response::Content(Body::Bytes { bytes, modified })
            }
            Err(_) => Response::Refused(Refusal::Internal),
        }
    }
}

/// The time service's answer: `now` in RFC 3339, UTC, to the second, and a newline.
fn time_of_day(now: SystemTime) -> Vec<u8> {
    format!("{}\n", humantime::format_rfc3339_seconds(now)).into_bytes()
}

fn parse_fib(target: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(target).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n <= MAX_FIB_N)
}

/// fib(n) by the naive recursion, on purpose: it is the CPU-bound workload.
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

fn compute_fib(n: u32) -> Response {
    let content: Arc<[u8]> = format!("{}\n", fib(n)).into_bytes().into();
    Response::Content(Body::Bytes { bytes: content, modified: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_has_its_known_values_and_refuses_out_of_range() {
        assert_eq!([fib(0), fib(1), fib(2), fib(10), fib(30)], [0, 1, 1, 55, 832_040]);
        assert_eq!(parse_fib(b"40"), Some(40));
        assert_eq!(parse_fib(b"41"), None);
        assert_eq!(parse_fib(b"-1"), None);
        assert_eq!(parse_fib(b"x"), None);
        assert_eq!(parse_fib(b"99999999999999999999"), None);
    }
}
