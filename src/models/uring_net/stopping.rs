//! Signals (reads of a self-pipe, kept on the ring), the graceful stop,
//! the time limits, and the last turn, which cancels every operation and
//! waits for each, so that no buffer is freed under the kernel.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, types};

use crate::conn::{ConnId, LINGER_TIMEOUT};
use crate::log::info;
use crate::signals;
use crate::signals::SignalAction;

use super::*;

/// How long the last turn waits for operations cancelled at exit.
pub(super) const EXIT_WAIT: Duration = Duration::from_secs(2);

impl Loop<'_> {
    pub(super) fn arm_signal(&mut self, index: usize) {
        let (_, reader) = self.signals.pipe(index);
        let buffer = &mut self.signal_buffers[index];
        let entry = opcode::Read::new(types::Fd(reader.as_raw_fd()), buffer.as_mut_ptr(), buffer.len() as u32)
            .build()
            .user_data(Op::Signal.tag(index as u64));
        self.push(entry);
        self.in_flight += 1;
    }

    pub(super) fn on_signal(&mut self, index: usize, result: i32) {
        if result == -libc::ECANCELED {
            return;
        }
        let signal = self.signals.pipe(index).0;
        if result > 0 {
            match signals::action_for(signal) {
                Some(SignalAction::ClearCache) => signals::clear_cache(self.service),
                Some(SignalAction::Stop) => self.begin_stop(),
                None => {}
            }
        }
        self.arm_signal(index);
    }

    /// Graceful stop: accept no more, let every connection finish what it
    /// has started, close the idle ones at once.
    pub(super) fn begin_stop(&mut self) {
        if !self.lifecycle.begin_stop(self.entries.len()) {
            return;
        }
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

    pub(super) fn should_exit(&self) -> bool {
        // Connections already closing are the kernel's to finish, not ours.
        self.lifecycle.is_stopping()
            && self.lifecycle.should_exit(self.entries.iter().filter(|(_, entry)| !entry.closing).count())
    }

    pub(super) fn wait_timeout(&self) -> Option<Duration> {
        let delay_due = self.delayed.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
        [self.lifecycle.wait_timeout(self.entries.len()), delay_due].into_iter().flatten().min()
    }

    /// Closes connections that outlived a time limit, when the lifecycle
    /// says a sweep is due (as the readiness loops do).
    pub(super) fn close_expired(&mut self) {
        if !self.lifecycle.sweep_is_due() {
            return;
        }
        let now = Instant::now();
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
    pub(super) fn cancel_everything(&mut self) -> bool {
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
