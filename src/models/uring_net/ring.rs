//! One loop's ring and everything the kernel may be using, and how a loop
//! is set up: the probe, the techniques, the buffer ring, the signal pipes
//! and the fib pipe, before the first entry is submitted.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;

use io_uring::IoUring;

use crate::backend::delay_queue::DelayQueue;
use crate::config::Technique;
use crate::conn::{ConnId, Limits};
use crate::error::ServerError;
use crate::fan_out::Seat;
use crate::lifecycle::Lifecycle;
use crate::log::info;
use crate::server::Server;
use crate::service::{FileRead, Service};
use crate::signals::SelfPipe;
use crate::slab::Slab;
use crate::trace::{self, Span};

use super::*;

/// One loop's ring and everything the kernel may be using.
pub(super) struct Loop<'a> {
    pub(super) ring: IoUring,
    pub(super) service: &'a Service,
    pub(super) limits: Limits,
    pub(super) max_conns: usize,
    pub(super) listener: &'a TcpListener,
    pub(super) entries: Slab<Entry>,
    /// The id in each slot, by index: completions carry only the index.
    pub(super) ids: Vec<Option<ConnId>>,
    pub(super) reads: HashMap<u64, PendingRead>,
    pub(super) next_read: u64,
    /// Zero-copy sends whose notification has not come, by number.
    pub(super) zero_copy: HashMap<u64, ZeroCopySend>,
    pub(super) next_zero_copy: u64,
    pub(super) started: Vec<(ConnId, FileRead)>,
    pub(super) touched: Vec<ConnId>,
    pub(super) accepting: bool,
    /// The armed accept is multishot.
    pub(super) accepting_many: bool,
    /// The stop deadline, the accept pause and the sweep, as every loop keeps them.
    pub(super) lifecycle: Lifecycle,
    /// Operations submitted whose last completion has not come back.
    pub(super) in_flight: usize,
    pub(super) buffers: BufferRing,
    /// A pipe per signal this loop handles, each with a read kept on the
    /// ring into its buffer (the `Vec` never grows, so no buffer moves
    /// while the kernel may write into it).
    pub(super) signals: SelfPipe,
    pub(super) signal_buffers: Vec<[u8; 16]>,
    /// Reads waiting out the simulated storage delay (`--read-delay-ms`).
    pub(super) delayed: DelayQueue<u64>,
    pub(super) computations: Computations,
    pub(super) techniques: Techniques,
}

impl Op {
    pub(super) fn tag(self, low: u64) -> u64 {
        (self as u64) << 56 | (low & ((1 << 56) - 1))
    }

    /// Whether the loop waits for this operation's completion before it
    /// frees what it uses. Cancels and closes use no memory of ours.
    pub(super) fn is_tracked(self) -> bool {
        !matches!(self, Op::Cancel | Op::Close)
    }

    pub(super) fn of(user_data: u64) -> Option<(Op, u64)> {
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

impl<'a> Loop<'a> {
    /// Sets up the loop of `seat`: the ring (probed), its techniques, the
    /// buffer ring, the signal pipes and the fib pipe. `None` if another
    /// loop could not start (it says why).
    pub(super) fn open(server: &'a Server, seat: Seat<'a>) -> Result<Option<Loop<'a>>, ServerError> {
        let set_up = || -> io::Result<(IoUring, BufferRing, SelfPipe, Computations, Techniques)> {
            let defer_taskrun = server.config.uses(Technique::DeferTaskrun);
            let (ring, offers) = probe(defer_taskrun).map_err(|err| io::Error::other(err.to_string()))?;
            let mut notes = Vec::new();
            let techniques =
                Techniques::choose(server, &ring, offers, seat.listener, seat.max_open_conns(), &mut notes);
            if seat.is_first() {
                let missing =
                    if notes.is_empty() { String::new() } else { format!("; this kernel has {}", notes.join(", ")) };
                info!("uring-net: {}{missing}", techniques.describe());
            }
            let buffers = BufferRing::register(&ring)?;
            let signals = SelfPipe::install(seat.signals())?;
            for index in 0..signals.len() {
                // Read through the ring, which waits for the byte: a
                // non-blocking read end could complete at once with EAGAIN.
                signals.pipe(index).1.set_nonblocking(false)?;
            }
            // Accepted sockets inherit it: a response leaves in one send, and a
            // file body by splice after its head, which Nagle would hold back.
            rustix::net::sockopt::set_tcp_nodelay(seat.listener, true)?;
            let computations = Computations::new(server.config.readers)?;
            Ok((ring, buffers, signals, computations, techniques))
        };
        let Some((ring, buffers, signals, computations, techniques)) = seat.take_place(set_up())? else {
            return Ok(None);
        };
        Ok(Some(Loop {
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
            lifecycle: Lifecycle::default(),
            in_flight: 0,
            buffers,
            signal_buffers: vec![[0; 16]; signals.len()],
            signals,
            delayed: DelayQueue::default(),
            computations,
            techniques,
        }))
    }
}

impl Loop<'_> {
    /// The peer is gone (a send or splice failed): nothing more can be sent.
    pub(super) fn broken(entry: &mut Entry) {
        entry.finishing = true;
        entry.socket.outbox.clear();
        entry.socket.sending.clear();
        entry.socket.pipe_used.set(false);
    }

    /// The connection a connection operation's completion is for. An
    /// entry outlives its operations, so the slot's current id is its id.
    pub(super) fn id_at(&self, index: u64) -> Option<ConnId> {
        self.ids.get(index as usize).copied().flatten()
    }

    pub(super) fn cancel(&mut self, which: CancelBuilder) {
        self.push(opcode::AsyncCancel2::new(which).build().user_data(Op::Cancel.tag(0)));
    }

    /// Takes every completion the ring holds into `completions` (a turn's
    /// step 2). With `--trace`: ends the turn's `wait` slice, saying how many
    /// it reaped, and opens the `handle` slice the caller keeps to the turn's end.
    pub(super) fn reap(&mut self, completions: &mut Vec<(u64, i32, u32)>, mut wait: Span) -> Span {
        completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
        wait.arg("reaped", || completions.len() as u64);
        drop(wait);
        trace::span("handle")
    }
}

/// The slot index of a connection id: what its operations' tags carry.
pub(super) fn slot(id: ConnId) -> u64 {
    id.to_usize() as u32 as u64
}
