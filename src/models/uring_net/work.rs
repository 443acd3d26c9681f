//! Where a request's blocking work goes: file reads are queued for the
//! ring, fib runs on reader threads (there is no opcode for computing), whose
//! results are announced by a byte on a pipe whose read is on the ring.

use std::io;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use io_uring::{opcode, types};

use crate::backend::READER_KEEP_ALIVE;
use crate::conn::{ConnId, Executor};
use crate::log::info;
use crate::protocol::Response;
use crate::service::{FileRead, Work};
use crate::thread_pool::ThreadPool;

use super::*;

/// Where a request's blocking work goes: file reads are queued for the
/// ring after `advance` returns; fib goes to the reader threads.
pub(super) struct ToSubmit<'a> {
    pub(super) reads: &'a mut Vec<(ConnId, FileRead)>,
    pub(super) compute: &'a Computations,
}

impl Executor for ToSubmit<'_> {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        match work {
            Work::Read(read) if read.delay.is_zero() && !read.reads_into_memory() => Some(read.finish(Ok(Vec::new()))),
            Work::Read(read) => {
                self.reads.push((conn, read));
                None
            }
            compute @ Work::Compute(_) => {
                self.compute.start(conn, compute);
                None
            }
        }
    }
}

/// CPU-bound work on reader threads. A finished response is queued, and
/// the first one queued since the loop last looked writes a byte to a pipe
/// whose read is armed on the ring: the loop learns of it as a completion.
pub(super) struct Computations {
    pub(super) pool: ThreadPool,
    pub(super) finished: Arc<Mutex<Vec<(ConnId, Response)>>>,
    pub(super) wake: Arc<UnixStream>,
    /// The pipe's read end and the buffer its armed read fills.
    pub(super) woken: (UnixStream, Box<[u8; 64]>),
}

impl Computations {
    pub(super) fn new(readers: usize) -> io::Result<Computations> {
        let (woken, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?; // a full pipe already holds a wake-up
        Ok(Computations {
            pool: ThreadPool::elastic("reader", readers, READER_KEEP_ALIVE),
            finished: Arc::default(),
            wake: Arc::new(wake),
            woken: (woken, Box::new([0; 64])),
        })
    }

    pub(super) fn start(&self, conn: ConnId, work: Work) {
        let (finished, wake) = (self.finished.clone(), self.wake.clone());
        self.pool.execute(move || {
            let response = work.run_blocking();
            let mut queue = finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.push((conn, response));
            if queue.len() == 1 {
                let _ = (&*wake).write(&[1]);
            }
        });
    }

    pub(super) fn take(&self) -> Vec<(ConnId, Response)> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl Loop<'_> {
    pub(super) fn arm_computed(&mut self) {
        let (reader, buffer) = &mut self.computations.woken;
        let entry = opcode::Read::new(types::Fd(reader.as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(Op::Computed.tag(0));
        self.push(entry);
        self.in_flight += 1;
    }

    /// Reader threads finished some work: hand each response to its
    /// connection (if it is still open), and listen for the next.
    pub(super) fn on_computed(&mut self, result: i32) {
        if result == -libc::ECANCELED {
            return; // the exit
        }
        if result <= 0 && result != -libc::EINTR {
            // The write end lives as long as the loop: this cannot happen,
            // and re-arming would spin on it.
            info!("fib results: read: {}; no more fib answers", io::Error::from_raw_os_error(-result));
            return;
        }
        for (conn, response) in self.computations.take() {
            if let Some(entry) = self.entries.get_mut(conn) {
                if !entry.closing {
                    entry.conn.complete(response);
                    self.touched.push(conn);
                }
            }
        }
        self.arm_computed();
    }
}
