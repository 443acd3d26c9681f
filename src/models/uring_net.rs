//! Stage 4 (asynchronous I/O), taken to sockets: completion only: every socket and file operation goes through io_uring.
//!
//! **What it teaches.** `uring` waits for *readiness* ("you may read
//! now") with epoll and uses io_uring only for file reads. This model waits
//! for *completions* ("your read is done, here are the bytes") and nothing
//! else: no epoll, no `read`/`write`/`accept` calls of its own. It asks the
//! kernel for work by queueing submission entries and learns the outcome
//! from completion entries, both on rings shared with the kernel, and one
//! `io_uring_enter` both submits the whole batch of a turn and waits:
//!
//! * one *multishot accept* posts a completion per new connection;
//! * a *receive* per connection, multishot after the first (armed once, it
//!   posts a completion per arrival), the bytes already in a buffer the
//!   kernel took from a ring of provided buffers (so no buffer is pinned to
//!   an idle connection);
//! * a *send* per batch of responses, from a buffer the connection owns and
//!   does not touch until its completion comes back;
//! * large files leave without passing through user space: `sendfile` into
//!   a pipe (page references, no copy), then a *splice* from the pipe to the
//!   socket;
//! * uncached files are *read*, after a *timeout* entry when storage is
//!   simulated slow (`--read-delay-ms`); signals arrive as reads of a
//!   self-pipe.
//!
//! The connection state machine ([`Conn`]) is the same as every model's: it
//! reads from and writes to a [`Staged`] socket, memory the loop moves to
//! and from the kernel by completions. Who owns a buffer, and when, is the
//! lesson (`docs/guide/09-readiness-and-completion.md` draws it): a buffer in
//! a submitted entry is the kernel's until its completion, so a connection
//! is freed only once its last operation has completed (or been
//! cancelled), never while the kernel may still write into it.
//!
//! **Where blocking work runs.** In the kernel: socket waits, file reads,
//! splices (in its io-wq workers). fib runs in the loop, as in `event`
//! (there is no opcode for computing). **Cost.** A ring per loop, a ring
//! of provided buffers ([`RECV_BUFFERS`] x [`RECV_BUFFER_BYTES`]), and per
//! connection an input and an output buffer (and a pipe once it streams a
//! file). Syscalls per cached keep-alive request: a share of one
//! `io_uring_enter`.
//!
//! What the kernel lacks is found at start with io_uring's probe and said
//! in one line; then the model refuses and names `uring` or `event`.
//!
//! ```text
//! server --model uring-net --root fixtures
//! ```

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::conn::{Conn, ConnId, Executor, Limits, Status, SWEEP_INTERVAL};
use crate::error::ServerError;
use crate::fan_out::{self, Seat};
use crate::log::info;
use crate::net::FD_EXHAUSTION_PAUSE;
use crate::output::{Output, Sink, Then};
use crate::protocol::{Framing, Response};
use crate::refusal::Refusal;
use crate::server::Server;
use crate::service::{FileRead, Service, Work};
use crate::signals::{self, SignalAction};
use crate::slab::Slab;

/// Submission queue size; the completion queue is twice that (and the
/// kernel keeps overflowing completions rather than dropping them).
pub const RING_ENTRIES: u32 = 1024;
/// Buffers in the provided-buffer ring that receives draw from.
pub const RECV_BUFFERS: u16 = 512;
/// Size of each provided buffer: a request head fits in one.
pub const RECV_BUFFER_BYTES: usize = 4096;
/// Most bytes staged for one send: a connection's output beyond this waits
/// (backpressure, as a full socket buffer is for `event`).
const OUTBOX_BYTES: usize = 256 << 10;
/// Stop receiving from a client while this much of its input is unread
/// (it pipelines faster than its answers are sent).
const INBOX_BYTES: usize = 1 << 20;
/// A pipe of this size lets one splice move a whole `sendfile` chunk.
const PIPE_BYTES: usize = 1 << 20;
/// Provided-buffer group id of the receive ring.
const BUFFER_GROUP: u16 = 0;
/// How long the last turn waits for operations cancelled at exit.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// What a completion is for: the top byte of its `user_data`; the rest
/// is a connection's slot index, a read's number or a signal's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Signal,
    Recv,
    Send,
    Splice,
    Read,
    Delay,
    Cancel,
}

