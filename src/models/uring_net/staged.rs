//! A connection's memory in a completion model: the [`Staged`] socket the
//! state machine reads and writes (an inbox the receives fill, an outbox the
//! sends take, a pipe for files), its [`Socket`] (an fd or a registered-file
//! slot), and the [`Entry`] that says which operations the kernel is doing
//! for it. Also the staged close's first step, the `shutdown`.

use std::cell::{Cell, OnceCell};
use std::io;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Instant;

use io_uring::types::CancelBuilder;
use io_uring::{opcode, squeue, types};

use crate::conn::{Conn, ConnId};
use crate::error::ServerError;
use crate::output::{Output, Sink, Then};
use crate::protocol::{Framing, Response};
use crate::refusal::Refusal;

use super::*;

/// `/dev/null`, opened by [`run`]: see [`no_pipe`].
pub(super) static NO_PIPE: OnceLock<std::fs::File> = OnceLock::new();

/// Opens `/dev/null` for [`no_pipe`] ([`run`] does, at start).
pub(super) fn open_no_pipe() -> Result<(), ServerError> {
    let dev_null = std::fs::File::open("/dev/null").map_err(ServerError::io("cannot open /dev/null"))?;
    let _ = NO_PIPE.set(dev_null);
    Ok(())
}

/// Most bytes staged for one send: a connection's output beyond this waits
/// (backpressure, as a full socket buffer is for `event`).
pub(super) const OUTBOX_BYTES: usize = 256 << 10;

/// A pipe of this size lets one splice move a whole `sendfile` chunk.
pub(super) const PIPE_BYTES: usize = 1 << 20;

/// A connection's socket as the ring names it.
#[derive(Debug)]
pub(super) enum Socket {
    /// An ordinary fd, closed when dropped.
    Fd(OwnedFd),
    /// A slot in the ring's table of registered files (a direct
    /// descriptor): there is no fd; the loop closes it with a Close entry.
    Direct(u32),
}

impl Socket {
    /// What goes in an entry's fd field, and the flag that says a direct
    /// descriptor's slot is there instead of an fd (`IOSQE_FIXED_FILE`,
    /// io_uring_enter(2)).
    pub(super) fn target(&self) -> (types::Fd, squeue::Flags) {
        match self {
            Socket::Fd(fd) => (types::Fd(fd.as_raw_fd()), squeue::Flags::empty()),
            Socket::Direct(slot) => (types::Fd(*slot as RawFd), squeue::Flags::FIXED_FILE),
        }
    }

    /// A cancel of every operation on this socket.
    pub(super) fn cancel_all(&self) -> CancelBuilder {
        match self {
            Socket::Fd(fd) => CancelBuilder::fd(types::Fd(fd.as_raw_fd())).all(),
            Socket::Direct(slot) => CancelBuilder::fd(types::Fixed(*slot)).all(),
        }
    }
}

/// A socket as the connection state machine sees it in a completion model:
/// bytes the kernel has received (and the loop copied out of a provided
/// buffer), and bytes staged for the next send. Reading an empty inbox, or
/// writing a full outbox, says `WouldBlock`, as a non-blocking socket does.
#[derive(Debug)]
pub(super) struct Staged {
    pub(super) socket: Socket,
    pub(super) inbox: Vec<u8>,
    /// Bytes of `inbox` already read.
    pub(super) taken: usize,
    /// The peer sent end-of-stream.
    pub(super) eof: bool,
    /// The receive failed (the peer reset the connection).
    pub(super) failed: Option<i32>,
    /// Bytes for the next send.
    pub(super) outbox: Vec<u8>,
    /// Bytes of the send in flight: the kernel's until it completes.
    pub(super) sending: Vec<u8>,
    /// How many of `sending` the kernel has sent.
    pub(super) sent: usize,
    /// A pipe for file bodies, made when the first one is streamed:
    /// `sendfile` fills it, a splice empties it into the socket.
    pub(super) pipe: OnceCell<Option<(OwnedFd, OwnedFd)>>,
    /// `sendfile` may have put bytes in the pipe since it was last emptied.
    pub(super) pipe_used: Cell<bool>,
    /// The state machine asked for a staged close: shut down the write
    /// side once everything staged and piped has been sent.
    pub(super) shutdown_wanted: bool,
    /// That shutdown is done.
    pub(super) shut_down: bool,
}

impl Staged {
    pub(super) fn new(socket: Socket) -> Staged {
        Staged {
            socket,
            inbox: Vec::new(),
            taken: 0,
            eof: false,
            failed: None,
            outbox: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            pipe: OnceCell::new(),
            pipe_used: Cell::new(false),
            shutdown_wanted: false,
            shut_down: false,
        }
    }

    pub(super) fn unread(&self) -> usize {
        self.inbox.len() - self.taken
    }

    /// Room in the outbox; none while file bytes wait in the pipe (they
    /// were written first and must leave first).
    pub(super) fn room(&self) -> usize {
        if self.pipe_used.get() {
            0
        } else {
            OUTBOX_BYTES.saturating_sub(self.outbox.len())
        }
    }

