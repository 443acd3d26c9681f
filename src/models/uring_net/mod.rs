//! Stage 4 (asynchronous I/O), taken to sockets: every socket and file
//! operation completes on io_uring, and there is no epoll.
//!
//! **What it teaches.** `uring` waits for *readiness* ("you may read now")
//! with epoll; this model waits for *completions* ("your read is done, here
//! are the bytes") and nothing else. It queues submission entries on a ring
//! shared with the kernel and learns each outcome from a completion entry;
//! one `io_uring_enter` per turn submits the whole batch and waits
//! ([`Loop::run`]). This file is the loop and its handlers: accept
//! ([`Loop::on_accept`]), receive ([`Loop::on_recv`]), send
//! ([`Loop::submit_send`], [`Loop::sent`]) and close ([`Loop::close`]);
//! [`Loop::drive`] lets the shared [`Conn`] state machine do all it can.
//!
//! **Who owns a buffer, and when** (`docs/guide/04b-readiness-and-completion.md`
//! draws it): a buffer in a submitted entry is the kernel's until its
//! completion comes back. So a connection's [`Staged`] inbox and outbox are
//! touched only between completions, a send's bytes are not touched until it
//! completes, and a connection is freed only once its last operation has
//! completed or been cancelled ([`Loop::free_if_idle`]), never while the
//! kernel may still write into it.
//!
//! The techniques, each in a file beside this one, readable or skippable:
//! `probe.rs` (what the kernel offers, the `--without` switches, batching),
//! `buffer_ring.rs` (provided buffers), `registered_files.rs`,
//! `zero_copy.rs`, `splice.rs` (files by `sendfile` into a pipe, then
//! splice); `reads.rs` and `work.rs` (file reads on the ring, fib on reader
//! threads), `staged.rs` (a connection's memory), `stopping.rs` (signals,
//! time limits, the last turn), `ring.rs` (the loop's state and set-up).
//!
//! **Where blocking work runs.** In the kernel; fib on reader threads.
//! **Cost.** A ring per loop, [`RECV_BUFFERS`] x [`RECV_BUFFER_BYTES`] of
//! provided buffers, per connection an input and an output buffer (and a
//! pipe once it streams a file); a share of one `io_uring_enter` per request.
//!
//! ```text
//! server --model uring-net --root fixtures
//! ```

mod buffer_ring;
mod probe;
mod reads;
mod registered_files;
mod ring;
mod splice;
mod staged;
mod stopping;
mod work;
mod zero_copy;

use self::{buffer_ring::*, probe::*, reads::*, ring::*, staged::*, work::*, zero_copy::*};

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, types};

use crate::conn::{Conn, ConnId, Status};
use crate::error::ServerError;
use crate::fan_out::{self, Seat};
use crate::net::{self, Accepted};
use crate::server::Server;

/// Submission queue size; the completion queue is twice that (and the
/// kernel keeps overflowing completions rather than dropping them).
pub const RING_ENTRIES: u32 = 1024;
/// Registered-file slots kept free while a multishot accept is armed: one
/// arm may take a burst of connections before the loop sees any, and a
/// connection accepted into a full table is closed by the kernel unanswered.
const ACCEPT_HEADROOM: usize = 64;
/// Stop receiving from a client while this much of its input is unread
/// (it pipelines faster than its answers are sent).
const INBOX_BYTES: usize = 1 << 20;

/// What a completion is for: the top byte of its `user_data`; the rest
/// is a connection's slot index, a read's or zero-copy send's number, or a
/// signal's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Signal,
    Recv,
    Send,
    SendZc,
    Splice,
    Read,
    Shutdown,
    Computed,
    Cancel,
    Close,
}

/// Runs the `uring-net` model: `--workers` loops, each on its own ring.
pub fn run(server: Server) -> Result<(), ServerError> {
    probe(false)?; // refused before announcing, naming the model to use instead
    open_no_pipe()?; // now, while fds are free: it is wanted when they are not
    fan_out::run_per_worker(&server, completion_loop)
}