impl Op {
    fn tag(self, low: u64) -> u64 {
        (self as u64) << 56 | (low & ((1 << 56) - 1))
    }

    fn of(user_data: u64) -> Option<(Op, u64)> {
        let op = match user_data >> 56 {
            1 => Op::Accept,
            2 => Op::Signal,
            3 => Op::Recv,
            4 => Op::Send,
            5 => Op::Splice,
            6 => Op::Read,
            7 => Op::Delay,
            8 => Op::Cancel,
            _ => return None,
        };
        Some((op, user_data & ((1 << 56) - 1)))
    }
}

/// The operations this model submits, by the probe's opcode numbers.
const NEEDED: [(u8, &str); 7] = [
    (opcode::AcceptMulti::CODE, "accept"),
    (opcode::RecvMulti::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::Splice::CODE, "splice"),
    (opcode::Read::CODE, "read"),
    (opcode::Timeout::CODE, "timeout"),
    (opcode::AsyncCancel2::CODE, "async_cancel"),
];

/// Sets up a ring and checks, with io_uring's probe, that this kernel has
/// every operation the model submits. [`run`] calls it before anything
/// is announced, so a refused server never announces itself.
fn probe() -> Result<IoUring, ServerError> {
    let refuse = |reason: String| ServerError::Unavailable { model: "uring-net", reason, instead: "uring" };
    let ring = IoUring::builder()
        .setup_cqsize(RING_ENTRIES * 2)
        .build(RING_ENTRIES)
        .map_err(|err| refuse(format!("io_uring_setup failed: {err}")))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(refuse("this kernel's io_uring cannot wait with a timeout (Linux 5.11 or later)".into()));
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|err| refuse(format!("io_uring probe failed: {err}")))?;
    let missing: Vec<&str> =
        NEEDED.iter().filter(|(code, _)| !probe.is_supported(*code)).map(|(_, name)| *name).collect();
    if !missing.is_empty() {
        return Err(refuse(format!("this kernel's io_uring lacks {}", missing.join(", "))));
    }
    Ok(ring)
}

/// Runs the `uring-net` model: `--workers` loops, each on its own ring.
pub fn run(server: Server) -> Result<(), ServerError> {
    probe()?; // refused before announcing, naming the model to use instead
    fan_out::run_per_worker(&server, completion_loop)
}

/// A socket as the connection state machine sees it in a completion model:
/// bytes the kernel has received (and the loop copied out of a provided
/// buffer), and bytes staged for the next send. Reading an empty inbox, or
/// writing a full outbox, says `WouldBlock`, as a non-blocking socket does.
#[derive(Debug)]
pub struct Staged {
    socket: OwnedFd,
    inbox: Vec<u8>,
    /// Bytes of `inbox` already read.
    taken: usize,
    /// The peer sent end-of-stream.
    eof: bool,
    /// The receive failed (the peer reset the connection).
    failed: Option<i32>,
    /// Bytes for the next send.
    outbox: Vec<u8>,
    /// Bytes of the send in flight: the kernel's until it completes.
    sending: Vec<u8>,
    /// How many of `sending` the kernel has sent.
    sent: usize,
    /// A pipe for file bodies, made when the first one is streamed:
    /// `sendfile` fills it, a splice empties it into the socket.
    pipe: OnceCell<Option<(OwnedFd, OwnedFd)>>,
    /// `sendfile` may have put bytes in the pipe since it was last emptied.
    pipe_used: Cell<bool>,
    /// The state machine asked for a staged close: shut down the write
    /// side once everything staged and piped has been sent.
    shutdown_wanted: bool,
    /// That shutdown is done.
    shut_down: bool,
}

