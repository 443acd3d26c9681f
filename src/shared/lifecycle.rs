//! The life of a loop, apart from its connections: when accepting pauses,
//! when a graceful stop must end, and when the connections are next
//! checked against their time limits. Every loop that serves many
//! connections from one thread (`select`, `poll`, the mio loops,
//! `uring-net`) keeps one [`Lifecycle`] beside its connection table, and
//! asks it how long it may wait.

use std::time::{Duration, Instant};

use crate::conn::SWEEP_INTERVAL;
use crate::log::info;
use crate::net::FD_EXHAUSTION_PAUSE;
use crate::service::Service;
use crate::signals::{self, SignalAction};

/// A loop's three clocks: the stop deadline, the accept pause, the sweep.
#[derive(Debug)]
pub struct Lifecycle {
    /// Set by a graceful stop: exit when every connection is done, or then.
    stop_deadline: Option<Instant>,
    /// While set, accepting is paused (out of fds, or a failing listener).
    accept_paused_until: Option<Instant>,
    /// When connections were last checked against their time limits.
    last_sweep: Instant,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { stop_deadline: None, accept_paused_until: None, last_sweep: Instant::now() }
    }
}

impl Lifecycle {
    /// Acts on a signal: clears the cache, or begins a graceful stop with
    /// `open` connections still open. Returns whether a stop has just
    /// begun: then the loop asks every connection to finish and close.
    pub fn on_signal(&mut self, action: SignalAction, service: &Service, open: usize) -> bool {
        match action {
            SignalAction::ClearCache => {
                signals::clear_cache(service);
                false
            }
            SignalAction::Stop => self.begin_stop(open),
        }
    }

    /// Begins a graceful stop with `open` connections still open; `false`
    /// if one had begun already.
    pub fn begin_stop(&mut self, open: usize) -> bool {
        if self.stop_deadline.is_some() {
            return false;
        }
        self.stop_deadline = Some(Instant::now() + signals::STOP_GRACE);
        self.accept_paused_until = None; // no accept resumes: its end must not end every wait
        signals::log_stopping(open);
        crate::trace::instant("stop signal", [Some(("in_flight", open as u64)), None]);
        true
    }

    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Whether the loop should exit: stopping, and all `open` connections
    /// served or out of time (then it says how many it drops unfinished).
    pub fn should_exit(&self, open: usize) -> bool {
        let Some(deadline) = self.stop_deadline else { return false };
        if open == 0 {
            return true;
        }
        let out_of_time = Instant::now() >= deadline;
        if out_of_time {
            info!("stop grace period over: closing {open} connections unfinished");
        }
        out_of_time
    }

    /// Stops accepting for [`FD_EXHAUSTION_PAUSE`] (the accept that found
    /// no fd, or a failing listener, has logged why).
    pub fn pause_accepting(&mut self) {
        self.accept_paused_until = Some(Instant::now() + FD_EXHAUSTION_PAUSE);
    }

    /// Whether the loop should accept new connections now.
    pub fn is_accepting(&self) -> bool {
        self.stop_deadline.is_none() && self.accept_paused_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Whether a pause of accepting has just ended. A loop on
    /// edge-triggered epoll must then accept by itself: no new event will
    /// announce the connections that queued meanwhile.
    pub fn pause_has_ended(&mut self) -> bool {
        let ended = self.accept_paused_until.is_some_and(|until| Instant::now() >= until);
        if ended {
            self.accept_paused_until = None;
        }
        ended
    }

    /// Whether it is time to check the connections against their time
    /// limits. Scanning every connection costs O(n), so it runs at most
    /// once per [`SWEEP_INTERVAL`]: at 10,000 connections that is a few
    /// microseconds a second, and a timer wheel would buy nothing worth
    /// its code.
    pub fn sweep_is_due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.last_sweep + SWEEP_INTERVAL {
            return false;
        }
        self.last_sweep = now;
        true
    }

    /// How long the loop may wait before something here needs attention
    /// (an accept pause ending, the stop deadline, the next sweep if any
    /// of the `open` connections may expire); `None` is "forever".
    pub fn wait_timeout(&self, open: usize) -> Option<Duration> {
        let now = Instant::now();
        let next_sweep = (open > 0).then_some(self.last_sweep + SWEEP_INTERVAL);
        let pause_end = self.accept_paused_until.filter(|until| *until > now);
        [pause_end, self.stop_deadline, next_sweep]
            .into_iter()
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .min()
    }
}
