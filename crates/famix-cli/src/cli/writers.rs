//! Output writer threads for `predict`: PNG encoding and file writes run beside the
//! model, behind a bounded queue (the model never waits on disk unless the writers
//! fall behind by more than the queue, so memory stays flat on any folder size).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use crossbeam_channel::{bounded, Sender};

/// A write to do.
pub type Job = Box<dyn FnOnce() -> famix::Result<()> + Send>;

/// A pool of writer threads with a bounded job queue; the first error stops the job.
pub struct Writers {
    tx: Option<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
}

impl Writers {
    /// `threads` writers, at most `2 × threads` jobs waiting.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<Job>(2 * threads);
        let error = Arc::new(Mutex::new(None));
        let handles = (0..threads)
            .map(|_| {
                let (rx, error) = (rx.clone(), error.clone());
                std::thread::spawn(move || {
                    for job in rx {
                        if let Err(e) = job() {
                            error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(format!("{e:#}"));
                        }
                    }
                })
            })
            .collect();
        Writers { tx: Some(tx), handles, error }
    }

    fn failed(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(e) => Err(anyhow!("writing outputs failed: {e}")),
            None => Ok(()),
        }
    }

    /// Queues a write (waits while the queue is full); fails once a write has failed.
    pub fn submit(&self, job: Job) -> Result<()> {
        self.failed()?;
        self.tx.as_ref().expect("writers are open until finish").send(job).map_err(|_| anyhow!("the writer threads stopped"))
    }

    /// Waits for every queued write; the first error, if any.
    pub fn finish(mut self) -> Result<()> {
        self.tx = None;
        for h in self.handles.drain(..) {
            h.join().map_err(|_| anyhow!("a writer thread panicked"))?;
        }
        self.failed()
    }
}
