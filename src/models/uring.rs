//! Stage 4: the event loop with file reads submitted to io_uring.
//!
//! It extends the `event` model: its one use of that model is
//! [`event::run_with_backend`], built here with this file's backend, [`Uring`]
//! (driven by the stage-4 models' shared [`KernelBackend`]).
//!
//! **What it teaches.** io_uring is the kernel's own asynchronous
//! interface: two rings shared with the kernel, one where the program
//! queues requests (submission queue entries: "read N bytes of fd F at
//! offset O into this buffer") and one where the kernel posts results
//! (completion queue entries). One `io_uring_enter` could submit a whole
//! batch; this model submits each read as the loop plans it (one syscall
//! per read, as `event-aio` makes one `aio_read` per read), and
//! `uring-net` shows the batch. No thread of ours blocks and no signal is
//! needed. The ring is told to
//! signal an eventfd on every completion, and that eventfd sits in the
//! mio (epoll) set, so completions wake the same loop as sockets do.
//!
//! Compared with `event-aio`: the same [`KernelBackend`] drives it (only
//! [`KernelReads`] differs), but reads that hit the page cache complete
//! inside the submit call, and the others are handled by the kernel's own
//! workers rather than glibc's threads. This model keeps sockets on epoll
//! so it can share the loop; a full io_uring server would also submit
//! accept, recv and send to the ring.
//!
//! **Where blocking work runs.** File reads in the kernel; fib on
//! `--readers` threads. **Cost.** A ring of [`RING_ENTRIES`] entries per
//! loop, a buffer per pending read; one syscall submits each read.
//!
//! If the kernel refuses io_uring (old kernel, seccomp, containers with
//! `io_uring_disabled`), the server exits and names `event-async` instead.
//!
//! ```text
//! server --model uring --root fixtures --read-delay-ms 100
//! ```

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{opcode, types, IoUring};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::event::EventfdFlags;

use crate::backend::{Coalescing, KernelBackend, KernelReads, PendingRead};
use crate::error::ServerError;
use crate::models::event;
use crate::server::Server;

/// Submission queue size; completions queue twice that.
pub const RING_ENTRIES: u32 = 256;

/// Runs the `uring` model: the mio loop with reads submitted to io_uring.
pub fn run(server: Server) -> Result<(), ServerError> {
    new_ring()?; // refused before announcing, naming the model to use instead
    event::run_with_backend(server, |readers, registry, token| {
        KernelBackend::<Uring>::open(readers, registry, token).map(Coalescing::new)
    })
}

/// Sets up a ring, or explains that this kernel refuses io_uring and which
/// model to use instead.
fn new_ring() -> Result<IoUring, ServerError> {
    IoUring::new(RING_ENTRIES).map_err(|err| ServerError::Unavailable {
        model: "uring",
        reason: format!("io_uring_setup failed: {err}"),
        instead: "event-async",
    })
}

/// Reads in flight through io_uring, by the `user_data` tag of their entry.
pub struct Uring {
    ring: IoUring,
    eventfd: OwnedFd,
    in_flight: HashMap<u64, PendingRead>,
    next_id: u64,
}

impl KernelReads for Uring {
    /// One ring per loop ([`run`] has already checked that io_uring works);
    /// completions ring an eventfd in the loop's poll.
    fn open(registry: &Registry, token: Token) -> io::Result<Uring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let eventfd: OwnedFd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        registry.register(&mut SourceFd(&eventfd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Uring { ring, eventfd, in_flight: HashMap::new(), next_id: 0 })
    }

    fn submit(&mut self, mut read: PendingRead) -> Result<(), (PendingRead, io::Error)> {
        let id = self.next_id;
        self.next_id += 1;
        let fd = types::Fd(read.file().as_raw_fd());
        let (buffer, offset) = read.unfilled();
        let len = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
        let entry = opcode::Read::new(fd, buffer.as_mut_ptr(), len).offset(offset).build().user_data(id);
        // SAFETY: the entry points into the PendingRead's buffer and names
        // its file; both are kept in `in_flight` until the kernel posts the
        // completion for `id` (or Drop has waited for it), and the buffer's
        // heap allocation does not move when the PendingRead does.
        let queued = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if !queued {
            return Err((read, io::Error::other("io_uring submission queue full")));
        }
        self.in_flight.insert(id, read);
        if let Err(err) = self.ring.submit() {
            // Nothing was submitted: the entry is still ours to take back.
            self.ring.submission().sync();
            let read = self.in_flight.remove(&id).expect("just inserted");
            return Err((read, err));
        }
        Ok(())
    }

    fn reap(&mut self, finished: &mut Vec<(PendingRead, io::Result<usize>)>) {
        // Reset the eventfd so its next completion is a new event.
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.eventfd, &mut count);
        for completion in self.ring.completion() {
            let Some(read) = self.in_flight.remove(&completion.user_data()) else { continue };
            let result = completion.result();
            let outcome = if result >= 0 { Ok(result as usize) } else { Err(io::Error::from_raw_os_error(-result)) };
            finished.push((read, outcome));
        }
    }
}

impl Drop for Uring {
    /// The kernel may still be writing into pending buffers: wait for every
    /// read in flight before they are freed.
    fn drop(&mut self) {
        while !self.in_flight.is_empty() {
            if self.ring.submit_and_wait(1).is_err() {
                // The ring cannot be waited on: leak the buffers rather than
                // free memory the kernel might still write.
                std::mem::forget(std::mem::take(&mut self.in_flight));
                return;
            }
            for completion in self.ring.completion() {
                self.in_flight.remove(&completion.user_data());
            }
        }
    }
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").field("in_flight", &self.in_flight.len()).finish()
    }
}
