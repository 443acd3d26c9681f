//! The probe and the switches: what this kernel's io_uring offers (the
//! probe), and which techniques a loop uses (the flags, less what the kernel
//! lacks), said in one start-up line. Without registered files or zero-copy
//! sends the model goes on without them; without an operation it needs, it
//! refuses and names `uring`. `--without TECHNIQUE` turns one off, so that
//! what each buys can be measured (`./benchmark.sh --techniques`):
//! multishot (one accept and one receive per connection that each post a
//! completion per arrival), provided buffers (`buffer_ring.rs`), registered
//! files (`registered_files.rs`), batching (the switch in [`Loop::push`]:
//! the whole turn's entries in one `io_uring_enter`, or each on its own),
//! and deferred task work (the kernel runs the work a completion needs when
//! the loop waits, not by interrupting it whenever a packet arrives).

use std::net::TcpListener;
use std::time::Duration;

use io_uring::{opcode, squeue, IoUring, Probe};

use crate::config::{Technique, ZeroCopy};
use crate::error::ServerError;
use crate::log::info;
use crate::server::Server;

use super::*;

/// The operations this model cannot do without, by the probe's opcode numbers.
pub(super) const NEEDED: [(u8, &str); 7] = [
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
pub(super) struct Offers {
    pub(super) zero_copy: bool,
    /// Cancelling by a registered file (Linux 6.0), which closing a
    /// connection on a direct descriptor needs.
    pub(super) cancel_by_registered_file: bool,
    pub(super) defer_taskrun: bool,
}

/// Sets up a ring (with deferred task work if `defer_taskrun` and the
/// kernel has it) and checks, with io_uring's probe, that this kernel has
/// every operation the model needs. [`run`] calls it before anything is
/// announced, so a refused server never announces itself.
pub(super) fn probe(defer_taskrun: bool) -> Result<(IoUring, Offers), ServerError> {
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
pub(super) struct Techniques {
    pub(super) multishot: bool,
    pub(super) provided_buffers: bool,
    /// Slots in the table of registered files; 0 when not used.
    pub(super) registered_files: u32,
    pub(super) batching: bool,
    pub(super) defer_taskrun: bool,
    /// Sends of [`ZERO_COPY_MIN_BYTES`] or more are zero-copy.
    pub(super) zero_copy: bool,
    /// Why they are not, for the log ("" when they are, or the kernel lacks them).
    pub(super) zero_copy_off: &'static str,
}

impl Techniques {
    /// Decides for the loop on `listener`, registering its file table; what
    /// was asked for but is missing is said in `notes`.
    pub(super) fn choose(
        server: &Server,
        ring: &IoUring,
        offers: Offers,
        listener: &TcpListener,
        max_conns: usize,
        notes: &mut Vec<String>,
    ) -> Techniques {
        let uses = |technique| server.config.uses(technique);
        let on_loopback = listener.local_addr().is_ok_and(|addr| addr.ip().is_loopback());
        let zero_copy = match server.config.zero_copy {
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
            zero_copy_off: match server.config.zero_copy {
                ZeroCopy::Never => " (--zero-copy never)",
                ZeroCopy::Remote if on_loopback => {
                    " (loopback listener, which copies anyway; --zero-copy always to try)"
                }
                _ => "",
            },
        }
    }

    /// The start-up log line's list.
    pub(super) fn describe(&self) -> String {
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

impl Loop<'_> {
    /// Queues an entry; a full submission queue is submitted first.
    /// Without batching, every entry is submitted at once, on its own.
    pub(super) fn push(&mut self, entry: squeue::Entry) {
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
}
