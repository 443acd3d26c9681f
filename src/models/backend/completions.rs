//! Finished work handed from worker threads back to the loop thread.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use mio::{Registry, Token, Waker};

use crate::conn::ConnId;
use crate::protocol::Response;

/// Finished work posted by other threads, and the waker that tells the loop.
#[derive(Debug, Clone)]
pub struct Completions {
    shared: Arc<CompletionQueue>,
}

#[derive(Debug)]
struct CompletionQueue {
    finished: Mutex<Vec<(ConnId, Response)>>,
    waker: Waker,
}

impl Completions {
    /// A queue whose posts wake the loop polling `registry` with `token`
    /// (mio allows one waker per `Poll`).
    pub fn new(registry: &Registry, token: Token) -> io::Result<Completions> {
        let shared = CompletionQueue { finished: Mutex::new(Vec::new()), waker: Waker::new(registry, token)? };
        Ok(Completions { shared: Arc::new(shared) })
    }

    /// Called by a worker thread: queue the response and wake the loop.
    pub fn post(&self, conn: ConnId, response: Response) {
        let mut finished = self.lock();
        finished.push((conn, response));
        // Only the first post into an empty queue wakes the loop: until the
        // loop takes the queue, that wake-up is still pending and covers
        // every later post (one eventfd write per batch, not per read).
        let first = finished.len() == 1;
        drop(finished);
        if first {
            // If the wake fails the loop is gone (shutting down): nothing to do.
            let _ = self.shared.waker.wake();
        }
    }

    /// Called by the loop: move everything posted so far into `done`.
    pub fn take_into(&self, done: &mut Vec<(ConnId, Response)>) {
        done.append(&mut self.lock());
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(ConnId, Response)>> {
        self.shared.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
