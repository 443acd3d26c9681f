//! A pool of threads that grows with demand up to a bound and shrinks when
//! idle, as nginx's thread pools and Tokio's blocking pool do: the reader
//! pool of `event-async`.
//!
//! A fixed pool of N readers caps `event-async` at N reads in flight: with
//! 10 ms storage and 16 readers, 1,600 reads a second, whatever the number
//! of clients. Here a job that finds no idle thread starts one (up to
//! `max_threads`), and a thread idle for `keep_alive` exits, so the pool
//! holds about as many threads as there are reads in flight.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads started on demand, at most `max_threads`.
#[derive(Debug)]
pub struct ElasticPool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    work_available: Condvar,
    name: String,
    max_threads: usize,
    keep_alive: Duration,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    threads: usize,
    idle: usize,
    shutting_down: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("jobs", &self.jobs.len()).field("threads", &self.threads).finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ElasticPool {
    /// A pool of at most `max_threads` threads named `name`, each exiting
    /// after `keep_alive` without work. No thread starts until needed.
    pub fn new(name: &str, max_threads: usize, keep_alive: Duration) -> ElasticPool {
        let shared = Shared {
            state: Mutex::new(State::default()),
            work_available: Condvar::new(),
            name: name.to_string(),
            max_threads: max_threads.max(1),
            keep_alive,
        };
        ElasticPool { shared: Arc::new(shared) }
    }

    /// Queues `job`; starts a thread if every thread is busy (and the bound
    /// allows). If a thread cannot be started, the job waits for a busy one.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.shared.lock();
        state.jobs.push_back(Box::new(job));
        // More queued jobs than idle threads to take them: one more thread.
        if state.jobs.len() > state.idle && state.threads < self.shared.max_threads {
            state.threads += 1;
            let shared = Arc::clone(&self.shared);
            let started = std::thread::Builder::new()
                .name(format!("{}-{}", self.shared.name, state.threads))
                .spawn(move || work(&shared));
            if started.is_err() {
                state.threads -= 1;
            }
        }
        drop(state);
        self.shared.work_available.notify_one();
    }

    /// Threads running now (busy or idle).
    #[cfg(test)]
    fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            job();
            state = shared.lock();
            continue;
        }
        if state.shutting_down {
            break;
        }
        state.idle += 1;
        let (woken, timeout) =
            shared.work_available.wait_timeout(state, shared.keep_alive).unwrap_or_else(|p| p.into_inner());
        state = woken;
        state.idle -= 1;
        if timeout.timed_out() && state.jobs.is_empty() {
            break;
        }
    }
    state.threads -= 1;
}

impl Drop for ElasticPool {
    /// The threads finish the queued jobs, then exit.
    fn drop(&mut self) {
        self.shared.lock().shutting_down = true;
        self.shared.work_available.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn blocking_jobs_get_a_thread_each_up_to_the_bound_and_idle_threads_leave() {
        let pool = ElasticPool::new("test", 8, Duration::from_millis(100));
        let (done, finished) = mpsc::channel();
        let started = Instant::now();
        for _ in 0..8 {
            let done = done.clone();
            pool.execute(move || {
                std::thread::sleep(Duration::from_millis(200));
                done.send(()).unwrap();
            });
        }
        for _ in 0..8 {
            finished.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        // Eight sleeps of 200 ms ran side by side, not one after another.
        assert!(started.elapsed() < Duration::from_millis(1200), "{:?}", started.elapsed());
        assert!(pool.threads() <= 8);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pool.threads(), 0, "idle threads exit after keep_alive");
    }

    #[test]
    fn past_the_bound_jobs_queue_and_all_run() {
        let pool = ElasticPool::new("test", 2, Duration::from_secs(10));
        let ran = Arc::new(AtomicUsize::new(0));
        let (done, finished) = mpsc::channel();
        for _ in 0..50 {
            let (ran, done) = (Arc::clone(&ran), done.clone());
            pool.execute(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                done.send(()).unwrap();
            });
        }
        for _ in 0..50 {
            finished.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        assert!(pool.threads() <= 2);
    }
}
