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
//! * one *multishot accept* posts a completion per new connection, each
//!   socket accepted straight into the ring's table of *registered files*
//!   (a direct descriptor: no fd, and no file lookup or reference count per
//!   operation);
//! * a *receive* per connection, multishot after the first (armed once, it
//!   posts a completion per arrival), the bytes already in a buffer the
//!   kernel took from a ring of provided buffers (so no buffer is pinned to
//!   an idle connection);
//! * a *send* per batch of responses, from a buffer the connection owns and
//!   does not touch until its completion comes back; with `--zero-copy`, a
//!   large one is a *zero-copy send*: the kernel pins the pages instead of
//!   copying them, and a second completion says when it lets them go;
//! * large files leave without passing through user space: `sendfile` into
//!   a pipe (page references, no copy), then a *splice* from the pipe to the
//!   socket;
//! * uncached files are *read*; when storage is simulated slow
//!   (`--read-delay-ms`), after the loop's own wait has run out the delay
//!   (one wake-up starts every read then due; a timeout entry per read cost
//!   a wake-up each, and 2 ms of median latency at 256 clients);
//! * signals arrive as reads of a self-pipe;
//! * the kernel does the work a completion needs (the receive a ready
//!   socket allows) when the loop waits for completions, not by
//!   interrupting it whenever a packet arrives (*deferred task work*).
//!
//! The connection state machine ([`Conn`]) is the same as every model's: it
//! reads from and writes to a [`Staged`] socket, memory the loop moves to
//! and from the kernel by completions. Who owns a buffer, and when, is the
//! lesson (`docs/guide/04b-readiness-and-completion.md` draws it): a buffer in
//! a submitted entry is the kernel's until its completion, so a connection
//! is freed only once its last operation has completed (or been
//! cancelled), never while the kernel may still write into it.
//!
//! **Where blocking work runs.** In the kernel: socket waits, file reads,
//! splices (in its io-wq workers). There is no opcode for computing, so
//! fib runs on reader threads, as in `event-async`; each result is queued
//! and announced by a byte on a pipe whose read is an entry on the ring. **Cost.** A ring per loop, a ring
//! of provided buffers ([`RECV_BUFFERS`] x [`RECV_BUFFER_BYTES`]), and per
//! connection an input and an output buffer (and a pipe once it streams a
//! file). Syscalls per cached keep-alive request: a share of one
//! `io_uring_enter`.
//!
//! What the kernel lacks is found at start with io_uring's probe and said
//! in one line: without registered files or zero-copy sends the model goes
//! on without them; without an operation it needs, it refuses and names
//! `uring`. `--without TECHNIQUE` turns one technique off, so that what each
//! buys can be measured (`./benchmark.sh --techniques`).
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::config::{Technique, ZeroCopy};
use crate::conn::{Conn, ConnId, Executor, Limits, Status, LINGER_TIMEOUT, SWEEP_INTERVAL};
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
use crate::thread_pool::ThreadPool;
use crate::trace;

use super::async_reads::delay_queue::DelayQueue;
use super::async_reads::READER_KEEP_ALIVE;

/// Submission queue size; the completion queue is twice that (and the
/// kernel keeps overflowing completions rather than dropping them).
pub const RING_ENTRIES: u32 = 1024;
/// Registered-file slots kept free while a multishot accept is armed: one
/// arm may take a burst of connections before the loop sees any, and a
/// connection accepted into a full table is closed by the kernel unanswered.
const ACCEPT_HEADROOM: usize = 64;
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
/// Sends this large or larger are zero-copy when `--zero-copy` asks: below
/// about 3 KB, pinning pages and the extra completion cost more than the copy
/// (the io_uring authors' measurements on a NIC).
pub const ZERO_COPY_MIN_BYTES: usize = 4096;
/// How long the last turn waits for operations cancelled at exit.
const EXIT_WAIT: Duration = Duration::from_secs(2);

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

impl Op {
    fn tag(self, low: u64) -> u64 {
        (self as u64) << 56 | (low & ((1 << 56) - 1))
    }