fn completion_loop(server: &Server, seat: Seat<'_>) -> Result<(), ServerError> {
    let Some(mut lp) = Loop::open(server, seat)? else {
        return Ok(()); // another loop failed to start, and says why
    };
    let outcome = lp.run();
    if !lp.cancel_everything() {
        // The kernel may still write into any of its buffers.
        std::mem::forget(lp);
    }
    outcome
}

impl Loop<'_> {
    fn run(&mut self) -> Result<(), ServerError> {
        self.arm_accept();
        for index in 0..self.signals.len() {
            self.arm_signal(index);
        }
        self.arm_computed();
        let mut completions = Vec::with_capacity(RING_ENTRIES as usize * 2);
        while !self.should_exit() {
            // 1. Submit everything queued this turn and wait for at least
            // one completion, or until a time limit is due: one syscall.
            let timeout = self.wait_timeout().map(|d| Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos()));
            let args = SubmitArgs::new();
            let args = match &timeout {
                Some(ts) => args.timespec(ts),
                None => args,
            };
            let (_turn, mut wait) = (crate::trace::span("turn"), crate::trace::span("submit and wait")); // --trace
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(submitted) => wait.arg("submitted", || submitted as u64),
                Err(err) if matches!(err.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(err) => return Err(ServerError::io("io_uring_enter")(err)),
            }

            // 2. Handle each completion.
            let _handle = self.reap(&mut completions, wait);
            for (user_data, result, flags) in completions.drain(..) {
                self.on_completion(user_data, result, flags);
            }
            self.buffers.publish();

            // 3. Reads whose simulated storage delay is over (a file that is
            // streamed, not read, is answered at once: before step 4).
            for key in self.delayed.pop_due() {
                self.submit_read(key);
            }

            // 4. Let every connection that heard something go as far as it can.
            while let Some(id) = self.touched.pop() {
                self.drive(id);
            }

            // 5. Housekeeping: time limits, an accept pause ending.
            self.close_expired();
            if !self.accepting && self.lifecycle.pause_has_ended() && self.lifecycle.is_accepting() {
                self.arm_accept();
            }
        }
        Ok(())
    }

    /// Arms the accept: multishot (one entry, a completion per connection)
    /// or single-shot, into a registered-file slot the kernel picks or as an
    /// fd. With registered files, the table must have room: multishot only with
    /// [`ACCEPT_HEADROOM`] slots free, single-shot with fewer, none when full
    /// (then a freed slot arms it again).
    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listener.as_raw_fd());
        let direct = self.techniques.registered_files > 0;
        let room = self.free_slots();
        if room == 0 {
            return;
        }
        // A direct descriptor is no fd, so it has no close-on-exec flag
        // (the kernel refuses the flag with EINVAL).
        let flags = if direct { 0 } else { libc::SOCK_CLOEXEC };
        self.accepting_many = self.techniques.multishot && room > ACCEPT_HEADROOM;
        let accept = if self.accepting_many {
            opcode::AcceptMulti::new(fd).allocate_file_index(direct).flags(flags).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(direct.then(types::DestinationSlot::auto_target))
                .flags(flags)
                .build()
        };
        self.push(accept.user_data(Op::Accept.tag(0)));
        self.in_flight += 1;
        self.accepting = true;
    }

    fn on_completion(&mut self, user_data: u64, result: i32, flags: u32) {
        let Some((op, low)) = Op::of(user_data) else { return };
        let more = cqueue::more(flags);
        if !more && op.is_tracked() {
            self.in_flight -= 1;
        }
        match op {
            Op::Accept => self.on_accept(result, more),
            Op::Signal => self.on_signal(low as usize, result),
            Op::Recv => self.on_recv(low, result, flags, more),
            Op::Send => self.on_send(low, result),
            Op::SendZc => self.on_send_zero_copy(low, result, flags),
            Op::Splice => self.on_splice(low, result),
            Op::Read => self.on_read(low, result),
            Op::Shutdown => self.on_shutdown(low, result),
            Op::Computed => self.on_computed(result),
            Op::Cancel | Op::Close => {}
        }
    }

    fn on_accept(&mut self, result: i32, more: bool) {
        if !more {
            self.accepting = false;
        }
        if result >= 0 {
            let socket = if self.techniques.registered_files > 0 {
                Socket::Direct(result as u32)
            } else {
                // SAFETY: a successful accept completion carries a new fd
                // that nothing else owns.
                Socket::Fd(unsafe { OwnedFd::from_raw_fd(result as RawFd) })
            };
            if !self.lifecycle.is_stopping() {
                self.admit(socket);
            } else {
                self.release(socket);
            }
            if more && self.accepting_many && self.free_slots() <= ACCEPT_HEADROOM {
                // Near a full table: accept one at a time from here on.
                self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
            }
        } else {
            // One connection failed (the client gave up first): accept the
            // next. Out of fds, registered-file slots or memory, or worse:
            // re-arming at once would spin on the same error, so pause.
            let paused = -result != libc::ECANCELED
                && matches!(net::sort_accept_error(&io::Error::from_raw_os_error(-result)), Accepted::Pause);
            if paused {
                self.lifecycle.pause_accepting();
                if more {
                    self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
                }
            }
        }
        if self.may_arm_accept() {
            self.arm_accept();
        }
    }

    /// Takes a new connection, or refuses it (503) when the loop is full:
    /// the refusal is staged and sent, then the connection closes.
    fn admit(&mut self, socket: Socket) {
        let full = self.entries.len() >= self.max_conns;
        let conn = Conn::new(self.service, self.limits);
        let id = self.entries.insert(Entry::new(conn, Staged::new(socket), self.techniques.provided_buffers, full));
        let index = id.to_usize() as u32 as usize;
        if self.ids.len() <= index {
            self.ids.resize(index + 1, None);
        }
        self.ids[index] = Some(id);
        self.drive(id);
    }

    fn on_recv(&mut self, index: u64, result: i32, flags: u32, more: bool) {
        let bid = cqueue::buffer_select(flags);
        let Some(entry) = self.id_at(index).and_then(|id| Some((id, self.entries.get_mut(id)?))) else {
            if let Some(bid) = bid {
                self.buffers.give_back(bid);
            }
            return;
        };
        let (id, entry) = entry;
        if !more {
            entry.receiving = false;
        }
        if result > 0 && entry.refused_at.is_none() {
            let received = match bid {
                Some(bid) => self.buffers.bytes(bid, result as usize),
                None => &entry.recv_buffer[..(result as usize).min(entry.recv_buffer.len())],
            };
            entry.socket.inbox.extend_from_slice(received);
        } else if result == 0 {
            entry.socket.eof = true;
        } else if !matches!(-result, libc::ENOBUFS | libc::ECANCELED) {
            entry.socket.failed = Some(-result);
        }
        if let Some(bid) = bid {
            self.buffers.give_back(bid);
        }
        if entry.closing {
            self.free_if_idle(id);
            return;
        }
        if more && entry.socket.unread() >= INBOX_BYTES {
            // The client sends faster than it reads its answers: stop
            // receiving until its input has been used.
            self.cancel(CancelBuilder::user_data(Op::Recv.tag(index)));
        }
        self.touched.push(id);
    }

    fn on_send(&mut self, index: u64, result: i32) {
        let Some(id) = self.id_at(index) else { return };
        self.sent(id, result);
    }

    /// A send of connection `id` completed with `result` (bytes, or
    /// `-errno`); `sending[sent..]` holds what is left to send.
    fn sent(&mut self, id: ConnId, result: i32) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.sending = false;
        if entry.closing {
            self.free_if_idle(id);
            return;
        }
        if result < 0 {
            Self::broken(entry);
        } else {
            entry.socket.sent += result as usize;
            if entry.socket.sent < entry.socket.sending.len() {
                self.submit_send(id); // a short send: the rest
                return;
            }
            entry.socket.sending.clear();
            entry.socket.sent = 0;
        }
        self.touched.push(id);
    }

    /// Lets connection `id` do all it can, then submits what it needs:
    /// a send of its staged bytes, a splice of its pipe, a receive.
    fn drive(&mut self, id: ConnId) {
        let service = self.service;
        let Some(entry) = self.entries.get_mut(id) else { return };
        if entry.closing {
            return;
        }
        let mut splice = 0;
        for _ in 0..64 {
            if !entry.finishing {
                let mut executor = ToSubmit { reads: &mut self.started, compute: &self.computations };
                if entry.conn.advance(&mut entry.socket, service, &mut executor, id) == Status::Closed {
                    entry.finishing = true;
                }
            }
            if entry.sending || entry.splicing || !entry.socket.outbox.is_empty() {
                break;
            }
            if !entry.socket.pipe_used.get() {
                break;
            }
            // File bytes wait in the pipe once everything before them is sent.
            let queued = entry
                .socket
                .pipe
                .get()
                .and_then(Option::as_ref)
                .map_or(0, |(reader, _)| rustix::io::ioctl_fionread(reader).unwrap_or(0));
            if queued > 0 {
                splice = queued;
                break;
            }
            entry.socket.pipe_used.set(false);
            if entry.finishing {
                break;
            }
        }
        let wants_send = !entry.sending && !entry.splicing && !entry.socket.outbox.is_empty();
        let refused = entry.refused_at.is_some();
        let input_open = !entry.socket.eof && entry.socket.failed.is_none();
        // A refused connection receives only to discard, until the FIN.
        let wants_recv = !entry.receiving
            && (refused || (!entry.finishing && entry.conn.wants_read()))
            && input_open
            && entry.socket.unread() < INBOX_BYTES;
        let all_sent = !entry.sending && !entry.splicing && !wants_send && splice == 0;
        // The staged close's first step, once the response has left.
        let shutdown = all_sent && entry.socket.shutdown_wanted && !entry.socket.shut_down;
        let done = entry.finishing && all_sent && !shutdown && !entry.shutting_down && !(refused && input_open);
        if wants_send {
            self.submit_send(id);
        } else if splice > 0 {
            self.submit_splice(id, splice as usize);
        }
        if shutdown {
            self.submit_shutdown(id);
        }
        if wants_recv {
            self.arm_recv(id);
        }
        self.start_reads();
        if done {
            self.close(id);
        }
    }

    fn submit_send(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let socket = &mut entry.socket;
        if socket.sending.is_empty() {
            std::mem::swap(&mut socket.sending, &mut socket.outbox);
            socket.sent = 0;
        }
        let (fd, fixed) = socket.socket.target();
        let rest_len = socket.sending.len() - socket.sent;
        let send = if self.techniques.zero_copy && rest_len >= ZERO_COPY_MIN_BYTES {
            // The buffer moves to the loop until the kernel's notification.
            let send = ZeroCopySend { conn: id, buffer: std::mem::take(&mut socket.sending), offset: socket.sent };
            zero_copy_send(&mut self.zero_copy, &mut self.next_zero_copy, fd, send)
        } else {
            let rest = &socket.sending[socket.sent..];
            let entry = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).flags(libc::MSG_NOSIGNAL).build();
            entry.user_data(Op::Send.tag(slot(id)))
        };
        entry.sending = true;
        self.push(send.flags(fixed));
        self.in_flight += 1;
    }

    /// Closes connection `id`: cancels what the kernel still does for it,
    /// and frees it (its fd, its buffers) once nothing is in flight.
    fn close(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        if entry.closing {
            return;
        }
        entry.closing = true;
        if entry.busy() {
            // Before the socket is closed: the cancel finds operations by it.
            let every_operation = entry.socket.socket.cancel_all();
            self.cancel(every_operation);
        } else {
            self.free_if_idle(id);
        }
    }

    fn free_if_idle(&mut self, id: ConnId) {
        if self.entries.get(id).is_some_and(|entry| entry.closing && !entry.busy()) {
            let entry = self.entries.remove(id);
            self.ids[slot(id) as usize] = None;
            if let Some(entry) = entry {
                self.release(entry.socket.socket);
            }
            if self.may_arm_accept() {
                self.arm_accept(); // the table was full
            }
        }
    }
}
