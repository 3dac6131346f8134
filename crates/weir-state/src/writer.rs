//! The state's writer: one thread that makes the database writes the caller need not wait for
//! — a prepare's synced write, a committed transaction's apply — in the order they were handed
//! over. Each write's outcome comes back on its own [`Written`] receipt. A write that fails
//! fails every write after it (a prepare written over a lost apply would roll forward without
//! that apply's changes), until the manager is dropped.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use crate::manager::rocks_message;

/// One write, run on the writer's thread.
pub(crate) type Job = Box<dyn FnOnce() -> Result<(), rocksdb::Error> + Send>;

/// A write's outcome: `Err` with what failed.
type Outcome = Result<(), String>;

/// The outcome of a write whose thread is gone.
const GONE: &str = "the state's writer thread is gone";

/// See the module documentation.
pub(crate) struct Writer {
    jobs: Option<Sender<(Job, SyncSender<Outcome>)>>,
    thread: Option<JoinHandle<()>>,
}

/// The outcome of one write handed to the [`Writer`]: `Err` carries what failed.
#[derive(Debug)]
pub(crate) struct Written(Receiver<Outcome>);

impl Written {
    /// Waits for the write.
    pub(crate) fn wait(self) -> Outcome {
        self.0.recv().unwrap_or_else(|_| Err(GONE.into()))
    }

    /// The write's outcome if it is done, or the receipt back.
    pub(crate) fn try_take(self) -> Result<Outcome, Self> {
        match self.0.try_recv() {
            Ok(outcome) => Ok(outcome),
            Err(TryRecvError::Empty) => Err(self),
            Err(TryRecvError::Disconnected) => Ok(Err(GONE.into())),
        }
    }
}

impl Writer {
    /// Starts the thread; `path` (the database's) names the writes' errors.
    pub(crate) fn start(path: &Path) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<(Job, SyncSender<Outcome>)>();
        let path: PathBuf = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("weir-state-write".into())
            .spawn(move || {
                let mut failed: Option<String> = None;
                for (job, reply) in queue {
                    let outcome = match &failed {
                        Some(why) => {
                            Err(format!("not written after an earlier write failed ({why})"))
                        }
                        None => match std::panic::catch_unwind(AssertUnwindSafe(job)) {
                            Ok(result) => result.map_err(|e| rocks_message(&path, &e)),
                            Err(_) => Err("the thread writing it panicked".to_string()),
                        },
                    };
                    if let Err(why) = &outcome {
                        failed.get_or_insert_with(|| why.clone());
                    }
                    let _ = reply.send(outcome);
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Hands a write over; it runs after every write handed over before it.
    pub(crate) fn submit(&self, job: Job) -> Written {
        let (reply, outcome) = mpsc::sync_channel(1);
        if let Some(jobs) = &self.jobs {
            // A send fails only when the thread is gone: the receipt then says so.
            let _ = jobs.send((job, reply));
        }
        Written(outcome)
    }

    /// Waits for every write handed over so far; `Err` if one of them failed.
    pub(crate) fn barrier(&self) -> Outcome {
        self.submit(Box::new(|| Ok(()))).wait()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The writes handed over finish before the database closes (a new manager may open the
        // same directory next).
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
