//! A wake-up for the loop at an exact instant.
//!
//! The loop's own timer is the timeout of `epoll_wait`, which counts whole
//! milliseconds (mio rounds up), so a simulated 10 ms read would end up to
//! 1 ms late (`docs/performance.md` measures what that cost). On Linux a
//! `timerfd` in the loop's `Poll` fires to the microsecond; elsewhere the
//! alarm does nothing and the loop's timeout (which the backend still
//! reports through `next_deadline`) is the timer.

use std::io;
use std::time::Instant;

use mio::{Registry, Token};

/// A timer source in the loop's `Poll`, set to the earliest deadline.
#[derive(Debug)]
pub struct Alarm {
    #[cfg(target_os = "linux")]
    timer: std::os::fd::OwnedFd,
    /// The instant the timer is set for, if any.
    set_for: Option<Instant>,
}

impl Alarm {
    /// An unset alarm whose firing makes `token` ready in `registry`.
    #[cfg(target_os = "linux")]
    pub fn new(registry: &Registry, token: Token) -> io::Result<Alarm> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        use std::os::fd::AsRawFd;
        // CLOCK_MONOTONIC: the clock `Instant` reads on Linux.
        let timer = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        registry.register(&mut mio::unix::SourceFd(&timer.as_raw_fd()), token, mio::Interest::READABLE)?;
        Ok(Alarm { timer, set_for: None })
    }

    /// Elsewhere: an alarm that never fires (see the module doc).
    #[cfg(not(target_os = "linux"))]
    pub fn new(_registry: &Registry, _token: Token) -> io::Result<Alarm> {
        Ok(Alarm { set_for: None })
    }

    /// Sets the alarm for `at` (or unsets it for `None`) unless it is set
    /// for that instant already: one `timerfd_settime` per new earliest
    /// deadline, not one per delayed read.
    pub fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if at == self.set_for {
            return Ok(());
        }
        self.set_for = at;
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
            let timespec =
                |d: std::time::Duration| Timespec { tv_sec: d.as_secs() as _, tv_nsec: d.subsec_nanos() as _ };
            let zero = timespec(std::time::Duration::ZERO);
            // Relative to now, read before the kernel reads its clock, so
            // the timer can only fire at `at` or after it. A zero value
            // means "unset", hence at least 1 ns for a deadline now past.
            let value = match at {
                None => zero,
                Some(at) => {
                    timespec(at.saturating_duration_since(Instant::now()).max(std::time::Duration::from_nanos(1)))
                }
            };
            // Setting the timer also resets its expiry count, so the
            // edge-triggered `Poll` sees the next expiry as a new event
            // without the count ever being read.
            timerfd_settime(
                &self.timer,
                TimerfdTimerFlags::empty(),
                &Itimerspec { it_interval: zero, it_value: value },
            )?;
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    const ALARM: Token = Token(7);

    fn fired(poll: &mut Poll, within: Duration) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(within)).unwrap();
        events.iter().any(|event| event.token() == ALARM)
    }

    #[test]
    fn the_alarm_wakes_the_poll_each_time_it_is_set_and_not_once_unset() {
        let mut poll = Poll::new().unwrap();
        let mut alarm = Alarm::new(poll.registry(), ALARM).unwrap();
        alarm.set(Some(Instant::now() + Duration::from_millis(2))).unwrap();
        assert!(fired(&mut poll, Duration::from_secs(5)), "first expiry");
        // Set again without reading the timer: a new expiry is a new event.
        alarm.set(Some(Instant::now() + Duration::from_millis(2))).unwrap();
        assert!(fired(&mut poll, Duration::from_secs(5)), "second expiry");
        // A deadline already past fires at once rather than never.
        alarm.set(Some(Instant::now() - Duration::from_millis(1))).unwrap();
        assert!(fired(&mut poll, Duration::from_secs(5)), "past deadline");
        alarm.set(Some(Instant::now() + Duration::from_millis(20))).unwrap();
        alarm.set(None).unwrap();
        assert!(!fired(&mut poll, Duration::from_millis(100)), "unset");
    }
}
