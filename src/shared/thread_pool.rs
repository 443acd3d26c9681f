//! The one thread pool: a queue of jobs and the threads that take them,
//! in the shape of the Rust book's final chapter, in two sizes.
//!
//! * [`ThreadPool::fixed`]: N threads started at once, for the life of the
//!   pool (the `pool` model's workers); dropping it finishes the queued
//!   jobs and joins every thread.
//! * [`ThreadPool::elastic`]: threads started on demand, up to a bound, each
//!   leaving after a while without work, as nginx's thread pools and
//!   Tokio's blocking pool do (the stage-4 models' readers, `--readers`): a
//!   fixed pool of N readers would cap the reads in flight at N whatever
//!   the number of clients (`docs/performance.md`).
//!
//! A job that panics takes only itself: its thread goes on to the next.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads taking jobs from one queue, in the order they were queued.
#[derive(Debug)]
pub struct ThreadPool {
    shared: Arc<Shared>,
    /// The fixed pool's threads, joined on drop (elastic threads leave on their own).
    fixed: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    work_available: Condvar,
    name: String,
    max_threads: usize,
    /// How long an idle thread waits for work before it exits; `None`: for ever.
    keep_alive: Option<Duration>,
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

impl ThreadPool {
    /// Starts `size` threads (at least one) named `name-<i>`, which take
    /// jobs until the pool is dropped.
    pub fn fixed(name: &str, size: usize) -> std::io::Result<ThreadPool> {
        let size = size.max(1);
        // Built first, so that a failed start drops it: the threads already
        // started are told to stop and joined.
        let mut pool = ThreadPool { shared: Arc::new(Shared::new(name, size, None)), fixed: Vec::with_capacity(size) };
        for i in 1..=size {
            let worker = Arc::clone(&pool.shared);
            pool.fixed.push(std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&worker))?);
            pool.shared.lock().threads += 1;
        }
        Ok(pool)
    }

    /// A pool of at most `max_threads` threads named `name-<i>`, each
    /// exiting after `keep_alive` without work. No thread starts until needed.
    pub fn elastic(name: &str, max_threads: usize, keep_alive: Duration) -> ThreadPool {
        ThreadPool { shared: Arc::new(Shared::new(name, max_threads.max(1), Some(keep_alive))), fixed: Vec::new() }
    }

    /// Queues `job`; an elastic pool starts a thread if every thread is busy
    /// (and the bound allows). If a thread cannot be started, the job waits
    /// for a busy one.
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

impl Shared {
    fn new(name: &str, max_threads: usize, keep_alive: Option<Duration>) -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            work_available: Condvar::new(),
            name: name.to_string(),
            max_threads,
            keep_alive,
        }
    }
}

fn work(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        // The lock is held only while taking a job, not while running it.
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            // A job that panics (a bug) ends, and only it: the thread lives
            // on to take the next (the panic hook has printed the panic).
            // Without this a pool of N was N panics from answering nothing.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            state = shared.lock();
            continue;
        }
        if state.shutting_down {
            break;
        }
        state.idle += 1;
        let timed_out = match shared.keep_alive {
            Some(keep_alive) => {
                let (woken, timeout) =
                    shared.work_available.wait_timeout(state, keep_alive).unwrap_or_else(|p| p.into_inner());
                state = woken;
                timeout.timed_out()
            }
            None => {
                state = shared.work_available.wait(state).unwrap_or_else(|p| p.into_inner());
                false
            }
        };
        state.idle -= 1;
        if timed_out && state.jobs.is_empty() {
            break;
        }
    }
    state.threads -= 1;
}

impl Drop for ThreadPool {
    /// The threads finish the queued jobs, then exit; a fixed pool's are joined.
    fn drop(&mut self) {
        self.shared.lock().shutting_down = true;
        self.shared.work_available.notify_all();
        for worker in self.fixed.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn a_fixed_pool_runs_every_queued_job_before_drop_returns() {
        let ran = Arc::new(AtomicUsize::new(0));
        let pool = ThreadPool::fixed("test", 3).unwrap();
        assert_eq!(pool.threads(), 3);
        for _ in 0..100 {
            let ran = Arc::clone(&ran);
            pool.execute(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(pool.threads(), 3, "a fixed pool never grows");
        drop(pool);
        assert_eq!(ran.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn blocking_jobs_get_a_thread_each_up_to_the_bound_and_idle_threads_leave() {
        let pool = ThreadPool::elastic("test", 8, Duration::from_millis(100));
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

    /// A panicking job ends alone: the one thread of a fixed pool, and an
    /// elastic pool's threads, go on serving, and the counts stay right.
    #[test]
    fn a_job_that_panics_leaves_the_pool_serving() {
        for pool in [ThreadPool::fixed("test", 1).unwrap(), ThreadPool::elastic("test", 1, Duration::from_secs(10))] {
            let (done, finished) = mpsc::channel();
            for round in 0..3 {
                pool.execute(|| panic!("a bug in a job (this panic is expected)"));
                let done = done.clone();
                pool.execute(move || done.send(round).unwrap());
                assert_eq!(finished.recv_timeout(Duration::from_secs(5)), Ok(round), "the pool stopped serving");
            }
            assert_eq!(pool.threads(), 1, "the thread outlived the panics");
            drop(pool);
        }
    }

    #[test]
    fn past_the_bound_jobs_queue_and_all_run() {
        let pool = ThreadPool::elastic("test", 2, Duration::from_secs(10));
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
