//! Threads that burn CPU for `Spin` tasks.
//!
//! A pool rather than a thread per task, because short spins can arrive by the thousand per second.
//! The pool grows so that every submitted spin has a thread at once (spins are never queued behind
//! each other: a queued spin would not load the CPU, which is what it is for), and its size is
//! bounded by the most spins ever run at once, which the master bounds by the slots.

use super::{completion, Ending};
use protocol::{Completion, TaskOutcome, TaskRef};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

/// Spin loop iterations between looks at the clock and the cancel flag: tens of microseconds.
const SPINS_PER_CHECK: u32 = 256;

const STACK_BYTES: usize = 64 << 10;

pub(super) struct SpinJob {
    pub task: TaskRef,
    pub started: Instant,
    pub until: Instant,
    pub ending: Ending,
    pub cancel: Arc<AtomicBool>,
}

pub(super) struct SpinPool<E> {
    jobs: Sender<SpinJob>,
    queue: Arc<Mutex<Receiver<SpinJob>>>,
    events: Sender<E>,
    pub(super) threads: usize,
    /// Jobs submitted whose completion the executor has not handled yet.
    in_flight: usize,
}

impl<E: From<Completion> + Send + 'static> SpinPool<E> {
    pub(super) fn new(events: Sender<E>) -> Self {
        let (jobs, queue) = mpsc::channel();
        SpinPool {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            events,
            threads: 0,
            in_flight: 0,
        }
    }

    /// Runs `job` on a free thread, starting one if none is free. A thread that sent a completion
    /// is free again by the time the executor handles that completion (give or take the
    /// microseconds it takes to get back to the queue), so `in_flight <= threads` means a free one.
    pub(super) fn submit(&mut self, job: SpinJob) -> io::Result<()> {
        if self.in_flight >= self.threads {
            let queue = self.queue.clone();
            let events = self.events.clone();
            thread::Builder::new()
                .name("spin".into())
                .stack_size(STACK_BYTES)
                .spawn(move || serve(&queue, &events))?;
            self.threads += 1;
        }
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("spin threads are gone"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The executor handled the completion of one job.
    pub(super) fn job_done(&mut self) {
        debug_assert!(self.in_flight > 0);
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// One pool thread: runs jobs until the pool is dropped.
fn serve<E: From<Completion>>(queue: &Mutex<Receiver<SpinJob>>, events: &Sender<E>) {
    loop {
        // The lock is held while waiting, so idle threads queue on the mutex instead; one job still
        // wakes exactly one thread.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else {
            return;
        };
        let outcome = if burn(job.until, &job.cancel) {
            TaskOutcome::Cancelled
        } else {
            job.ending.outcome()
        };
        let run_ms = job.started.elapsed().as_millis() as u64;
        if events
            .send(E::from(completion(job.task, outcome, run_ms)))
            .is_err()
        {
            return;
        }
    }
}

/// Keeps one CPU busy until `until`. Returns true if cancelled first.
fn burn(until: Instant, cancel: &AtomicBool) -> bool {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        for _ in 0..SPINS_PER_CHECK {
            std::hint::spin_loop();
        }
    }
}
