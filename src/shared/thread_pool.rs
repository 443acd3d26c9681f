//! A fixed pool of worker threads, in the shape of the Rust book's final
//! chapter: a channel of jobs, N workers taking from it, and a shutdown that
//! closes the channel and joins every worker.
//!
//! The `pool` model runs whole connections here. (`event-async`'s readers
//! are an [`ElasticPool`](crate::elastic_pool::ElasticPool) instead: they
//! grow with demand.)

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// N threads running jobs in the order they were queued.
#[derive(Debug)]
pub struct ThreadPool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// Starts `size` workers (at least one) named `name-<i>`.
    pub fn new(name: &str, size: usize) -> std::io::Result<ThreadPool> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..size.max(1))
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&receiver))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(ThreadPool { jobs: Some(sender), workers })
    }

    /// Queues `job` for the next free worker.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            // Sending fails only once every worker has exited, which happens
            // only in `drop`; the job is then dropped with the pool.
            let _ = jobs.send(Box::new(job));
        }
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while taking a job, not while running it.
        let job = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return, // the pool was dropped: no more jobs
        }
    }
}

impl Drop for ThreadPool {
    /// Finishes the queued jobs, then joins every worker.
    fn drop(&mut self) {
        drop(self.jobs.take());
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_queued_job_runs_before_drop_returns() {
        let ran = Arc::new(AtomicUsize::new(0));
        let pool = ThreadPool::new("test", 3).unwrap();
        assert_eq!(pool.workers.len(), 3);
        for _ in 0..100 {
            let ran = Arc::clone(&ran);
            pool.execute(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        drop(pool);
        assert_eq!(ran.load(Ordering::SeqCst), 100);
    }
}