    /// Whether the loop waits for this operation's completion before it
    /// frees what it uses. Cancels and closes use no memory of ours.
    fn is_tracked(self) -> bool {
        !matches!(self, Op::Cancel | Op::Close)
    }

    fn of(user_data: u64) -> Option<(Op, u64)> {
        let op = match user_data >> 56 {
            1 => Op::Accept,
            2 => Op::Signal,
            3 => Op::Recv,
            4 => Op::Send,
            5 => Op::SendZc,
            6 => Op::Splice,
            7 => Op::Read,
            8 => Op::Shutdown,
            9 => Op::Computed,
            10 => Op::Cancel,
            11 => Op::Close,
            _ => return None,
        };
        Some((op, user_data & ((1 << 56) - 1)))
    }
}

/// The operations this model cannot do without, by the probe's opcode numbers.
const NEEDED: [(u8, &str); 7] = [
    (opcode::AcceptMulti::CODE, "accept"),
    (opcode::RecvMulti::CODE, "recv"),
    (opcode::Send::CODE, "send"),
    (opcode::Splice::CODE, "splice"),
    (opcode::Read::CODE, "read"),
    (opcode::Shutdown::CODE, "shutdown"),
    (opcode::AsyncCancel2::CODE, "async_cancel"),
];

/// What the kernel offers beyond what the model needs.
#[derive(Debug, Clone, Copy)]
struct Offers {
    zero_copy: bool,
    /// Cancelling by a registered file (Linux 6.0), which closing a
    /// connection on a direct descriptor needs.
    cancel_by_registered_file: bool,
    defer_taskrun: bool,
}

/// Sets up a ring (with deferred task work if `defer_taskrun` and the
/// kernel has it) and checks, with io_uring's probe, that this kernel has
/// every operation the model needs. [`run`] calls it before anything is
/// announced, so a refused server never announces itself.
fn probe(defer_taskrun: bool) -> Result<(IoUring, Offers), ServerError> {
    let refuse = |reason: String| ServerError::Unavailable { model: "uring-net", reason, instead: "uring" };
    let builder = || {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(RING_ENTRIES * 2);
        builder
    };
    // Only this loop's thread submits to the ring and reaps it (a single
    // issuer), so the kernel may hold completion work until that thread
    // waits for completions instead of interrupting it to run the work.
    let deferred =
        defer_taskrun.then(|| builder().setup_single_issuer().setup_defer_taskrun().build(RING_ENTRIES).ok()).flatten();
    let defer_taskrun = deferred.is_some();
    let ring = match deferred {
        Some(ring) => ring,
        None => builder().build(RING_ENTRIES).map_err(|err| refuse(format!("io_uring_setup failed: {err}")))?,
    };
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
    let zero_copy = probe.is_supported(opcode::SendZc::CODE);
    // The probe lists operations, not cancel flags; zero-copy sends came
    // in the same release (6.0), so they stand for it.
    let cancel_by_registered_file = zero_copy;
    Ok((ring, Offers { zero_copy, cancel_by_registered_file, defer_taskrun }))
}

/// The techniques one loop uses: the flags, less what the kernel lacks.
#[derive(Debug, Clone, Copy)]
struct Techniques {
    multishot: bool,
    provided_buffers: bool,
    /// Slots in the table of registered files; 0 when not used.
    registered_files: u32,
    batching: bool,
    defer_taskrun: bool,
    /// Sends of [`ZERO_COPY_MIN_BYTES`] or more are zero-copy.
    zero_copy: bool,
    /// Why they are not, for the log ("" when they are, or the kernel lacks them).
    zero_copy_off: &'static str,
}

