//! The kernel-driven backends (`event-aio`, `uring`): file reads the
//! kernel performs while the loop goes on.

use std::io;
use std::time::Instant;

use mio::{Registry, Token};

use super::alarm::Alarm;
use super::completions::Completions;
use super::delay_queue::DelayQueue;
use crate::conn::{ConnId, Executor};
use crate::protocol::Response;
use crate::service::{FileRead, Work};
use crate::thread_pool::ThreadPool;

/// A kernel interface that reads files asynchronously (POSIX AIO, io_uring):
/// all that distinguishes `event-aio` from `uring`.
pub trait KernelReads: Sized {
    /// Sets the interface up for one loop, registering in `registry` under
    /// `token` the source that announces finished reads.
    fn open(registry: &Registry, token: Token) -> io::Result<Self>;
    /// Starts reading the unfilled part of `read`. On failure the read is
    /// handed back with the error, to be answered with 500.
    fn submit(&mut self, read: PendingRead) -> Result<(), (PendingRead, io::Error)>;
    /// When the loop must look for finished reads even if nothing wakes
    /// it (an interface that cannot announce completions); `None` if its
    /// notification always does.
    fn next_check(&self) -> Option<Instant> {
        None
    }
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
    /// Wakes the loop when the earliest delayed read is due.
    alarm: Alarm,
    /// Runs fib; its results come back through `computed`.
    compute: ThreadPool,
    computed: Completions,
}

impl<K: KernelReads> KernelBackend<K> {
    /// The backend of one loop: the kernel interface `K`, at most
    /// `readers` threads for fib, and the sources that wake the loop
    /// polling `registry` with `token` (an [`Open`](super::Open)).
    pub fn open(readers: usize, registry: &Registry, token: Token) -> io::Result<Self> {
        let kernel = K::open(registry, token)?;
        let compute = ThreadPool::elastic("reader", readers, super::READER_KEEP_ALIVE);
        let computed = Completions::new(registry, token)?;
        let alarm = Alarm::new(registry, token)?;
        Ok(KernelBackend { kernel, delayed: DelayQueue::default(), alarm, compute, computed })
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

    /// Sets the alarm for the earliest delayed read. Should the timer fail
    /// (it cannot, short of a kernel bug), the loop's own timeout, which
    /// `next_deadline` reports, still ends every delay, a little late.
    fn set_alarm(&mut self) {
        let _ = self.alarm.set(self.delayed.next_deadline());
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
                self.set_alarm();
                None
            }
            Work::Read(read) => self.start(conn, read),
            compute @ Work::Compute(_) => {
                let computed = self.computed.clone();
                self.compute.execute(move || computed.post(conn, compute.run_blocking()));
                None
            }
        }
    }

    fn completed(&mut self, done: &mut Vec<(ConnId, Response)>) {
        for (conn, read) in self.delayed.pop_due() {
            done.extend(self.start(conn, read).map(|response| (conn, response)));
        }
        self.set_alarm();
        let mut reaped = Vec::new();
        self.kernel.reap(&mut reaped);
        for (pending, result) in reaped {
            match pending.advance(result) {
                Ok(finished) => done.push(finished),
                Err(more) => done.extend(self.continue_read(more)),
            }
        }
        self.computed.take_into(done);
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.delayed.next_deadline(), self.kernel.next_check()].into_iter().flatten().min()
    }
}