impl Staged {
    fn new(socket: OwnedFd) -> Staged {
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

    fn unread(&self) -> usize {
        self.inbox.len() - self.taken
    }

    /// Room in the outbox; none while file bytes wait in the pipe (they
    /// were written first and must leave first).
    fn room(&self) -> usize {
        if self.pipe_used.get() {
            0
        } else {
            OUTBOX_BYTES.saturating_sub(self.outbox.len())
        }
    }

    fn stage(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
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

    /// The pipe, made the first time a file is streamed (and then
    /// `TCP_NODELAY` set: a body leaves by splice after its head, and Nagle
    /// would hold its last segment back). `None` if no pipe could be made.
    fn pipe(&self) -> Option<&(OwnedFd, OwnedFd)> {
        self.pipe
            .get_or_init(|| {
                use rustix::pipe::{pipe_with, PipeFlags};
                let (reader, writer) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
                let _ = rustix::pipe::fcntl_setpipe_size(&writer, PIPE_BYTES);
                let _ = rustix::net::sockopt::set_tcp_nodelay(&self.socket, true);
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
fn no_pipe() -> &'static std::fs::File {
    static NO_PIPE: OnceLock<std::fs::File> = OnceLock::new();
    NO_PIPE.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null opens"))
}

/// One connection: its state machine, its staged socket and what the
/// kernel is doing for it.
#[derive(Debug)]
struct Entry {
    conn: Conn,
    socket: Staged,
    /// A receive is armed.
    receiving: bool,
    /// A receive has been armed before (the next one is multishot).
    received_any: bool,
    sending: bool,
    splicing: bool,
    /// No more requests: send what is staged, then close.
    finishing: bool,
    /// Cancelled: waiting for its operations to complete, then freed.
    closing: bool,
}

impl Entry {
    fn busy(&self) -> bool {
        self.receiving || self.sending || self.splicing
    }
}

/// An uncached file read in flight: the buffer the kernel fills.
#[derive(Debug)]
struct PendingRead {
    conn: ConnId,
    read: FileRead,
    buffer: Vec<u8>,
    filled: usize,
    /// The simulated storage delay, kept alive while its timeout entry is.
    delay: Box<Timespec>,
}

/// Where a request's blocking work goes: file reads are queued for the
/// ring after `advance` returns; fib runs here.
struct ToSubmit<'a>(&'a mut Vec<(ConnId, FileRead)>);

impl Executor for ToSubmit<'_> {
    fn execute(&mut self, conn: ConnId, work: Work) -> Option<Response> {
        match work {
            Work::Read(read) if read.delay.is_zero() && !read.reads_into_memory() => Some(read.finish(Ok(Vec::new()))),
            Work::Read(read) => {
                self.0.push((conn, read));
                None
            }
            compute @ Work::Compute(_) => Some(compute.run_blocking()),
        }
    }
}

/// The ring of provided buffers receives draw from. The kernel takes a
/// buffer at the head when data arrives and names it in the completion;
/// the loop copies the bytes out and gives the buffer back at the tail.
struct BufferRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    memory: Vec<u8>,
    tail: u16,
}

impl BufferRing {
    fn register(ring: &IoUring) -> io::Result<BufferRing> {
        let layout = std::alloc::Layout::from_size_align(RECV_BUFFERS as usize * 16, 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid
        // (empty) ring of entries.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut buffers =
            BufferRing { entries, layout, memory: vec![0; RECV_BUFFERS as usize * RECV_BUFFER_BYTES], tail: 0 };
        // SAFETY: the ring memory is page-aligned, RECV_BUFFERS entries
        // long, and lives (with the buffers) until Drop, which runs after
        // the ring itself is gone (the loop drops the ring first).
        unsafe { ring.submitter().register_buf_ring_with_flags(entries as u64, RECV_BUFFERS, BUFFER_GROUP, 0) }?;
        for bid in 0..RECV_BUFFERS {
            buffers.give_back(bid);
        }
        buffers.publish();
        Ok(buffers)
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * RECV_BUFFER_BYTES;
        &self.memory[start..start + len.min(RECV_BUFFER_BYTES)]
    }

    /// Queues buffer `bid` for the kernel (seen once published).
    fn give_back(&mut self, bid: u16) {
        let slot = (self.tail & (RECV_BUFFERS - 1)) as usize;
        let addr = self.memory.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64;
        // SAFETY: `slot` is within the ring; the kernel only reads entries
        // between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(RECV_BUFFER_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry of our live,
        // aligned ring; the kernel reads it with acquire ordering.
        let tail = unsafe { AtomicU16::from_ptr(types::BufRingEntry::tail(self.entries) as *mut u16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout; the ring that
        // knew of it is gone.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

/// A self-pipe per signal this loop handles, read through the ring.
struct SignalPipes {
    readers: Vec<(i32, UnixStream, Box<[u8; 16]>)>,
    ids: Vec<signal_hook::SigId>,
}

impl SignalPipes {
    fn install(signals: &[i32]) -> io::Result<SignalPipes> {
        let mut pipes = SignalPipes { readers: Vec::new(), ids: Vec::new() };
        for &signal in signals {
            let (reader, writer) = UnixStream::pair()?;
            writer.set_nonblocking(true)?; // the handler must never block
            pipes.ids.push(signal_hook::low_level::pipe::register(signal, writer)?);
            pipes.readers.push((signal, reader, Box::new([0; 16])));
        }
        Ok(pipes)
    }
}

impl Drop for SignalPipes {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// One loop's ring and everything the kernel may be using.
struct Loop<'a> {
    ring: IoUring,
    service: &'a Service,
    limits: Limits,
    max_conns: usize,
    listener: &'a TcpListener,
    entries: Slab<Entry>,
    /// The id in each slot, by index: completions carry only the index.
    ids: Vec<Option<ConnId>>,
    reads: HashMap<u64, PendingRead>,
    next_read: u64,
    started: Vec<(ConnId, FileRead)>,
    touched: Vec<ConnId>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    stop_deadline: Option<Instant>,
    last_sweep: Instant,
    /// Operations submitted whose last completion has not come back.
    in_flight: usize,
    buffers: BufferRing,
    signals: SignalPipes,
}

// handout: stage 4: (optional part, chapter 9) the completion loop: set up the ring (probe()), the buffer
//   ring and the signal pipes, submit a multishot accept, then until stopped and nothing is in flight:
//   submit_and_wait(1), and for each completion dispatch on its Op (accept, receive, send, read,
//   signal); read docs/guide/09-readiness-and-completion.md
fn completion_loop(server: &Server, seat: Seat<'_>) -> Result<(), ServerError> {
    let set_up = || -> io::Result<(IoUring, BufferRing, SignalPipes)> {
        let ring = probe().map_err(|err| io::Error::other(err.to_string()))?;
        let buffers = BufferRing::register(&ring)?;
        let signals = SignalPipes::install(seat.signals())?;
        Ok((ring, buffers, signals))
    };
    let Some((ring, buffers, signals)) = seat.take_place(set_up())? else {
        return Ok(());
    };
    let mut lp = Loop {
        ring,
        service: &server.service,
        limits: server.limits,
        max_conns: seat.max_open_conns(),
        listener: seat.listener,
        entries: Slab::default(),
        ids: Vec::new(),
        reads: HashMap::new(),
        next_read: 0,
        started: Vec::new(),
        touched: Vec::new(),
        accepting: false,
        accept_paused_until: None,
        stop_deadline: None,
        last_sweep: Instant::now(),
        in_flight: 0,
        buffers,
        signals,
    };
    let outcome = lp.run();
    lp.cancel_everything();
    outcome
}

impl Loop<'_> {
    fn run(&mut self) -> Result<(), ServerError> {
        self.arm_accept();
        for index in 0..self.signals.readers.len() {
            self.arm_signal(index);
        }
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
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(err) if matches!(err.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(err) => return Err(ServerError::io("io_uring_enter")(err)),
            }

            // 2. Handle each completion.
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for (user_data, result, flags) in completions.drain(..) {
                self.on_completion(user_data, result, flags);
            }
            self.buffers.publish();

            // 3. Let every connection that heard something go as far as it can.
            while let Some(id) = self.touched.pop() {
                self.drive(id);
            }

            // 4. Housekeeping: time limits, an accept pause ending.
            self.close_expired();
            if !self.accepting
                && self.stop_deadline.is_none()
                && self.accept_paused_until.is_some_and(|t| Instant::now() >= t)
            {
                self.accept_paused_until = None;
                self.arm_accept();
            }
        }
        Ok(())
    }

    /// Queues an entry; a full submission queue is submitted first.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this file points only into
            // memory that outlives its completion: an Entry's buffers (freed
            // once it is not busy), a PendingRead (kept in `reads`), the
            // signal buffers and the provided buffers (kept until the loop
            // has cancelled and waited for everything).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                info!("io_uring_enter: {err}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listener.as_raw_fd());
        self.push(opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC).build().user_data(Op::Accept.tag(0)));
        self.in_flight += 1;
        self.accepting = true;
    }

    fn arm_signal(&mut self, index: usize) {
        let (_, reader, buffer) = &mut self.signals.readers[index];
        let entry = opcode::Read::new(types::Fd(reader.as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(Op::Signal.tag(index as u64));
        self.push(entry);
        self.in_flight += 1;
    }

    fn on_completion(&mut self, user_data: u64, result: i32, flags: u32) {
        let Some((op, low)) = Op::of(user_data) else { return };
        let more = cqueue::more(flags);
        if !more && op != Op::Cancel {
            self.in_flight -= 1;
        }
        match op {
            Op::Accept => self.on_accept(result, more),
            Op::Signal => self.on_signal(low as usize, result),
            Op::Recv => self.on_recv(low, result, flags, more),
            Op::Send => self.on_send(low, result),
            Op::Splice => self.on_splice(low, result),
            Op::Read => self.on_read(low, result),
            Op::Delay => self.on_delay(low),
            Op::Cancel => {}
        }
    }

    /// The connection a connection operation's completion is for. An
    /// entry outlives its operations, so the slot's current id is its id.
    fn id_at(&self, index: u64) -> Option<ConnId> {
        self.ids.get(index as usize).copied().flatten()
    }

    fn on_accept(&mut self, result: i32, more: bool) {
        if !more {
            self.accepting = false;
        }
        if result >= 0 {
            // SAFETY: a successful accept completion carries a new fd that
            // nothing else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(result as RawFd) };
            if self.stop_deadline.is_none() {
                self.admit(socket);
            }
        } else {
            let err = io::Error::from_raw_os_error(-result);
            match -result {
                libc::ECANCELED => {}
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    info!("accept: {err}; pausing accepts for {FD_EXHAUSTION_PAUSE:?}");
                    self.accept_paused_until = Some(Instant::now() + FD_EXHAUSTION_PAUSE);
                    if more {
                        self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
                    }
                }
                _ => info!("accept: {err}"),
            }
        }
        if !self.accepting && self.stop_deadline.is_none() && self.accept_paused_until.is_none() {
            self.arm_accept();
        }
    }

    /// Takes a new connection, or refuses it (503) when the loop is full:
    /// the refusal is staged and sent, then the connection closes.
    fn admit(&mut self, socket: OwnedFd) {
        let full = self.entries.len() >= self.max_conns;
        let mut entry = Entry {
            conn: Conn::new(self.service, self.limits),
            socket: Staged::new(socket),
            receiving: false,
            received_any: false,
            sending: false,
            splicing: false,
            finishing: full,
            closing: false,
        };
        if full {
            let mut output = Output::default();
            output.push_response(Framing::Line, Response::Refused(Refusal::Overloaded));
            let _ = output.write_to(&mut entry.socket, Then::SendNow);
        }
        let id = self.entries.insert(entry);
        let index = id.to_usize() as u32 as usize;
        if self.ids.len() <= index {
            self.ids.resize(index + 1, None);
        }
        self.ids[index] = Some(id);
        self.drive(id);
    }

    fn on_signal(&mut self, index: usize, result: i32) {
        if result == -libc::ECANCELED {
            return;
        }
        let signal = self.signals.readers[index].0;
        if result > 0 {
            match signals::action_for(signal) {
                Some(SignalAction::ClearCache) => signals::clear_cache(self.service),
                Some(SignalAction::Stop) => self.begin_stop(),
                None => {}
            }
        }
        self.arm_signal(index);
    }

    fn on_recv(&mut self, index: u64, result: i32, flags: u32, more: bool) {
        let bid = cqueue::buffer_select(flags);
        let Some(id) = self.id_at(index) else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        if !more {
            entry.receiving = false;
        }
        if result > 0 {
            if let Some(bid) = bid {
                entry.socket.inbox.extend_from_slice(self.buffers.bytes(bid, result as usize));
            }
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

    fn on_splice(&mut self, index: u64, result: i32) {
        let Some(id) = self.id_at(index) else { return };
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.splicing = false;
        if entry.closing {
            self.free_if_idle(id);
            return;
        }
        if result <= 0 {
            Self::broken(entry);
        }
        self.touched.push(id);
    }

    /// The peer is gone (a send or splice failed): nothing more can be sent.
    fn broken(entry: &mut Entry) {
        entry.finishing = true;
        entry.socket.outbox.clear();
        entry.socket.sending.clear();
        entry.socket.pipe_used.set(false);
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
                let mut executor = ToSubmit(&mut self.started);
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
        let wants_recv = !entry.receiving
            && !entry.finishing
            && entry.conn.wants_read()
            && !entry.socket.eof
            && entry.socket.failed.is_none()
            && entry.socket.unread() < INBOX_BYTES;
        let all_sent = !entry.sending && !entry.splicing && !wants_send && splice == 0;
        if all_sent && entry.socket.shutdown_wanted && !entry.socket.shut_down {
            // The staged close's first step, now that the response has left:
            // shutdown(2) only queues a FIN, it never waits.
            entry.socket.shut_down = true;
            if rustix::net::shutdown(&entry.socket.socket, rustix::net::Shutdown::Write).is_err() {
                entry.finishing = true;
            }
        }
        let done = entry.finishing && all_sent;
        if wants_send {
            self.submit_send(id);
        } else if splice > 0 {
            self.submit_splice(id, splice as usize);
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
        let rest = &socket.sending[socket.sent..];
        let send = opcode::Send::new(types::Fd(socket.socket.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(Op::Send.tag(slot(id)));
        entry.sending = true;
        self.push(send);
        self.in_flight += 1;
    }

    fn submit_splice(&mut self, id: ConnId, len: usize) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let Some((reader, _)) = entry.socket.pipe.get().and_then(Option::as_ref) else { return };
        let splice = opcode::Splice::new(
            types::Fd(reader.as_raw_fd()),
            -1,
            types::Fd(entry.socket.socket.as_raw_fd()),
            -1,
            len.min(u32::MAX as usize) as u32,
        )
        .build()
        .user_data(Op::Splice.tag(slot(id)));
        entry.splicing = true;
        self.push(splice);
        self.in_flight += 1;
    }

    /// Arms a receive. The first is single-shot: a connection that came
    /// with its request (`TCP_DEFER_ACCEPT`) and asks to close is then done
    /// receiving, and closes without a cancel. Later ones are multishot:
    /// armed once, they post a completion per arrival.
    fn arm_recv(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let fd = types::Fd(entry.socket.socket.as_raw_fd());
        let recv = if entry.received_any {
            opcode::RecvMulti::new(fd, BUFFER_GROUP).build()
        } else {
            opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_BYTES as u32)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        entry.received_any = true;
        let recv = recv.user_data(Op::Recv.tag(slot(id)));
        entry.receiving = true;
        self.push(recv);
        self.in_flight += 1;
    }

    fn cancel(&mut self, which: CancelBuilder) {
        self.push(opcode::AsyncCancel2::new(which).build().user_data(Op::Cancel.tag(0)));
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
            // Before the fd is closed: the cancel finds operations by it.
            let fd = types::Fd(entry.socket.socket.as_raw_fd());
            self.cancel(CancelBuilder::fd(fd).all());
        } else {
            self.free_if_idle(id);
        }
    }

    fn free_if_idle(&mut self, id: ConnId) {
        if self.entries.get(id).is_some_and(|entry| entry.closing && !entry.busy()) {
            self.entries.remove(id);
            self.ids[slot(id) as usize] = None;
        }
    }

    /// Submits the file reads that `advance` queued (after a timeout
    /// entry when storage is simulated slow).
    fn start_reads(&mut self) {
        for (conn, read) in std::mem::take(&mut self.started) {
            let key = self.next_read;
            self.next_read += 1;
            let delay = read.delay;
            let len = if read.reads_into_memory() { read.file.len as usize } else { 0 };
            let pending = PendingRead {
                conn,
                read,
                buffer: vec![0; len],
                filled: 0,
                delay: Box::new(Timespec::new().sec(delay.as_secs()).nsec(delay.subsec_nanos())),
            };
            self.reads.insert(key, pending);
            if delay.is_zero() {
                self.submit_read(key);
            } else {
                let timespec: *const Timespec = &*self.reads[&key].delay;
                self.push(opcode::Timeout::new(timespec).build().user_data(Op::Delay.tag(key)));
                self.in_flight += 1;
            }
        }
    }

    fn submit_read(&mut self, key: u64) {
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

    fn on_delay(&mut self, key: u64) {
        if self.reads.contains_key(&key) {
            self.submit_read(key);
        }
    }

    fn on_read(&mut self, key: u64, result: i32) {
        let outcome = if result >= 0 { Ok(result as usize) } else { Err(io::Error::from_raw_os_error(-result)) };
        self.finish_read(key, outcome);
    }

    /// A read completed: more to read, or the response for its connection.
    fn finish_read(&mut self, key: u64, outcome: io::Result<usize>) {
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

    /// Graceful stop: accept no more, let every connection finish what it
    /// has started, close the idle ones at once.
    fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.stop_deadline = Some(Instant::now() + signals::STOP_GRACE);
        signals::log_stopping(self.entries.len());
        if self.accepting {
            self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
        }
        let ids: Vec<ConnId> = self.entries.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(entry) = self.entries.get_mut(id) {
                entry.conn.close_when_done();
                self.touched.push(id);
            }
        }
    }

    fn should_exit(&self) -> bool {
        let Some(deadline) = self.stop_deadline else { return false };
        let open = self.entries.iter().filter(|(_, entry)| !entry.closing).count();
        if open == 0 {
            return true;
        }
        let out_of_time = Instant::now() >= deadline;
        if out_of_time {
            info!("stop grace period over: closing {open} connections unfinished");
        }
        out_of_time
    }

    fn wait_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let next_sweep = (!self.entries.is_empty()).then_some(self.last_sweep + SWEEP_INTERVAL);
        [self.accept_paused_until, self.stop_deadline, next_sweep]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .min()
    }

    /// Closes connections that outlived a time limit, once per
    /// [`SWEEP_INTERVAL`] (as the readiness loops do).
    fn close_expired(&mut self) {
        let now = Instant::now();
        if now < self.last_sweep + SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = now;
        let expired: Vec<ConnId> = self
            .entries
            .iter()
            .filter(|(_, entry)| !entry.closing && entry.conn.is_expired(now))
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            self.close(id);
        }
    }

    /// The last turn: cancel every operation and wait for each to complete,
    /// so that no buffer is freed while the kernel may still write into it.
    /// If the kernel does not answer in time, the memory is leaked instead.
    fn cancel_everything(&mut self) {
        self.cancel(CancelBuilder::any());
        let deadline = Instant::now() + EXIT_WAIT;
        while self.in_flight > 0 && Instant::now() < deadline {
            let ts = Timespec::new().nsec(50_000_000);
            let _ = self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            let completions: Vec<(u64, u32)> = self.ring.completion().map(|c| (c.user_data(), c.flags())).collect();
            for (user_data, flags) in completions {
                if let Some((op, _)) = Op::of(user_data) {
                    if op != Op::Cancel && !cqueue::more(flags) {
                        self.in_flight -= 1;
                    }
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    self.buffers.give_back(bid);
                }
            }
            if self.in_flight > 0 {
                self.cancel(CancelBuilder::any());
            }
        }
        if self.in_flight > 0 {
            info!("{} io_uring operations did not finish at exit; their buffers are leaked", self.in_flight);
            std::mem::forget(std::mem::take(&mut self.entries));
            std::mem::forget(std::mem::take(&mut self.reads));
        }
    }
}

/// The slot index of a connection id: what its operations' tags carry.
fn slot(id: ConnId) -> u64 {
    id.to_usize() as u32 as u64
}