impl Techniques {
    /// Decides for the loop on `listener`, registering its file table; what
    /// was asked for but is missing is said in `notes`.
    fn choose(
        server: &Server,
        ring: &IoUring,
        offers: Offers,
        listener: &TcpListener,
        max_conns: usize,
        notes: &mut Vec<String>,
    ) -> Techniques {
        let uses = |technique| !server.without.contains(&technique);
        let on_loopback = listener.local_addr().is_ok_and(|addr| addr.ip().is_loopback());
        let zero_copy = match server.zero_copy {
            ZeroCopy::Never => false,
            ZeroCopy::Remote => !on_loopback,
            ZeroCopy::Always => true,
        };
        if zero_copy && !offers.zero_copy {
            notes.push("no zero-copy sends (Linux 6.0 or later)".into());
        }
        if uses(Technique::DeferTaskrun) && !offers.defer_taskrun {
            notes.push("no deferred task work (Linux 6.1 or later)".into());
        }
        let mut registered_files = 0;
        if uses(Technique::RegisteredFiles) && !offers.cancel_by_registered_file {
            notes.push("no registered files (Linux 6.0 or later)".into());
        } else if uses(Technique::RegisteredFiles) {
            // Room for every connection and for as many refused ones (each
            // holds a slot until its 503 is sent), within the fd limit the
            // kernel holds the table to.
            let fd_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
            let slots = (2 * max_conns as u64 + 64).min(fd_limit).min(u32::MAX as u64) as u32;
            match ring.submitter().register_files_sparse(slots) {
                Ok(()) => registered_files = slots,
                Err(err) => notes.push(format!("no registered files ({err}; Linux 5.19 or later)")),
            }
        }
        Techniques {
            multishot: uses(Technique::Multishot),
            provided_buffers: uses(Technique::ProvidedBuffers),
            registered_files,
            batching: uses(Technique::Batching),
            defer_taskrun: offers.defer_taskrun,
            zero_copy: zero_copy && offers.zero_copy,
            zero_copy_off: match server.zero_copy {
                ZeroCopy::Never => " (--zero-copy never)",
                ZeroCopy::Remote if on_loopback => {
                    " (loopback listener, which copies anyway; --zero-copy always to try)"
                }
                _ => "",
            },
        }
    }

    /// The start-up log line's list.
    fn describe(&self) -> String {
        let on_off = |on: bool, what: &str| if on { what.to_string() } else { format!("no {what}") };
        [
            on_off(self.multishot, "multishot accept and receive"),
            if self.provided_buffers {
                format!("provided buffers ({RECV_BUFFERS} x {} KiB)", RECV_BUFFER_BYTES >> 10)
            } else {
                "a receive buffer per connection".into()
            },
            if self.registered_files > 0 {
                format!("registered files ({} slots)", self.registered_files)
            } else {
                "no registered files".into()
            },
            if self.batching { "one io_uring_enter per turn".into() } else { "an io_uring_enter per entry".into() },
            on_off(self.defer_taskrun, "deferred task work"),
            if self.zero_copy {
                format!("zero-copy sends from {} KiB", ZERO_COPY_MIN_BYTES >> 10)
            } else {
                format!("no zero-copy sends{}", self.zero_copy_off)
            },
        ]
        .join(", ")
    }
}

/// Runs the `uring-net` model: `--workers` loops, each on its own ring.
pub fn run(server: Server) -> Result<(), ServerError> {
    probe(false)?; // refused before announcing, naming the model to use instead
                   // Opened now, while fds are free: it is wanted when they are not.
    let dev_null = std::fs::File::open("/dev/null").map_err(ServerError::io("cannot open /dev/null"))?;
    let _ = NO_PIPE.set(dev_null);
    fan_out::run_per_worker(&server, completion_loop)
}

/// A connection's socket as the ring names it.
#[derive(Debug)]
enum Socket {
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
    fn target(&self) -> (types::Fd, squeue::Flags) {
        match self {
            Socket::Fd(fd) => (types::Fd(fd.as_raw_fd()), squeue::Flags::empty()),
            Socket::Direct(slot) => (types::Fd(*slot as RawFd), squeue::Flags::FIXED_FILE),
        }
    }