    pub(super) fn stage(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut room = self.room();
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let before = self.outbox.len();
        for slice in slices {
            let take = slice.len().min(room);
            self.outbox.extend_from_slice(&slice[..take]);
            room -= take;
            if room == 0 {
                break;
            }
        }
        Ok(self.outbox.len() - before)
    }

    /// The pipe, made the first time a file is streamed. `None` if no pipe
    /// could be made.
    pub(super) fn pipe(&self) -> Option<&(OwnedFd, OwnedFd)> {
        self.pipe
            .get_or_init(|| {
                use rustix::pipe::{pipe_with, PipeFlags};
                let (reader, writer) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                let _ = rustix::pipe::fcntl_setpipe_size(&writer, PIPE_BYTES);
                Some((reader, writer))
            })
            .as_ref()
    }
}

impl Read for Staged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.unread() == 0 {
            if let Some(errno) = self.failed {
                return Err(io::Error::from_raw_os_error(errno));
            }
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.unread());
        buf[..n].copy_from_slice(&self.inbox[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.inbox.len() {
            self.inbox.clear();
            self.taken = 0;
        }
        Ok(n)
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stage(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stage(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Staged {
    /// The fd [`Output`] streams files to with `sendfile`: the pipe's write
    /// end, so that the bytes reach the socket by splice, in order, after
    /// what is staged before them.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe_used.set(true);
        match self.pipe() {
            Some((_, writer)) => writer.as_fd(),
            None => no_pipe().as_fd(),
        }
    }
}

impl Sink for Staged {
    /// Staged bytes all leave in one send anyway: holding back is free.
    fn write_held(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stage(slices)
    }

    /// Staged bytes have not left yet: the loop shuts the socket down
    /// after their send completes (`Ring::drive`).
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown_wanted = true;
        Ok(())
    }
}

/// A read-only fd: `sendfile` to it fails (`EBADF`), which closes a
/// connection that could get no pipe (the process is out of fds).
pub(super) fn no_pipe() -> &'static std::fs::File {
    NO_PIPE.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null opens"))
}

/// One connection: its state machine, its staged socket and what the
/// kernel is doing for it.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) conn: Conn,
    pub(super) socket: Staged,
    /// A receive is armed.
    pub(super) receiving: bool,
    /// A receive has been armed before (the next one is multishot).
    pub(super) received_any: bool,
    /// Where a receive puts its bytes when there are no provided buffers.
    pub(super) recv_buffer: Vec<u8>,
    pub(super) sending: bool,
    pub(super) splicing: bool,
    pub(super) shutting_down: bool,
    /// No more requests: send what is staged, then close.
    pub(super) finishing: bool,
    /// Cancelled: waiting for its operations to complete, then freed.
    pub(super) closing: bool,
    /// Refused (the loop was full) at this time: it is sent its 503, then
    /// shut down, and what the client still sends is discarded until its
    /// FIN or [`LINGER_TIMEOUT`](crate::conn::LINGER_TIMEOUT), so that the close is no reset.
    pub(super) refused_at: Option<Instant>,
}

impl Entry {
    /// A new connection's entry. Without provided buffers it owns a receive
    /// buffer. A connection `refused` (the loop is full) has its 503 staged
    /// at once; it is sent, then the connection closes.
    pub(super) fn new(conn: Conn, socket: Staged, provided_buffers: bool, refused: bool) -> Entry {
        let mut entry = Entry {
            conn,
            socket,
            receiving: false,
            received_any: false,
            recv_buffer: if provided_buffers { Vec::new() } else { vec![0; RECV_BUFFER_BYTES] },
            sending: false,
            splicing: false,
            shutting_down: false,
            finishing: refused,
            closing: false,
            refused_at: refused.then(Instant::now),
        };
        if refused {
            let mut output = Output::default();
            output.push_response(Framing::Line, Response::Refused(Refusal::Overloaded));
            let _ = output.write_to(&mut entry.socket, Then::SendNow);
            entry.socket.shutdown_wanted = true;
        }
        entry
    }

    pub(super) fn busy(&self) -> bool {
        self.receiving || self.sending || self.splicing || self.shutting_down
    }
}

impl Loop<'_> {
    /// Queues the staged close's first step: shutdown(2) of the write side
    /// only queues a FIN after what was sent, it never waits.
    pub(super) fn submit_shutdown(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.socket.shut_down = true;
        entry.shutting_down = true;
        let (fd, fixed) = entry.socket.socket.target();
        let shutdown = opcode::Shutdown::new(fd, libc::SHUT_WR).build().flags(fixed);
        self.push(shutdown.user_data(Op::Shutdown.tag(slot(id))));
        self.in_flight += 1;
    }

    pub(super) fn on_shutdown(&mut self, index: u64, result: i32) {
        let Some(id) = self.id_at(index) else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.shutting_down = false;
        if entry.closing {
            self.free_if_idle(id);
            return;
        }
        if result < 0 {
            entry.finishing = true;
        }
        self.touched.push(id);
    }
}
