//! Items held back until their time comes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// Items held back until their time comes: how the kernel-driven backends
/// simulate `--read-delay-ms` without putting any thread to sleep.
#[derive(Debug)]
pub struct DelayQueue<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, T>,
    next_seq: u64,
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        DelayQueue { heap: BinaryHeap::new(), items: HashMap::new(), next_seq: 0 }
    }
}

impl<T> DelayQueue<T> {
    /// Holds `item` for `delay`.
    pub fn push(&mut self, delay: Duration, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((Instant::now() + delay, seq)));
        self.items.insert(seq, item);
    }

    /// When the earliest item is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns every item that is due now.
    pub fn pop_due(&mut self) -> Vec<T> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(&Reverse((at, seq))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.extend(self.items.remove(&seq));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_queue_releases_items_in_deadline_order_once_due() {
        let mut queue = DelayQueue::default();
        queue.push(Duration::from_millis(30), "late");
        queue.push(Duration::ZERO, "now");
        assert_eq!(queue.pop_due(), vec!["now"]);
        assert!(queue.next_deadline().is_some_and(|at| at > Instant::now()));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(queue.pop_due(), vec!["late"]);
        assert!(queue.items.is_empty() && queue.next_deadline().is_none());
    }
}
