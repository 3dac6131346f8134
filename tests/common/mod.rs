//! Helpers shared by the integration tests: running an application in-process, waiting for
//! conditions, generating uniquely identifiable input.
#![allow(dead_code)]

pub mod group;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir::{
    async_trait, App, Config, ConfigBuilder, Context, ProcessError, Processor, Record, RunSummary,
    RuntimeError,
};
use weir_testkit::{unique, Isolation, Kafka, TestRecord};

/// Held by the tests of one binary that must not run at once (each drives several
/// instances or a cluster of its own: in parallel they would starve 2 cores).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forwards every record unchanged to the same partition number (the `mirror` example,
/// in-process).
pub struct Mirror;

#[async_trait]
impl Processor for Mirror {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            ctx.emit(r.forward());
        }
        Ok(())
    }
}

/// A multi-threaded runtime for one test.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A fresh state directory.
pub fn state_dir() -> PathBuf {
    std::env::temp_dir().join(unique("weir-test-state"))
}

/// A builder for an application on `kafka` reading `input`, writing `output`, with a fresh state
/// directory and a short commit interval.
pub fn config(kafka: &Kafka, app: &str, input: &str, output: &str) -> ConfigBuilder {
    Config::builder(app, kafka.bootstrap_servers())
        .input_topic(input)
        .output_topic(output)
        .state_dir(state_dir())
        .commit_interval(Duration::from_millis(100))
}

/// `partitions × per_partition` records with unique keys `k{p}-{i}` and values `v{p}-{i}`.
pub fn numbered(partitions: i32, per_partition: usize) -> Vec<TestRecord> {
    (0..per_partition)
        .flat_map(|i| {
            (0..partitions)
                .map(move |p| TestRecord::new(p, format!("k{p}-{i}"), format!("v{p}-{i}")))
        })
        .collect()
}

/// A run's log shows that `WEIR_FAILPOINT_ERROR=background_commit:N` was reached and that the
/// failed background commit aborted: otherwise the test tested nothing.
pub fn assert_background_commit_failed(log: &str) {
    assert!(
        log.contains("failpoint background_commit reached"),
        "the failpoint was never reached: nothing tested\n{log}"
    );
    assert!(
        log.contains("transaction aborted"),
        "the failed commit did not abort: nothing tested\n{log}"
    );
}

/// `n` records over `keys` accounts; account k always goes to partition k % partitions.
pub fn payments(n: usize, keys: usize, partitions: i32, seed: u64) -> Vec<TestRecord> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            // Every key at least once, then at random.
            let k = if i < keys {
                i
            } else {
                rng.random_range(0..keys)
            };
            let v: i64 = rng.random_range(-1_000_000..1_000_000);
            TestRecord::new(
                (k % partitions as usize) as i32,
                format!("acct-{k}"),
                v.to_string(),
            )
        })
        .collect()
}

/// Polls `check` every 100 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `f` on its own thread and returns its result; panics naming `what` if it has not
/// returned within `timeout` (the thread is left behind), so a call that hangs fails the test
/// instead of hanging it.
pub fn on_thread_within<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("{what} did not return within {timeout:?}"))
}

/// Input and output topics (`partitions` each) and an application id, all new, named after
/// `prefix`.
pub fn topics(kafka: &Kafka, prefix: &str, partitions: i32) -> (String, String, String) {
    let (input, output, app) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-app")),
    );
    kafka.create_topic(&input, partitions);
    kafka.create_topic(&output, partitions);
    (input, output, app)
}

/// Waits (`what`, up to `timeout`) until `app` has committed offset `end` on every partition
/// of `input`.
pub fn wait_committed(
    what: &str,
    timeout: Duration,
    kafka: &Kafka,
    app: &str,
    input: &str,
    end: i64,
) {
    wait_for(what, timeout, || {
        kafka
            .committed_offsets(app, input)
            .values()
            .all(|o| *o == Some(end))
    });
}

/// Records visible to read_committed readers of `topic`.
pub fn committed_count(kafka: &Kafka, topic: &str) -> usize {
    kafka.read_to_end(topic, Isolation::ReadCommitted).len()
}

/// An application running in-process on its own runtime.
pub struct InProcess {
    pub rt: Runtime,
    handle: Option<JoinHandle<Result<RunSummary, RuntimeError>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl InProcess {
    /// Starts `processor` under `config`.
    pub fn start(config: Config, processor: impl Processor + 'static) -> Self {
        let rt = runtime();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = rt.spawn(async move {
            App::new(config)
                .run_until(processor, async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            rt,
            handle: Some(handle),
            stop: Some(stop),
        }
    }

    /// Whether the application has returned.
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks it to shut down gracefully and returns its result.
    pub fn stop(mut self) -> Result<RunSummary, RuntimeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join()
    }

    /// Waits (up to 60 s) for it to return by itself.
    pub fn join(mut self) -> Result<RunSummary, RuntimeError> {
        let handle = self.handle.take().expect("joined once");
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("the application did not return within 60 s")
                .expect("the application task panicked")
        })
    }
}