    /// A cancel of every operation on this socket.
    fn cancel_all(&self) -> CancelBuilder {
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
pub struct Staged {
    socket: Socket,
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
    fn new(socket: Socket) -> Staged {
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

    /// The pipe, made the first time a file is streamed. `None` if no pipe
    /// could be made.
    fn pipe(&self) -> Option<&(OwnedFd, OwnedFd)> {
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

/// `/dev/null`, opened by [`run`]: see [`no_pipe`].
static NO_PIPE: OnceLock<std::fs::File> = OnceLock::new();

/// A read-only fd: `sendfile` to it fails (`EBADF`), which closes a
/// connection that could get no pipe (the process is out of fds).
fn no_pipe() -> &'static std::fs::File {
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
    /// Where a receive puts its bytes when there are no provided buffers.
    recv_buffer: Vec<u8>,
    sending: bool,
    splicing: bool,
    shutting_down: bool,
    /// No more requests: send what is staged, then close.
    finishing: bool,
    /// Cancelled: waiting for its operations to complete, then freed.
    closing: bool,
    /// Refused (the loop was full) at this time: it is sent its 503, then
    /// shut down, and what the client still sends is discarded until its
    /// FIN or [`LINGER_TIMEOUT`], so that the close is no reset.
    refused_at: Option<Instant>,
}

impl Entry {
    fn busy(&self) -> bool {
        self.receiving || self.sending || self.splicing || self.shutting_down
    }
}

/// An uncached file read in flight: the buffer the kernel fills.
#[derive(Debug)]
struct PendingRead {
    conn: ConnId,
    read: FileRead,
    buffer: Vec<u8>,
    filled: usize,
}

/// A zero-copy send's buffer, kept by the loop from the send until the
/// kernel's notification that it no longer uses the pages.
#[derive(Debug)]
struct ZeroCopySend {
    conn: ConnId,
    buffer: Vec<u8>,
    /// Where the send began in `buffer`.
    offset: usize,
}

/// Where a request's blocking work goes: file reads are queued for the
/// ring after `advance` returns; fib goes to the reader threads.
struct ToSubmit<'a> {
    reads: &'a mut Vec<(ConnId, FileRead)>,
    compute: &'a Computations,
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
struct Computations {
    pool: ThreadPool,
    finished: Arc<Mutex<Vec<(ConnId, Response)>>>,
    wake: Arc<UnixStream>,
    /// The pipe's read end and the buffer its armed read fills.
    woken: (UnixStream, Box<[u8; 64]>),
}

impl Computations {
    fn new(readers: usize) -> io::Result<Computations> {
        let (woken, wake) = UnixStream::pair()?;
        wake.set_nonblocking(true)?; // a full pipe already holds a wake-up
        Ok(Computations {
            pool: ThreadPool::elastic("reader", readers, READER_KEEP_ALIVE),
            finished: Arc::default(),
            wake: Arc::new(wake),
            woken: (woken, Box::new([0; 64])),
        })
    }

    fn start(&self, conn: ConnId, work: Work) {
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

    fn take(&self) -> Vec<(ConnId, Response)> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
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
    /// Zero-copy sends whose notification has not come, by number.
    zero_copy: HashMap<u64, ZeroCopySend>,
    next_zero_copy: u64,
    started: Vec<(ConnId, FileRead)>,
    touched: Vec<ConnId>,
    accepting: bool,
    /// The armed accept is multishot.
    accepting_many: bool,
    accept_paused_until: Option<Instant>,
    stop_deadline: Option<Instant>,
    last_sweep: Instant,
    /// Operations submitted whose last completion has not come back.
    in_flight: usize,
    buffers: BufferRing,
    signals: SignalPipes,
    /// Reads waiting out the simulated storage delay (`--read-delay-ms`).
    delayed: DelayQueue<u64>,
    computations: Computations,
    techniques: Techniques,
}

fn completion_loop(server: &Server, seat: Seat<'_>) -> Result<(), ServerError> {
    let set_up = || -> io::Result<(IoUring, BufferRing, SignalPipes, Computations, Techniques)> {
        let defer_taskrun = !server.without.contains(&Technique::DeferTaskrun);
        let (ring, offers) = probe(defer_taskrun).map_err(|err| io::Error::other(err.to_string()))?;
        let mut notes = Vec::new();
        let techniques = Techniques::choose(server, &ring, offers, seat.listener, seat.max_open_conns(), &mut notes);
        if seat.is_first() {
            let missing =
                if notes.is_empty() { String::new() } else { format!("; this kernel has {}", notes.join(", ")) };
            info!("uring-net: {}{missing}", techniques.describe());
        }
        let buffers = BufferRing::register(&ring)?;
        let signals = SignalPipes::install(seat.signals())?;
        // Accepted sockets inherit it: a response leaves in one send, and a
        // file body by splice after its head, which Nagle would hold back.
        rustix::net::sockopt::set_tcp_nodelay(seat.listener, true)?;
        let computations = Computations::new(server.readers)?;
        Ok((ring, buffers, signals, computations, techniques))
    };
    let Some((ring, buffers, signals, computations, techniques)) = seat.take_place(set_up())? else {
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
        zero_copy: HashMap::new(),
        next_zero_copy: 0,
        started: Vec::new(),
        touched: Vec::new(),
        accepting: false,
        accepting_many: false,
        accept_paused_until: None,
        stop_deadline: None,
        last_sweep: Instant::now(),
        in_flight: 0,
        buffers,
        signals,
        delayed: DelayQueue::default(),
        computations,
        techniques,
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
        for index in 0..self.signals.readers.len() {
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
            let (_turn, mut wait) = (trace::span("turn"), trace::span("submit and wait")); // --trace
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(submitted) => wait.arg("submitted", || submitted as u64),
                Err(err) if matches!(err.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(err) => return Err(ServerError::io("io_uring_enter")(err)),
            }

            // 2. Handle each completion.
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            wait.arg("reaped", || completions.len() as u64);
            drop(wait);
            let _handle = trace::span("handle");
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
    /// Without batching, every entry is submitted at once, on its own.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry built in this file points only into
            // memory that outlives its completion: an Entry's buffers (freed
            // once it is not busy), a PendingRead (kept in `reads`), the
            // signal buffers and the provided buffers (kept until the loop
            // has cancelled and waited for everything).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                break;
            }
            if let Err(err) = self.ring.submit() {
                info!("io_uring_enter: {err}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !self.techniques.batching {
            if let Err(err) = self.ring.submit() {
                info!("io_uring_enter: {err}"); // the entry stays queued for the turn's submit
            }
        }
    }

    /// Arms the accept: multishot (one entry, a completion per
    /// connection) or single-shot, into a registered-file slot the kernel
    /// picks or as an fd.
    /// With registered files, the table must have room: multishot only with
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

    fn arm_signal(&mut self, index: usize) {
        let (_, reader, buffer) = &mut self.signals.readers[index];
        let entry = opcode::Read::new(types::Fd(reader.as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(Op::Signal.tag(index as u64));
        self.push(entry);
        self.in_flight += 1;
    }

    fn arm_computed(&mut self) {
        let (reader, buffer) = &mut self.computations.woken;
        let entry = opcode::Read::new(types::Fd(reader.as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(Op::Computed.tag(0));
        self.push(entry);
        self.in_flight += 1;
    }

    /// Reader threads finished some work: hand each response to its
    /// connection (if it is still open), and listen for the next.
    fn on_computed(&mut self, result: i32) {
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

    /// Registered-file slots not held by a connection (unbounded without
    /// registered files).
    fn free_slots(&self) -> usize {
        match self.techniques.registered_files as usize {
            0 => usize::MAX,
            slots => slots.saturating_sub(self.entries.len()),
        }
    }

    /// Whether a new accept should be armed now.
    fn may_arm_accept(&self) -> bool {
        !self.accepting && self.stop_deadline.is_none() && self.accept_paused_until.is_none() && self.free_slots() > 0
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
            let socket = if self.techniques.registered_files > 0 {
                Socket::Direct(result as u32)
            } else {
                // SAFETY: a successful accept completion carries a new fd
                // that nothing else owns.
                Socket::Fd(unsafe { OwnedFd::from_raw_fd(result as RawFd) })
            };
            if self.stop_deadline.is_none() {
                self.admit(socket);
            } else {
                self.release(socket);
            }
            if more && self.accepting_many && self.free_slots() <= ACCEPT_HEADROOM {
                // Near a full table: accept one at a time from here on.
                self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
            }
        } else {
            let err = io::Error::from_raw_os_error(-result);
            match -result {
                libc::ECANCELED => {}
                // One connection failed (the client gave up first): accept the next.
                libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::EAGAIN => {
                    info!("accept: {err}")
                }
                // Out of fds, registered-file slots or memory, or worse:
                // re-arming at once would spin on the same error.
                _ => {
                    info!("accept: {err}; pausing accepts for {FD_EXHAUSTION_PAUSE:?}");
                    self.accept_paused_until = Some(Instant::now() + FD_EXHAUSTION_PAUSE);
                    if more {
                        self.cancel(CancelBuilder::user_data(Op::Accept.tag(0)));
                    }
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
        let mut entry = Entry {
            conn: Conn::new(self.service, self.limits),
            socket: Staged::new(socket),
            receiving: false,
            received_any: false,
            recv_buffer: if self.techniques.provided_buffers { Vec::new() } else { vec![0; RECV_BUFFER_BYTES] },
            sending: false,
            splicing: false,
            shutting_down: false,
            finishing: full,
            closing: false,
            refused_at: full.then(Instant::now),
        };
        if full {
            let mut output = Output::default();
            output.push_response(Framing::Line, Response::Refused(Refusal::Overloaded));
            let _ = output.write_to(&mut entry.socket, Then::SendNow);
            entry.socket.shutdown_wanted = true;
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

    /// A zero-copy send's completions: first its result (with `more` when
    /// a notification follows), then the notification that the kernel has
    /// let go of the buffer's pages. The buffer is the loop's, not the
    /// connection's, so that a connection can close in between: a client
    /// that stops reading keeps its pages pinned for as long as it likes.
    fn on_send_zero_copy(&mut self, key: u64, result: i32, flags: u32) {
        if cqueue::notif(flags) {
            self.zero_copy.remove(&key);
            return;
        }
        let Some(send) = self.zero_copy.get(&key) else { return };
        let id = send.conn;
        // What the kernel did not take goes back to the connection (a
        // short send), as a copy: these pages are still pinned.
        let unsent = send.buffer.get(send.offset + result.max(0) as usize..).unwrap_or_default().to_vec();
        if !cqueue::more(flags) {
            self.zero_copy.remove(&key);
        }
        if let Some(entry) = self.entries.get_mut(id) {
            entry.socket.sending = unsent;
            entry.socket.sent = 0;
            let sent = if result < 0 { result } else { 0 };
            self.sent(id, sent);
        }
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
            let key = self.next_zero_copy;
            self.next_zero_copy += 1;
            let send = ZeroCopySend { conn: id, buffer: std::mem::take(&mut socket.sending), offset: socket.sent };
            let rest = &send.buffer[send.offset..];
            let entry = opcode::SendZc::new(fd, rest.as_ptr(), rest.len() as u32).flags(libc::MSG_NOSIGNAL).build();
            self.zero_copy.insert(key, send);
            entry.user_data(Op::SendZc.tag(key))
        } else {
            let rest = &socket.sending[socket.sent..];
            let entry = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).flags(libc::MSG_NOSIGNAL).build();
            entry.user_data(Op::Send.tag(slot(id)))
        };
        entry.sending = true;
        self.push(send.flags(fixed));
        self.in_flight += 1;
    }

    fn submit_splice(&mut self, id: ConnId, len: usize) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let Some((reader, _)) = entry.socket.pipe.get().and_then(Option::as_ref) else { return };
        let (socket, fixed) = entry.socket.socket.target();
        let splice =
            opcode::Splice::new(types::Fd(reader.as_raw_fd()), -1, socket, -1, len.min(u32::MAX as usize) as u32)
                .build()
                .flags(fixed)
                .user_data(Op::Splice.tag(slot(id)));
        entry.splicing = true;
        self.push(splice);
        self.in_flight += 1;
    }

    /// Arms a receive. The first is single-shot: a connection that came
    /// with its request (`TCP_DEFER_ACCEPT`) and asks to close is then done
    /// receiving, and closes without a cancel. Later ones are multishot:
    /// armed once, they post a completion per arrival. Without provided
    /// buffers, every receive is single-shot, into the connection's buffer.
    fn arm_recv(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        let (fd, fixed) = entry.socket.socket.target();
        let recv = if !self.techniques.provided_buffers {
            let buffer = &mut entry.recv_buffer;
            opcode::Recv::new(fd, buffer.as_mut_ptr(), buffer.len() as u32).build()
        } else if entry.received_any && self.techniques.multishot {
            opcode::RecvMulti::new(fd, BUFFER_GROUP).build()
        } else {
            opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_BYTES as u32)
                .buf_group(BUFFER_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        entry.received_any = true;
        let recv = recv.flags(fixed).user_data(Op::Recv.tag(slot(id)));
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

    /// Closes a socket: an fd by dropping it, a registered file by a Close
    /// entry (the slot is free once it completes).
    fn release(&mut self, socket: Socket) {
        if let Socket::Direct(slot) = socket {
            self.push(opcode::Close::new(types::Fixed(slot)).build().user_data(Op::Close.tag(0)));
        }
    }

    /// Queues the staged close's first step: shutdown(2) of the write side
    /// only queues a FIN after what was sent, it never waits.
    fn submit_shutdown(&mut self, id: ConnId) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        entry.socket.shut_down = true;
        entry.shutting_down = true;
        let (fd, fixed) = entry.socket.socket.target();
        let shutdown = opcode::Shutdown::new(fd, libc::SHUT_WR).build().flags(fixed);
        self.push(shutdown.user_data(Op::Shutdown.tag(slot(id))));
        self.in_flight += 1;
    }

    fn on_shutdown(&mut self, index: u64, result: i32) {
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

    /// Submits the file reads that `advance` queued (after the simulated
    /// storage delay, if any).
    fn start_reads(&mut self) {
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
        self.accept_paused_until = None; // no accept resumes: its deadline must not end every wait
        signals::log_stopping(self.entries.len());
        trace::instant("stop signal", [Some(("in_flight", self.entries.len() as u64)), None]);
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
        [self.accept_paused_until, self.stop_deadline, next_sweep, self.delayed.next_deadline()]
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
            .filter(|(_, entry)| {
                let refusal_over = entry.refused_at.is_some_and(|at| now >= at + LINGER_TIMEOUT);
                !entry.closing && (refusal_over || entry.conn.is_expired(now))
            })
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            self.close(id);
        }
    }

    /// The last turn: cancel every operation and wait for each to complete,
    /// so that no buffer is freed while the kernel may still write into it.
    /// Says whether they all did; if not, the caller leaks the loop's memory
    /// rather than free it under the kernel.
    fn cancel_everything(&mut self) -> bool {
        self.cancel(CancelBuilder::any());
        let deadline = Instant::now() + EXIT_WAIT;
        while self.in_flight > 0 && Instant::now() < deadline {
            let ts = Timespec::new().nsec(50_000_000);
            let _ = self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            let completions: Vec<(u64, u32)> = self.ring.completion().map(|c| (c.user_data(), c.flags())).collect();
            for (user_data, flags) in completions {
                if let Some((op, _)) = Op::of(user_data) {
                    if op.is_tracked() && !cqueue::more(flags) {
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
        }
        self.in_flight == 0
    }
}

/// The slot index of a connection id: what its operations' tags carry.
fn slot(id: ConnId) -> u64 {
    id.to_usize() as u32 as u64
}
