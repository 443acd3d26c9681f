//! Uncached file reads on the ring, after the simulated storage delay if
//! any; the response goes to the connection when the last read completes.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use crate::conn::ConnId;
use crate::service::FileRead;

use super::*;

/// An uncached file read in flight: the buffer the kernel fills.
#[derive(Debug)]
pub(super) struct PendingRead {
    pub(super) conn: ConnId,
    pub(super) read: FileRead,
    pub(super) buffer: Vec<u8>,
    pub(super) filled: usize,
}

impl Loop<'_> {
    /// Submits the file reads that `advance` queued (after the simulated
    /// storage delay, if any).
    pub(super) fn start_reads(&mut self) {
        for (conn, read) in std::mem::take(&mut self.started) {
            let key = self.next_read;
            self.next_read += 1;
            let delay = read.delay;
            let len = if read.reads_into_memory() { read.file.len as usize } else { 0 };
            let pending = PendingRead { conn, read, buffer: vec![0; len], filled: 0 };
            self.reads.insert(key, pending);
            if delay.is_zero() {
                self.submit_read(key);
            } else {
                self.delayed.push(delay, key);
            }
        }
    }

    pub(super) fn submit_read(&mut self, key: u64) {
        let Some(pending) = self.reads.get_mut(&key) else { return };
        if pending.filled == pending.buffer.len() || !pending.read.reads_into_memory() {
            self.finish_read(key, Ok(0));
            return;
        }
        let rest = &mut pending.buffer[pending.filled..];
        let read =
            opcode::Read::new(types::Fd(pending.read.file.file.as_raw_fd()), rest.as_mut_ptr(), rest.len() as u32)
                .offset(pending.filled as u64)
                .build()
                .user_data(Op::Read.tag(key));
        self.push(read);
        self.in_flight += 1;
    }

    pub(super) fn on_read(&mut self, key: u64, result: i32) {
        let outcome = if result >= 0 { Ok(result as usize) } else { Err(io::Error::from_raw_os_error(-result)) };
        self.finish_read(key, outcome);
    }

    /// A read completed: more to read, or the response for its connection.
    pub(super) fn finish_read(&mut self, key: u64, outcome: io::Result<usize>) {
        let Some(mut pending) = self.reads.remove(&key) else { return };
        let result = match outcome {
            Ok(n) if n > 0 && pending.filled + n < pending.buffer.len() => {
                pending.filled += n;
                self.reads.insert(key, pending);
                self.submit_read(key);
                return;
            }
            Ok(n) => {
                pending.filled += n;
                pending.buffer.truncate(pending.filled);
                Ok(pending.buffer)
            }
            Err(err) => Err(err),
        };
        // The cache takes it only if no SIGHUP came since the read began
        // (`FileRead::finish` compares the cache's generation).
        let response = pending.read.finish(result);
        if let Some(entry) = self.entries.get_mut(pending.conn) {
            if !entry.closing {
                entry.conn.complete(response);
                self.touched.push(pending.conn);
            }
        }
    }
}
