//! The engine: operator, producer and the open transaction, driven by the loop in `app.rs` and
//! by the rebalance callbacks in `rebalance.rs`.
//!
//! # The commit cycle (DESIGN.md, "The commit cycle"), as built
//!
//! ```text
//!            process(batch) ─ ok ─> produce outputs ─> positions[tp] = last offset + 1
//!   (first batch: begin_transaction)        │
//!                                           ▼   at the commit point: interval elapsed,
//!                                  commit(reason)   revoke, or shutdown
//!                                           │
//!   exactly_once: send_offsets_to_transaction(positions, group metadata)
//!                 commit_transaction                         ── on_commit
//!   at_least_once: flush (every output acknowledged), then commit offsets
//! ```
//!
//! Every transactional call runs on a detached thread of its own ([`detached`]), never on an
//! async worker, and never on tokio's blocking pool (whose threads a runtime waits for at
//! shutdown). Errors take one path per class (`weir_kafka::errors`): retriable → the same call
//! again; abortable → [`Engine::abort_and_rewind`]; fatal → stop.
//!
//! # Who may touch what
//!
//! The engine sits behind an async mutex. The main loop takes it to process a batch and to
//! commit; the consumer's rebalance callback takes it (from the polling thread) to commit on
//! revoke and to resolve start offsets on assign. The main loop polls the next batch while it
//! processes and commits the current one (see `app.rs`), so a callback may wait for the lock
//! until the current step ends; the main loop never waits for a poll while it holds the lock,
//! so the two never deadlock.
//!
//! # Rewinds
//!
//! An abort does not seek at once: it sets `rewind_pending`, and the seek
//! ([`Engine::rewind_now`]) happens where no poll is in flight — on the polling thread between
//! two polls, or in the main loop before it starts the next poll — and every record polled
//! before it is dropped: by the poll (records it holds), by the main loop (the batch it took
//! before the seek), and by [`Engine::process`], which refuses a batch while a rewind is still
//! pending (an abort earlier in the same turn, such as a failed background commit settled at
//! its start). A record is thus either certainly from before the seek (dropped, and read
//! again) or certainly from after it, never in doubt.
//!
//! # Invariants
//!
//! - `positions` holds, per partition, the offset after the last record whose outputs were
//!   handed to the producer in the open transaction (exactly_once) or since the last offset
//!   commit (at_least_once). Only these offsets are ever committed: never past processing.
//! - After an abort, `positions` is empty, the operator has been told (`on_abort`), and the
//!   consumer is seeked back to the committed offsets of every assigned partition before any
//!   further record is processed.
//! - Once `stopped` is set, nothing more is produced or committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use weir_core::{
    AssignedPartition, Bytes, CommitInfo, Config, Context, Guarantee, OffsetReset, Output,
    PoisonHandling, PoisonRecord, PoisonTally, ProcessError, Processor, Record, StartFrom,
    StoreSpec, TopicPartition,
};
use weir_kafka::clients::producer_config;
use weir_kafka::errors::{classify, is_fenced, TxnErrorClass};

use crate::produce::Held;
pub(crate) use crate::produce::WeirProducer;
use crate::rebalance::RebalanceHandler;
use crate::stateful::{by_task, failpoint, failpoint_error, restore};
use crate::{telemetry, RestoreObserver, RuntimeError};
use weir_state::{changelog_topic, Committed, Marks, RecoveryOutcome, StateManager, TaskCommit};

/// The consumer type the engine drives.
pub(crate) type WeirConsumer = BaseConsumer<RebalanceHandler>;

/// Timeout of the transactional calls and offset queries. A transactional call that cannot
/// finish in this time is retried or aborted by class.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long weir waits for a transactional call that was given [`CALL_TIMEOUT`] before it
/// declares the producer stuck: librdkafka can block past its own timeout (librdkafka#5456,
/// #5511: `send_offsets_to_transaction` while a coordinator broker disappears).
const WATCHDOG: Duration = Duration::from_secs(45);

/// Producer replacements allowed with no commit between them (see
/// [`Engine::replace_producer`]); with the back-off between them, at least 15 s plus five
/// failures of the cluster.
const MAX_REPLACEMENTS_IN_A_ROW: u32 = 5;

/// Runs a blocking client call on tokio's blocking pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking Kafka call panicked")
}

/// A producer call running on a thread of its own (see [`detached`]); await it for its result.
pub(crate) struct Detached<T> {
    result: tokio::sync::oneshot::Receiver<T>,
}

impl<T> Detached<T> {
    /// Whether the call has returned and its result waits to be taken.
    pub(crate) fn is_finished(&self) -> bool {
        !self.result.is_empty()
    }
}

impl<T> std::future::Future for Detached<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.expect("a Kafka call on a detached thread panicked"))
    }
}

/// Runs a producer call that librdkafka may never return from on a detached thread of its
/// own, not on tokio's blocking pool: a runtime waits for its blocking-pool threads when it
/// shuts down, so one call blocked inside librdkafka (librdkafka#5456, #5511:
/// `send_offsets_to_transaction` while a coordinator broker disappears) would keep the process
/// from exiting, while a detached thread ends with the process. Transactional calls are a few
/// per commit, so a thread each costs nothing measurable.
pub(crate) fn detached<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Detached<T> {
    let (tx, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("weir-{name}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawning a thread for a Kafka call");
    Detached { result }
}

/// Counts failed deliveries since the last commit; read at commit time.
#[derive(Debug, Default)]
pub(crate) struct DeliveryState {
    failed: AtomicU64,
    first: StdMutex<Option<String>>,
    /// Whether any changelog topic is tracked: without one, a delivery takes no lock.
    tracking: AtomicBool,
    /// The changelog topics, and per changelog partition the highest offset delivered since
    /// the last commit (the next restore starts after it).
    changelogs: StdMutex<ChangelogTracker>,
}

impl DeliveryState {
    fn reset(&self) {
        self.failed.store(0, Ordering::SeqCst);
        *self.first.lock().expect("poisoned") = None;
        self.changelogs.lock().expect("poisoned").delivered.clear();
    }

    pub(crate) fn track_changelogs(&self, topics: impl IntoIterator<Item = String>) {
        let mut changelogs = self.changelogs.lock().expect("poisoned");
        changelogs.topics.extend(topics);
        self.tracking
            .store(!changelogs.topics.is_empty(), Ordering::SeqCst);
    }

    fn take_changelog_offsets(&self) -> BTreeMap<(String, i32), i64> {
        std::mem::take(&mut self.changelogs.lock().expect("poisoned").delivered)
    }
}

/// Creates the producer (idempotent; transactional under exactly_once, with its transactions
/// initialised).
pub(crate) async fn new_producer(
    config: &Config,
    transactional_id: &str,
    delivery: &Arc<DeliveryState>,
) -> Result<Arc<WeirProducer>, RuntimeError> {
    let producer: ThreadedProducer<DeliveryContext> = producer_config(config, transactional_id)
        .create_with_context(DeliveryContext(Arc::clone(delivery)))
        .map_err(|source| RuntimeError::Kafka {
            during: "creating the producer".into(),
            source: source.into(),
        })?;
    let producer = Arc::new(WeirProducer::from(producer));
    if config.guarantee == Guarantee::ExactlyOnce {
        init_transactions(&producer, transactional_id).await?;
    }
    Ok(producer)
}

/// Fences any earlier producer with this transactional id and aborts its open transaction
/// (DESIGN.md, "Recovery": this comes before anything reads committed offsets).
pub(crate) async fn init_transactions(
    producer: &Arc<WeirProducer>,
    transactional_id: &str,
) -> Result<(), RuntimeError> {
    let mut attempt = 0;
    loop {
        let p = Arc::clone(producer);
        match detached("init-txn", move || p.init_transactions(CALL_TIMEOUT)).await {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == TxnErrorClass::Retriable && attempt < 5 => {
                attempt += 1;
                telemetry::retrying(
                    "init_transactions",
                    &e.to_string(),
                    attempt,
                    Duration::from_secs(1),
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(source) => {
                return Err(RuntimeError::Kafka {
                    during: format!(
                        "init_transactions for transactional id {transactional_id:?} (is the \
                         broker's transaction coordinator available? it needs \
                         transaction.state.log.replication.factor and min.isr no larger than the \
                         number of brokers)"
                    ),
                    source: source.into(),
                })
            }
        }
    }
}

/// Which topics are changelogs, and per changelog partition the highest offset delivered.
#[derive(Debug, Default)]
struct ChangelogTracker {
    topics: BTreeSet<String>,
    delivered: BTreeMap<(String, i32), i64>,
}

/// The producer's context: records delivery failures.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryContext(pub(crate) Arc<DeliveryState>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Held;

    /// Runs on the producer's thread; `_value` (an uncopied value, see the `produce` module)
    /// is released when this returns.
    fn delivery(&self, result: &DeliveryResult<'_>, _value: Held) {
        if let (Ok(message), true) = (result, self.0.tracking.load(Ordering::Relaxed)) {
            let mut changelogs = self.0.changelogs.lock().expect("poisoned");
            if changelogs.topics.contains(message.topic()) {
                let key = (message.topic().to_string(), message.partition());
                let max = changelogs.delivered.entry(key).or_insert(message.offset());
                *max = (*max).max(message.offset());
            }
        }
        if let Err((error, message)) = result {
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.0.first.lock().expect("poisoned");
            if first.is_none() {
                *first = Some(format!(
                    "{}/{}: {error}",
                    message.topic(),
                    message.partition()
                ));
            }
        }
    }
}

/// Sends everything the producer holds at once, whatever `linger.ms` says, and waits (up to
/// 5 s) until nothing is in flight. rdkafka's `flush` — which `commit_transaction` calls
/// first — sleeps in `poll` for up to 100 ms whenever anything is still in flight, because the
/// `ThreadedProducer`'s own thread serves the delivery reports it waits for: measured, every
/// commit took ~105 ms instead of ~5 ms. librdkafka's own `rd_kafka_flush` does not poll when
/// delivery reports are events (as rdkafka has them): it marks the producer as flushing (so
/// batches that are lingering go out at once — the exactly_once producer lingers up to
/// 100 ms, see `weir_kafka::clients::producer_config`) and waits on a condition variable until
/// the last delivery report is served. With the queue empty, rdkafka's flush returns at once.
fn drain(producer: &WeirProducer) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while producer.in_flight_count() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        weir_kafka::clients::flush_now(producer.client(), left.min(Duration::from_millis(100)));
    }
    true
}

/// A transactional call on a blocking thread, retried while its error is retriable (at most
/// ten times, backing off 100 ms more each time); any other error, or the last retriable one,
/// is returned with the call's name.
fn retry_blocking(
    during: &'static str,
    call: impl Fn() -> Result<(), KafkaError>,
) -> Result<(), (&'static str, KafkaError)> {
    let mut attempt = 0;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == TxnErrorClass::Retriable && attempt < 10 => {
                attempt += 1;
                let backoff = Duration::from_millis(100 * attempt);
                telemetry::retrying(during, &e.to_string(), attempt as u32, backoff);
                std::thread::sleep(backoff);
            }
            Err(e) => return Err((during, e)),
        }
    }
}

/// What a background commit returns: the failed call and its error, if any.
type CommitResult = Result<(), (&'static str, KafkaError)>;

/// A transaction committing in the background (`commit.overlap`).
struct Committing {
    /// The producer whose transaction it is; the spare again once it has committed.
    producer: Arc<WeirProducer>,
    /// `send_offsets_to_transaction` and `commit_transaction`, on a detached thread.
    task: Detached<CommitResult>,
    offsets: Vec<(TopicPartition, i64)>,
    records_in: u64,
    records_out: u64,
    reason: &'static str,
    started: Instant,
    /// When its transaction began (for telling a timeout abort from fencing, see `txn_error`).
    began: Instant,
}

/// What the processing loop waited for (see [`crate::Waits`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Input,
    Output,
    Commit,
}

/// See the module documentation.
pub(crate) struct Engine {
    pub(crate) config: Arc<Config>,
    instance_id: String,
    pub(crate) transactional_id: String,
    processor: Box<dyn Processor>,
    producer: Arc<WeirProducer>,
    delivery: Arc<DeliveryState>,
    consumer: Weak<WeirConsumer>,
    poison: PoisonHandling,

    txn_open: bool,
    period_started: Instant,
    positions: BTreeMap<TopicPartition, i64>,
    pending_in: u64,
    pending_out: u64,
    outputs: Vec<Output>,
    consecutive_failures: u32,

    /// `commit.overlap` (exactly_once, no state stores): transactions commit in the background
    /// on one producer while the next fills on the other.
    overlap: bool,
    /// The producer not in use (`commit.overlap`): the next transaction's, while the current
    /// one commits.
    spare: Option<Arc<WeirProducer>>,
    /// The transaction committing in the background, on the producer that is not current.
    /// Commits complete in order: it is settled before anything else commits or aborts.
    committing: Option<Committing>,

    /// RocksDB state, when the operator declares stores. Moved out while a blocking call
    /// (prepare, apply, restore) runs on the blocking pool.
    state: Option<StateManager>,
    /// Whether the operator declared any store.
    stateful: bool,
    /// Told how restores progress (`App::on_restore_progress`).
    pub(crate) restore_observer: Option<RestoreObserver>,

    /// Partitions currently assigned to this instance.
    pub(crate) assigned: BTreeSet<TopicPartition>,
    /// Per assigned partition, where reading resumes after an abort: the start offset resolved
    /// at assignment, then every committed offset. Rewinding never asks `auto.offset.reset`
    /// again (the log may have moved since).
    resume_at: BTreeMap<TopicPartition, i64>,
    /// A copy of `resume_at` (the committed offsets of the assigned partitions) for the
    /// consumer-lag gauge, which librdkafka's statistics callback computes.
    pub(crate) committed_view: Arc<std::sync::Mutex<BTreeMap<TopicPartition, i64>>>,
    /// Set by an abort: every assigned partition must be seeked back before the next record is
    /// processed (see "Rewinds" above).
    pub(crate) rewind_pending: Arc<AtomicBool>,
    /// An error raised inside a rebalance callback, for the main loop to return.
    pub(crate) failure: Option<RuntimeError>,
    /// Set once the application is stopping with an error: nothing more is committed.
    pub(crate) stopped: bool,
    /// Totals for the run summary.
    pub(crate) totals: crate::RunSummary,
    /// Producer replacements since the last successful commit (see `replace_producer`).
    replacements_in_a_row: u32,
    /// Set when a transactional call did not return within [`WATCHDOG`].
    producer_stuck: bool,
    /// Set when the producer was "fenced" after its transaction had been open longer than
    /// `transaction.timeout.ms`: the broker aborted it and bumped the epoch (see `txn_error`).
    epoch_bumped: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("transactional_id", &self.transactional_id)
            .field("txn_open", &self.txn_open)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub(crate) fn new(
        config: Arc<Config>,
        instance_id: String,
        transactional_id: String,
        processor: Box<dyn Processor>,
        producer: Arc<WeirProducer>,
        delivery: Arc<DeliveryState>,
        state: Option<StateManager>,
    ) -> Self {
        let poison = PoisonHandling {
            policy: config.poison_policy,
            dead_letter_topic: config.dead_letter_topic.clone(),
            application_id: config.application_id.clone(),
        };
        Self {
            config,
            instance_id,
            transactional_id,
            processor,
            producer,
            delivery,
            consumer: Weak::new(),
            poison,
            txn_open: false,
            period_started: Instant::now(),
            positions: BTreeMap::new(),
            pending_in: 0,
            pending_out: 0,
            outputs: Vec::new(),
            consecutive_failures: 0,
            stateful: state.is_some(),
            overlap: false,
            spare: None,
            committing: None,
            state,
            restore_observer: None,
            assigned: BTreeSet::new(),
            resume_at: BTreeMap::new(),
            committed_view: Arc::default(),
            rewind_pending: Arc::new(AtomicBool::new(false)),
            failure: None,
            stopped: false,
            totals: crate::RunSummary::default(),
            replacements_in_a_row: 0,
            producer_stuck: false,
            epoch_bumped: false,
        }
    }

    /// `commit.overlap`: the second transactional producer (ignored with state stores, whose
    /// commits always complete in line).
    pub(crate) fn set_spare(&mut self, spare: Arc<WeirProducer>) {
        if !self.stateful {
            self.overlap = true;
            self.spare = Some(spare);
        }
    }

    pub(crate) fn set_consumer(&mut self, consumer: &Arc<WeirConsumer>) {
        self.consumer = Arc::downgrade(consumer);
    }

    pub(crate) fn processor(&mut self) -> &mut dyn Processor {
        self.processor.as_mut()
    }

    fn consumer(&self) -> Arc<WeirConsumer> {
        self.consumer
            .upgrade()
            .expect("the consumer outlives every engine call that needs it")
    }

    fn exactly_once(&self) -> bool {
        self.config.guarantee == Guarantee::ExactlyOnce
    }

    /// Whether the commit interval has elapsed with work pending.
    pub(crate) fn commit_due(&self) -> bool {
        let pending = self.txn_open || !self.positions.is_empty();
        let state_full = self
            .state
            .as_ref()
            .is_some_and(|s| s.uncommitted_bytes() >= self.config.state_max_uncommitted_bytes);
        pending && (state_full || self.period_started.elapsed() >= self.config.commit_interval)
    }

    /// Runs `f` on the state manager on the blocking pool (RocksDB writes and fsyncs, restores).
    async fn state_blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut StateManager) -> T + Send + 'static,
    ) -> Option<T> {
        let mut state = self.state.take()?;
        let (state, result) = blocking(move || {
            let result = f(&mut state);
            (state, result)
        })
        .await;
        self.state = Some(state);
        Some(result)
    }

    fn txn_error(&mut self, during: &'static str, source: KafkaError) -> RuntimeError {
        // Once the producer hit a fatal error, every call reports `ERR__FATAL`; the cause
        // (fenced or not) is kept by the client.
        let fatal_fenced = source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
            && self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| {
                    matches!(
                        code,
                        RDKafkaErrorCode::Fenced
                            | RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                    )
                });
        let fenced = is_fenced(&source) || fatal_fenced;
        let open_for = self.period_started.elapsed();
        if fenced && self.txn_open && open_for >= self.config.transaction_timeout {
            // Not another instance: this transaction outlived transaction.timeout.ms (a broker
            // failure held it up), the coordinator aborted it and bumped the producer's epoch,
            // and librdkafka reports the next call on it as fenced. A new producer heals that.
            self.epoch_bumped = true;
            return RuntimeError::Kafka {
                during: format!(
                    "{during} (the broker aborted the transaction, open for {:.1} s, past \
                     transaction.timeout.ms = {} ms, and bumped the producer epoch)",
                    open_for.as_secs_f64(),
                    self.config.transaction_timeout.as_millis()
                ),
                source: source.into(),
            };
        }
        if fenced {
            telemetry::fenced();
            RuntimeError::Fenced {
                during: during.to_string(),
                transactional_id: self.transactional_id.clone(),
                source: source.into(),
            }
        } else {
            RuntimeError::Kafka {
                during: during.to_string(),
                source: source.into(),
            }
        }
    }

    async fn begin_if_needed(&mut self) -> Result<(), RuntimeError> {
        if !self.exactly_once() {
            if self.positions.is_empty() && self.pending_out == 0 {
                self.period_started = Instant::now();
            }
            return Ok(());
        }
        if self.txn_open {
            return Ok(());
        }
        // begin_transaction is local to the client (no broker round trip), so it is safe here.
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin_transaction", e))?;
        self.txn_open = true;
        self.period_started = Instant::now();
        Ok(())
    }

    /// Step 2 of the commit cycle: run the operator on one batch and produce its outputs.
    pub(crate) async fn process(&mut self, batch: &[Record]) -> Result<(), RuntimeError> {
        if batch.is_empty() || self.stopped {
            return Ok(());
        }
        if self.rewind_pending.load(Ordering::SeqCst) {
            // An abort earlier in this turn (a background commit that failed, settled before
            // this batch) asked for a rewind that has not happened yet: every record here was
            // polled before it and is read again after it. Processed now, it would go into the
            // next transaction ahead of the replay of the records before it — duplicates.
            return Ok(());
        }
        self.begin_if_needed().await?;
        let mut tally = PoisonTally::default();
        let mut result = Ok(());
        // One call per run of one task's records, in polled order (see `task_runs`).
        for task_batch in task_runs(batch) {
            let task = task_batch[0].partition;
            let ctx = Context::new(&mut self.outputs, &self.poison, &mut tally);
            result = match self.state.as_mut() {
                Some(state) => {
                    let mut access = state.access(task);
                    let mut ctx = ctx.with_state(&mut access);
                    self.processor.process(task_batch, &mut ctx).await
                }
                None => {
                    let mut ctx = ctx;
                    self.processor.process(task_batch, &mut ctx).await
                }
            };
            if result.is_err() {
                break;
            }
        }
        telemetry::poison(tally.skipped, tally.dead_lettered);
        self.totals.skipped += tally.skipped;
        self.totals.dead_lettered += tally.dead_lettered;

        // Under `fail`, a poison record stops the application even if the operator swallowed
        // the error that `Context::poison` returned.
        let result = match (result, tally.failed.take()) {
            (Err(ProcessError::Poison(p)), _) => Err(ProcessError::Poison(p)),
            (_, Some((topic, partition, offset, cause))) => {
                Err(ProcessError::Poison(PoisonRecord {
                    topic,
                    partition,
                    offset,
                    cause: cause.into(),
                }))
            }
            (result, None) => result,
        };

        match result {
            Ok(()) => {
                let Some(produced) = self.produce_outputs().await? else {
                    return Ok(());
                };
                let records = batch.len();
                // One map update per run of one topic-partition's records, not one per record.
                for run in batch.chunk_by(|a, b| a.partition == b.partition && a.topic == b.topic) {
                    let next = run.iter().map(|r| r.offset + 1).max().unwrap_or_default();
                    self.advance(&run[0], next);
                }
                self.pending_in += records as u64;
                self.pending_out += produced;
                telemetry::batch(records, produced as usize);
                Ok(())
            }
            Err(ProcessError::Retriable(e)) => {
                self.consecutive_failures += 1;
                let attempts = self.consecutive_failures;
                let message = e.to_string();
                if attempts > self.config.processing_retries {
                    let err = RuntimeError::RetriesExhausted {
                        attempts,
                        retries: self.config.processing_retries,
                        position: batch[0].coordinates(),
                        message,
                    };
                    return Err(self.stop(err).await);
                }
                self.abort_and_rewind("process", &message).await?;
                let backoff = Duration::from_millis(100 * (1 << (attempts - 1).min(6)));
                telemetry::retrying("process", &message, attempts, backoff);
                tokio::time::sleep(backoff).await;
                Ok(())
            }
            Err(ProcessError::Fatal(e)) => {
                let err = RuntimeError::Operator {
                    during: "process",
                    message: e.to_string(),
                };
                Err(self.stop(err).await)
            }
            Err(ProcessError::Poison(p)) => Err(self.stop(RuntimeError::Poison(p)).await),
        }
    }

    /// Counts time the processing loop spent waiting (run summary and `weir_wait_seconds`).
    pub(crate) fn waited(&mut self, on: Wait, took: Duration) {
        let total = match on {
            Wait::Input => &mut self.totals.waited.input,
            Wait::Output => &mut self.totals.waited.output,
            Wait::Commit => &mut self.totals.waited.commit,
        };
        *total += took;
        telemetry::waited(on, took);
    }

    /// Moves the position of `record`'s partition to `next`, unless it is already past it.
    fn advance(&mut self, record: &Record, next: i64) {
        let tp = TopicPartition::new(&*record.topic, record.partition);
        let position = self.positions.entry(tp).or_insert(next);
        *position = (*position).max(next);
    }

    /// Hands the buffered outputs to the producer (waiting while its queue is full).
    /// Returns `None` when the transaction had to be aborted instead (the work is replayed).
    async fn produce_outputs(&mut self) -> Result<Option<u64>, RuntimeError> {
        let mut outputs = std::mem::take(&mut self.outputs);
        let mut produced = 0;
        let mut result = Ok(());
        let mut aborted: Option<String> = None;
        let mut queue_full = Duration::ZERO;
        for mut out in outputs.drain(..) {
            let named = out.topic.take();
            let Some(topic) = named.as_deref().or(self.config.output_topic.as_deref()) else {
                result = Err(RuntimeError::NoOutputTopic);
                break;
            };
            loop {
                match self.producer.produce(topic, &mut out) {
                    Ok(()) => break,
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                        let waiting = Instant::now();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        queue_full += waiting.elapsed();
                    }
                    Err(source)
                        if self.exactly_once()
                            && source.rdkafka_error_code() == Some(RDKafkaErrorCode::State) =>
                    {
                        // The transaction is in the abortable-error state: take the abortable
                        // path (the abort reveals a fatal cause, if there is one).
                        aborted = Some(source.to_string());
                        break;
                    }
                    Err(source) if source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                        result = Err(self.txn_error("produce", source));
                        break;
                    }
                    Err(source) => {
                        result = Err(RuntimeError::Produce {
                            topic: topic.to_string(),
                            partition: out.partition,
                            source: source.into(),
                        });
                        break;
                    }
                }
            }
            if result.is_err() || aborted.is_some() {
                break;
            }
            produced += 1;
        }
        outputs.clear();
        self.outputs = outputs;
        if !queue_full.is_zero() {
            self.waited(Wait::Output, queue_full);
        }
        if let Some(cause) = aborted {
            self.abort_and_rewind("produce", &cause).await?;
            return Ok(None);
        }
        match result {
            Ok(()) => Ok(Some(produced)),
            Err(e) => Err(self.stop(e).await),
        }
    }

    /// Step 3 of the commit cycle: commit outputs and input offsets. With `commit.overlap`, an
    /// interval commit goes on in the background while the next transaction fills on the spare
    /// producer; every other commit (revoke, shutdown, ...) completes before this returns.
    pub(crate) async fn commit(&mut self, reason: &'static str) -> Result<(), RuntimeError> {
        if self.stopped {
            return Ok(());
        }
        if !self.settle_committing().await? {
            return Ok(());
        }
        if self.overlap && reason == "interval" && self.txn_open && self.spare.is_some() {
            // The next transaction's outputs may go out only once every output of this one is
            // written, so that each output partition keeps the order of its inputs. If the
            // producer cannot drain now, the commit takes the in-line path. (Holding the next
            // transaction's outputs in memory instead, so that the main loop never waits here,
            // was measured on 2026-11-27: no gain, 45 MiB more RSS; see docs/benchmarks.md.)
            let producer = Arc::clone(&self.producer);
            if blocking(move || drain(&producer)).await {
                return self.commit_in_background(reason).await;
            }
        }
        let started = Instant::now();
        let committed = if self.exactly_once() {
            self.commit_transaction().await?
        } else {
            self.commit_offsets().await?
        };
        let Some(offsets) = committed else {
            return Ok(());
        };
        let (records_in, records_out) = (
            std::mem::take(&mut self.pending_in),
            std::mem::take(&mut self.pending_out),
        );
        self.committed(reason, started, records_in, records_out, offsets)
            .await
    }

    /// The positions to commit, as a list.
    fn position_list(&self) -> Vec<(TopicPartition, i64)> {
        self.positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect()
    }

    /// The consumer's group metadata for `send_offsets_to_transaction` (its generation fences
    /// zombies); without it, weir stops.
    async fn group_metadata(&mut self) -> Result<ConsumerGroupMetadata, RuntimeError> {
        match self.consumer().group_metadata() {
            Some(group) => Ok(group),
            None => {
                let err = RuntimeError::Internal(
                    "the consumer has no group metadata for send_offsets_to_transaction".into(),
                );
                Err(self.stop(err).await)
            }
        }
    }

    /// Starts committing the open transaction on a blocking thread and makes the spare producer
    /// current (`commit.overlap`). The outcome is taken up by [`settle_committing`](Self::settle_committing).
    async fn commit_in_background(&mut self, reason: &'static str) -> Result<(), RuntimeError> {
        let offsets = self.position_list();
        let (_, marks) = self.state_commits()?;
        let group = self.group_metadata().await?;
        let tpl = (!offsets.is_empty()).then(|| to_commit_tpl(&offsets, &marks));
        let Some(next) = self.spare.take() else {
            return Err(RuntimeError::Internal(
                "no spare producer to overlap the commit".into(),
            ));
        };
        let producer = std::mem::replace(&mut self.producer, next);
        let p = Arc::clone(&producer);
        let task = detached("commit", move || {
            if failpoint_error("background_commit") {
                return Err((
                    "commit_transaction",
                    KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                ));
            }
            if let Some(tpl) = tpl {
                retry_blocking("send_offsets_to_transaction", || {
                    p.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)
                })?;
                failpoint("after_send_offsets");
            }
            retry_blocking("commit_transaction", || {
                drain(&p);
                p.commit_transaction(CALL_TIMEOUT)
            })?;
            failpoint("after_commit_transaction");
            Ok(())
        });
        self.committing = Some(Committing {
            producer,
            task,
            offsets,
            records_in: std::mem::take(&mut self.pending_in),
            records_out: std::mem::take(&mut self.pending_out),
            reason,
            started: Instant::now(),
            began: self.period_started,
        });
        self.txn_open = false;
        self.positions.clear();
        self.period_started = Instant::now();
        Ok(())
    }

    /// Records a background commit that has finished (metrics, totals, `on_commit`) without
    /// waiting for the next commit point, which an idle input may never bring.
    pub(crate) async fn settle_if_finished(&mut self) -> Result<(), RuntimeError> {
        if self
            .committing
            .as_ref()
            .is_some_and(|c| c.task.is_finished())
        {
            self.settle_committing().await?;
        }
        Ok(())
    }

    /// Waits for the transaction committing in the background, if any, and records it. Returns
    /// `Ok(false)` when it failed and was aborted, together with the open transaction (which
    /// holds work from after it), and every partition was rewound.
    async fn settle_committing(&mut self) -> Result<bool, RuntimeError> {
        match self.await_committing().await? {
            None => Ok(true),
            Some((during, e)) if classify(&e) == TxnErrorClass::Fatal => {
                let err = self.txn_error(during, e);
                Err(self.stop(err).await)
            }
            Some((during, e)) => {
                self.abort_and_rewind(during, &e.to_string()).await?;
                Ok(false)
            }
        }
    }

    /// Waits for the transaction committing in the background, if any. Committed: it is
    /// recorded. Failed: the open transaction on the current producer is aborted (it holds work
    /// from after the failed one), the failed producer becomes current again with its
    /// transaction open, and the error is returned for the caller to abort it.
    async fn await_committing(
        &mut self,
    ) -> Result<Option<(&'static str, KafkaError)>, RuntimeError> {
        let Some(mut c) = self.committing.take() else {
            return Ok(None);
        };
        let waiting = Instant::now();
        let patience = self.config.transaction_timeout / 4;
        if self.txn_open && !c.task.is_finished() {
            // The open transaction must not outlive its timeout while this one is slow (a
            // coordinator moving during a broker failure): the broker would abort it and bump
            // the producer's epoch, which looks like fencing. Past a quarter of the timeout it
            // is aborted, and its work replayed from whatever this commit leaves committed.
            if let Ok(joined) = tokio::time::timeout(patience, &mut c.task).await {
                return self.committing_ended(c, Ok(joined)).await;
            }
            let cause = format!(
                "the previous transaction's commit has taken over {patience:?} (a quarter of transaction.timeout.ms)"
            );
            Box::pin(self.abort_and_rewind("waiting for the previous commit", &cause)).await?;
        }
        let left = WATCHDOG.saturating_sub(waiting.elapsed());
        let outcome = tokio::time::timeout(left, &mut c.task).await;
        self.committing_ended(c, outcome).await
    }

    /// The end of [`await_committing`](Self::await_committing), once the background commit
    /// returned (or the watchdog gave up on it).
    async fn committing_ended(
        &mut self,
        c: Committing,
        outcome: Result<CommitResult, tokio::time::error::Elapsed>,
    ) -> Result<Option<(&'static str, KafkaError)>, RuntimeError> {
        if let Ok(Ok(())) = outcome {
            self.spare = Some(c.producer);
            self.resume_at.extend(c.offsets.iter().cloned());
            self.publish_committed();
            self.committed(c.reason, c.started, c.records_in, c.records_out, c.offsets)
                .await?;
            return Ok(None);
        }
        // The open transaction holds work from after the failed one: it goes first.
        self.abort_open().await?;
        self.spare = Some(std::mem::replace(&mut self.producer, c.producer));
        self.txn_open = true;
        self.period_started = c.began;
        match outcome {
            Ok(result) => Ok(result.err()),
            Err(_) => {
                self.producer_stuck = true;
                let err = RuntimeError::Stuck {
                    during: "commit_transaction".into(),
                    waited: WATCHDOG,
                };
                Err(self.stop(err).await)
            }
        }
    }

    /// Records a commit: metrics, totals, and the operator's `on_commit`.
    async fn committed(
        &mut self,
        reason: &'static str,
        started: Instant,
        records_in: u64,
        records_out: u64,
        offsets: Vec<(TopicPartition, i64)>,
    ) -> Result<(), RuntimeError> {
        let info = CommitInfo {
            records_in,
            records_out,
            offsets,
        };
        telemetry::committed(reason, started.elapsed(), info.records_in, info.records_out);
        self.totals.commits += 1;
        self.replacements_in_a_row = 0;
        self.totals.records_in += info.records_in;
        self.totals.records_out += info.records_out;
        self.consecutive_failures = 0;
        if self.committing.is_none() && !self.txn_open {
            self.period_started = Instant::now();
        }
        if let Err(e) = self.processor.on_commit(&info).await {
            let err = RuntimeError::Operator {
                during: "on_commit",
                message: e.to_string(),
            };
            return Err(self.stop(err).await);
        }
        Ok(())
    }

    /// Returns the committed offsets, or `None` when nothing was open (or the transaction had
    /// to be aborted, in which case the work is replayed).
    async fn commit_transaction(
        &mut self,
    ) -> Result<Option<Vec<(TopicPartition, i64)>>, RuntimeError> {
        if !self.txn_open {
            return Ok(None);
        }
        let offsets = self.position_list();
        // State delta: its changelog records join the transaction (final value per key).
        if !self.produce_changelog().await? {
            return Ok(None);
        }
        failpoint("after_produce");
        let (commits, marks) = self.state_commits()?;
        if !offsets.is_empty() {
            let tpl = to_commit_tpl(&offsets, &marks);
            let group = self.group_metadata().await?;
            // 3a. The input offsets join the transaction, with the group's generation, so a
            //     zombie of this group member is fenced (EOS v2).
            let (tpl, group) = (Arc::new(tpl), Arc::new(group));
            let sent = self
                .retrying("send_offsets_to_transaction", move |p| {
                    p.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)
                })
                .await?;
            if !sent {
                return Ok(None);
            }
            failpoint("after_send_offsets");
        }
        // 3b. Prepare: the delta and its target offsets, durable before Kafka decides.
        if !commits.is_empty() {
            let c = commits.clone();
            if let Some(Err(e)) = self.state_blocking(move |s| s.prepare(&c)).await {
                return Err(self.stop(e.into()).await);
            }
            failpoint("after_prepare");
        }
        // 3c. Kafka is the commit point: outputs, offsets and changelog become visible together.
        let committed = self
            .retrying("commit_transaction", |p| {
                drain(p);
                p.commit_transaction(CALL_TIMEOUT)
            })
            .await?;
        if !committed {
            return Ok(None);
        }
        failpoint("after_commit_transaction");
        self.txn_open = false;
        self.resume_at
            .extend(self.positions.iter().map(|(tp, o)| (tp.clone(), *o)));
        self.positions.clear();
        self.publish_committed();
        // 3d. Apply: state and offsets (R = K) in one atomic write; the pending entry goes.
        self.apply_state(commits).await?;
        self.delivery.reset();
        Ok(Some(offsets))
    }

    /// Runs a producer call on a blocking thread, giving up on it after [`WATCHDOG`]: then the
    /// producer is marked stuck and `RuntimeError::Stuck` returned (the main loop replaces the
    /// producer; the blocked thread keeps the old one alive until librdkafka lets go).
    async fn watched<T: Send + 'static>(
        &mut self,
        during: &'static str,
        call: impl FnOnce(&WeirProducer) -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let producer = Arc::clone(&self.producer);
        let call = detached(during, move || call(&producer));
        match tokio::time::timeout(WATCHDOG, call).await {
            Ok(result) => Ok(result),
            Err(_) => {
                self.producer_stuck = true;
                let err = RuntimeError::Stuck {
                    during: during.to_string(),
                    waited: WATCHDOG,
                };
                Err(self.stop(err).await)
            }
        }
    }

    /// Runs a transactional call with one path per error class. Returns `Ok(false)` when the
    /// transaction was aborted (and the consumer rewound) instead.
    async fn retrying(
        &mut self,
        during: &'static str,
        call: impl Fn(&WeirProducer) -> Result<(), KafkaError> + Send + Sync + Clone + 'static,
    ) -> Result<bool, RuntimeError> {
        let mut attempt = 0;
        loop {
            let call = call.clone();
            let result = self.watched(during, call).await?;
            let Err(e) = result else { return Ok(true) };
            match classify(&e) {
                TxnErrorClass::Retriable if attempt < 10 => {
                    attempt += 1;
                    let backoff = Duration::from_millis(100 * attempt);
                    telemetry::retrying(during, &e.to_string(), attempt as u32, backoff);
                    tokio::time::sleep(backoff).await;
                }
                TxnErrorClass::Retriable | TxnErrorClass::Abortable => {
                    self.abort_and_rewind(during, &e.to_string()).await?;
                    return Ok(false);
                }
                TxnErrorClass::Fatal => {
                    let err = self.txn_error(during, e);
                    return Err(self.stop(err).await);
                }
            }
        }
    }

    /// at_least_once: wait until every output is acknowledged, then commit the offsets.
    async fn commit_offsets(&mut self) -> Result<Option<Vec<(TopicPartition, i64)>>, RuntimeError> {
        if self.positions.is_empty() && self.pending_out == 0 {
            return Ok(None);
        }
        if !self.produce_changelog().await? {
            return Ok(None);
        }
        let (commits, marks) = self.state_commits()?;
        let producer = Arc::clone(&self.producer);
        let flushed = blocking(move || {
            drain(&producer);
            producer.flush(CALL_TIMEOUT)
        })
        .await;
        if let Err(source) = flushed {
            let err = RuntimeError::Kafka {
                during: "flush before committing offsets".into(),
                source: source.into(),
            };
            return Err(self.stop(err).await);
        }
        let failed = self.delivery.failed.load(Ordering::SeqCst);
        if failed > 0 {
            let first = self.delivery.first.lock().expect("poisoned").clone();
            let err = RuntimeError::Delivery {
                failed,
                first: first.unwrap_or_default(),
            };
            return Err(self.stop(err).await);
        }
        let offsets = self.position_list();
        if offsets.is_empty() {
            // Only outputs of a revoke hook were pending: acknowledged, nothing to commit.
            self.delivery.reset();
            return Ok(Some(offsets));
        }
        let tpl = to_commit_tpl(&offsets, &marks);
        let consumer = self.consumer();
        match blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
            Ok(()) => {
                self.resume_at
                    .extend(self.positions.iter().map(|(tp, o)| (tp.clone(), *o)));
                self.positions.clear();
                self.publish_committed();
                self.apply_state(commits).await?;
                self.delivery.reset();
                Ok(Some(offsets))
            }
            Err(e) => {
                // Not fatal: the outputs are acknowledged, and the positions stay to be
                // committed next time (or the records are reprocessed: at-least-once).
                telemetry::transient("commit offsets", &e.to_string());
                Ok(None)
            }
        }
    }

    /// The abortable path: abort the transaction, drop the uncommitted work, tell the
    /// operator, and have every assigned partition seeked back to its committed offset
    /// ([`rewind_now`](Self::rewind_now), before the next record is processed).
    pub(crate) async fn abort_and_rewind(
        &mut self,
        during: &'static str,
        cause: &str,
    ) -> Result<(), RuntimeError> {
        // A transaction committing in the background settles first: if it committed, the
        // rewind goes to its offsets; if it failed, its producer is current again, and aborted
        // here.
        if let Some((during, e)) = self.await_committing().await? {
            if classify(&e) == TxnErrorClass::Fatal {
                let err = self.txn_error(during, e);
                return Err(self.stop(err).await);
            }
        }
        telemetry::aborted(during, cause);
        self.totals.aborts += 1;
        self.abort_open().await?;
        self.positions.clear();
        self.outputs.clear();
        self.pending_in = 0;
        self.pending_out = 0;
        self.delivery.reset();
        if let Some(Err(e)) = self.state_blocking(StateManager::abort).await {
            return Err(self.stop(e.into()).await);
        }
        if let Err(e) = self.processor.on_abort().await {
            let err = RuntimeError::Operator {
                during: "on_abort",
                message: e.to_string(),
            };
            return Err(self.stop(err).await);
        }
        self.rewind_pending.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Aborts the open transaction on the current producer, if any: the call again while its
    /// error is retriable (a coordinator moving during a broker failure), at most ten times
    /// with a growing back-off; any other error stops (a fatal one marks the producer for
    /// replacement, see [`producer_failed`](Self::producer_failed)).
    async fn abort_open(&mut self) -> Result<(), RuntimeError> {
        if !self.txn_open {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            match self
                .watched("abort_transaction", |p| p.abort_transaction(CALL_TIMEOUT))
                .await?
            {
                Ok(()) => break,
                Err(e) if classify(&e) == TxnErrorClass::Retriable && attempt < 10 => {
                    attempt += 1;
                    let backoff = Duration::from_millis(100 * attempt);
                    telemetry::retrying(
                        "abort_transaction",
                        &e.to_string(),
                        attempt as u32,
                        backoff,
                    );
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    let err = self.txn_error("abort_transaction", e);
                    return Err(self.stop(err).await);
                }
            }
        }
        self.txn_open = false;
        Ok(())
    }

    /// Performs a pending rewind: seeks every assigned partition to where it resumes (its
    /// committed offset). Returns whether there was one, in which case every record polled
    /// before this call precedes the seek and must be dropped. Call it only while no poll is in
    /// flight (see "Rewinds" above).
    pub(crate) async fn rewind_now(&mut self) -> Result<bool, RuntimeError> {
        if !self.rewind_pending.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        let targets: Vec<(TopicPartition, i64)> = self
            .assigned
            .iter()
            .filter_map(|tp| self.resume_at.get(tp).map(|o| (tp.clone(), *o)))
            .collect();
        match self.seek(targets).await {
            Ok(()) => Ok(true),
            Err(e) => Err(self.stop(e).await),
        }
    }

    /// Stops for good: aborts the open transaction (best effort) and returns `error`.
    pub(crate) async fn stop(&mut self, error: RuntimeError) -> RuntimeError {
        if !self.stopped {
            self.stopped = true;
            if let Some(c) = self.committing.take() {
                // Let the transaction committing in the background end either way (a restart
                // resumes from whatever Kafka decided).
                if tokio::time::timeout(WATCHDOG, c.task).await.is_err() {
                    tracing::warn!("commit_transaction did not return while stopping; the broker aborts the transaction after transaction.timeout.ms unless it committed");
                }
                self.spare = Some(c.producer);
            }
            if self.txn_open && !self.producer_stuck {
                let producer = Arc::clone(&self.producer);
                let abort = detached("abort", move || producer.abort_transaction(CALL_TIMEOUT));
                match tokio::time::timeout(WATCHDOG, abort).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not abort the open transaction while stopping; the broker aborts it after transaction.timeout.ms, or the next start of this instance does");
                    }
                    _ => tracing::warn!("abort_transaction did not return while stopping; the broker aborts the transaction after transaction.timeout.ms"),
                }
            }
            self.txn_open = false;
            self.positions.clear();
            if let Some(Err(e)) = self.state_blocking(StateManager::abort).await {
                tracing::warn!(error = %e, "could not drop the uncommitted state while stopping; recovery rolls it back");
            }
        }
        error
    }

    /// Rebalance: partitions assigned. Resolves where each starts and tells the operator.
    pub(crate) async fn on_assign(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<AssignedPartition>, RuntimeError> {
        if self.stateful && self.txn_open {
            // A restore may take longer than the transaction timeout: commit the work of the
            // partitions kept so far before it starts (an incremental assignment).
            self.commit("assign").await?;
        }
        let starts = self.resume(&partitions).await?;
        self.assigned.extend(partitions);
        telemetry::assigned(&starts);
        if let Err(e) = self.processor.on_partitions_assigned(&starts).await {
            return Err(RuntimeError::Operator {
                during: "on_partitions_assigned",
                message: e.to_string(),
            });
        }
        Ok(starts)
    }

    /// Where each of `partitions` resumes: the group's committed offset (else
    /// `auto.offset.reset`), with each task's state recovered to match it (DESIGN.md,
    /// "Recovery") before the first record.
    async fn resume(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<Vec<AssignedPartition>, RuntimeError> {
        let consumer = self.consumer();
        let group = self.config.application_id.clone();
        let policy = self.config.auto_offset_reset;
        let parts = partitions.to_vec();
        let patience = self.config.transaction_timeout + Duration::from_secs(30);
        let (starts, marks) =
            blocking(move || resolve_starts(&consumer, &group, &parts, policy, patience)).await?;
        if self.stateful {
            // Recovery before the first record of each new task (DESIGN.md, "Recovery").
            let mut tasks: BTreeMap<i32, (Committed, Option<u64>)> = BTreeMap::new();
            for s in &starts {
                let k = (s.start == StartFrom::Committed).then_some(s.start_offset);
                let m = marks.get(&s.partition).copied().unwrap_or_default();
                let task = tasks.entry(s.partition.partition).or_default();
                task.0.insert(s.partition.topic.clone(), (k, m.seq));
                task.1 = task.1.max(m.reset);
            }
            for (task, (committed, reset)) in tasks {
                if let Some(reset) = reset {
                    self.reset_task(task, reset, &committed).await?;
                }
                self.recover_task(task, committed).await?;
            }
        }
        self.resume_at
            .extend(starts.iter().map(|s| (s.partition.clone(), s.start_offset)));
        self.publish_committed();
        Ok(starts)
    }

    /// Whether the producer failed in a way that a new producer heals: stuck, any fatal error
    /// except fencing, or "fencing" of a transaction older than `transaction.timeout.ms` (the
    /// broker's own timeout abort, see `txn_error`). Real fencing means another producer took
    /// this transactional id over; replacing it would fence that one in turn, so it stops the
    /// application.
    pub(crate) fn producer_failed(&self) -> bool {
        self.producer_stuck
            || self.epoch_bumped
            || self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| {
                    !matches!(
                        code,
                        RDKafkaErrorCode::Fenced
                            | RDKafkaErrorCode::ProducerFenced
                            | RDKafkaErrorCode::InvalidProducerEpoch
                    )
                })
    }

    /// Replaces a failed producer and resumes every assigned task from the group's committed
    /// offsets, as after a fresh assignment: the open transaction's work is dropped (the
    /// broker aborts it, or the new producer's `init_transactions` does), and each task's state
    /// is recovered against the committed offsets before processing goes on.
    ///
    /// This heals a producer whose transaction the broker aborted behind its back — e.g. its
    /// records timed out while a broker was down and the coordinator then refused to end the
    /// transaction (`INVALID_TXN_STATE`, fatal in librdkafka). Real fencing is not healed (see
    /// [`producer_failed`](Self::producer_failed)). A broker failure can take more than one
    /// replacement (each new transaction may time out again until the controller has moved the
    /// dead broker's leaders), so the budget counts replacements with no commit between them:
    /// after [`MAX_REPLACEMENTS_IN_A_ROW`], the next failure stops the application with
    /// `cause`, since something is persistently wrong.
    pub(crate) async fn replace_producer(
        &mut self,
        cause: RuntimeError,
    ) -> Result<(), RuntimeError> {
        if self.replacements_in_a_row >= MAX_REPLACEMENTS_IN_A_ROW {
            tracing::error!(
                replacements = self.replacements_in_a_row,
                "the producer failed again after {MAX_REPLACEMENTS_IN_A_ROW} replacements with no \
                 commit between them; stopping"
            );
            return Err(self.stop(cause).await);
        }
        self.replacements_in_a_row += 1;
        // The first replacement is immediate; the next ones (nothing committed since) give the
        // cluster time to recover: 1 s, 2 s, 4 s, 8 s.
        let backoff = match self.replacements_in_a_row {
            1 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 2)),
        };
        tracing::warn!(error = %cause, transactional_id = %self.transactional_id,
            "the producer failed; replacing it and resuming every task from the committed offsets");
        telemetry::aborted("replacing the producer", &cause.to_string());
        self.totals.aborts += 1;
        // Drop the uncommitted work (the same as an abort, without the failed producer).
        self.stop(cause).await;
        self.txn_open = false;
        self.outputs.clear();
        self.pending_in = 0;
        self.pending_out = 0;
        self.delivery.reset();
        if let Err(e) = self.processor.on_abort().await {
            return Err(RuntimeError::Operator {
                during: "on_abort",
                message: e.to_string(),
            });
        }
        tokio::time::sleep(backoff).await;
        let producer = new_producer(&self.config, &self.transactional_id, &self.delivery).await?;
        let old = std::mem::replace(&mut self.producer, producer);
        // Destroying the old client may block (a stuck call still holds it): not awaited.
        drop(detached("drop-producer", move || drop(old)));
        if self.overlap {
            // Both transactional ids start afresh: `init_transactions` aborts whatever the
            // other one left open.
            let second = self.config.second_transactional_id(&self.instance_id);
            let spare = new_producer(&self.config, &second, &self.delivery).await?;
            if let Some(old) = self.spare.replace(spare) {
                drop(detached("drop-producer", move || drop(old)));
            }
        }
        self.producer_stuck = false;
        self.epoch_bumped = false;
        self.stopped = false;
        let assigned: Vec<TopicPartition> = self.assigned.iter().cloned().collect();
        // Every assigned partition resumes from its start just resolved (`resume_at`).
        self.resume(&assigned).await?;
        self.rewind_pending.store(true, Ordering::SeqCst);
        tracing::info!(partitions = assigned.len(), "new producer ready; resuming");
        Ok(())
    }

    /// Seeks the consumer to `targets`.
    async fn seek(&mut self, targets: Vec<(TopicPartition, i64)>) -> Result<(), RuntimeError> {
        if targets.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer();
        blocking(move || -> Result<(), RuntimeError> {
            let result = consumer
                .seek_partitions(to_tpl(&targets), CALL_TIMEOUT)
                .map_err(|source| kafka("seek to the committed offsets", source))?;
            for e in result.elements() {
                if let Err(source) = e.error() {
                    return Err(kafka(
                        &format!("seek {}/{}", e.topic(), e.partition()),
                        source,
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    /// Rebalance: partitions revoked (commit first) or lost (abort).
    pub(crate) async fn on_revoke(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
    ) -> Result<(), RuntimeError> {
        telemetry::revoked(&partitions, lost);
        let result = if self.stopped {
            Ok(())
        } else if lost {
            // Another member may own these partitions already; nothing of the open
            // transaction may commit.
            for p in &partitions {
                self.assigned.remove(p);
            }
            self.abort_and_rewind("partitions lost", "assignment lost")
                .await
        } else {
            self.revoke_cleanly(&partitions).await
        };
        for p in &partitions {
            self.assigned.remove(p);
            self.resume_at.remove(p);
            // Whatever happened to the commit, offsets of partitions this instance no longer
            // owns must never be committed by it.
            self.positions.remove(p);
        }
        self.publish_committed();
        result
    }

    /// Copies the committed offsets of the assigned partitions for the consumer-lag gauge,
    /// which exists only with `metrics.address`; a partition no longer assigned gets a lag of
    /// 0 here (its owner reports it now), so that a sum over the instances counts it once.
    fn publish_committed(&self) {
        if self.config.metrics_address.is_none() {
            return;
        }
        let mut view = self
            .committed_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for tp in view.keys().filter(|tp| !self.resume_at.contains_key(tp)) {
            telemetry::lag_released(tp);
        }
        view.clone_from(&self.resume_at);
    }

    async fn revoke_cleanly(&mut self, partitions: &[TopicPartition]) -> Result<(), RuntimeError> {
        let mut tally = PoisonTally::default();
        let result = {
            let mut ctx = Context::new(&mut self.outputs, &self.poison, &mut tally);
            self.processor
                .on_partitions_revoked(partitions, &mut ctx)
                .await
        };
        if let Err(e) = result {
            let err = RuntimeError::Operator {
                during: "on_partitions_revoked",
                message: e.to_string(),
            };
            return Err(self.stop(err).await);
        }
        if !self.outputs.is_empty() {
            self.begin_if_needed().await?;
            let Some(produced) = self.produce_outputs().await? else {
                return Ok(()); // aborted and rewound: nothing to commit
            };
            self.pending_out += produced;
        }
        self.commit("revoke").await
    }
}

impl Engine {
    /// Wipes the local state of `task` if it is not of state generation `reset` (set by
    /// `weir offsets reset --reset-state`): the group's offsets were moved together with an
    /// order to start the state over.
    async fn reset_task(
        &mut self,
        task: i32,
        reset: u64,
        committed: &Committed,
    ) -> Result<(), RuntimeError> {
        let offsets: BTreeMap<String, i64> = committed
            .iter()
            .filter_map(|(t, (o, _))| o.map(|o| (t.clone(), o)))
            .collect();
        let result = self
            .state_blocking(move |state| state.reset_task(task, reset, offsets))
            .await;
        if let Some(wiped) = result {
            if wiped? {
                tracing::warn!(
                    task,
                    reset,
                    "the group's offsets were reset with --reset-state: local state of this task wiped, starting over from the new offsets"
                );
            }
        }
        Ok(())
    }

    /// Recovers one task's state against the group's committed offsets, restoring from the
    /// changelog when the local copy is behind.
    async fn recover_task(&mut self, task: i32, committed: Committed) -> Result<(), RuntimeError> {
        let config = Arc::clone(&self.config);
        let observer = self.restore_observer.clone();
        let result = self
            .state_blocking(move |state| -> Result<(), RuntimeError> {
                let k: BTreeMap<String, i64> = committed
                    .iter()
                    .filter_map(|(t, (o, _))| o.map(|o| (t.clone(), o)))
                    .collect();
                let seq = committed.values().filter_map(|(_, s)| *s).max().unwrap_or(0);
                let outcome = state.recover(task, &committed)?;
                tracing::info!(task, ?outcome, "state recovery");
                let RecoveryOutcome::Behind { changelog_from } = outcome else {
                    return Ok(());
                };
                let stores: Vec<StoreSpec> = state.stores().cloned().collect();
                let mut ends = BTreeMap::new();
                for store in stores {
                    if store.changelog {
                        let from = changelog_from.get(&store.name).copied();
                        let end = restore(&config, state, &store.name, task, from, observer.as_ref())?;
                        ends.insert(store.name, end);
                    } else {
                        tracing::warn!(task, store = %store.name,
                            "local-only store is behind the committed offsets and has no changelog to restore from; it continues from its local contents");
                    }
                }
                state.finish_restore(task, k, seq, ends)?;
                Ok(())
            })
            .await;
        result.unwrap_or(Ok(()))
    }

    /// Produces the uncommitted state writes of changelog stores (the final value of each key)
    /// into the open transaction.
    async fn produce_changelog(&mut self) -> Result<bool, RuntimeError> {
        let Some(state) = &self.state else {
            return Ok(true);
        };
        let app = &self.config.application_id;
        let mut records = Vec::new();
        state.for_each_changelog_write(|store, task, key, value| {
            records.push(Output {
                topic: Some(changelog_topic(app, store)),
                partition: Some(task),
                key: Some(Bytes::copy_from_slice(key)),
                value: value.map(Bytes::copy_from_slice),
                ..Output::default()
            });
        });
        if records.is_empty() {
            return Ok(true);
        }
        self.outputs.extend(records);
        Ok(self.produce_outputs().await?.is_some())
    }

    /// The state side of a commit: per task with new offsets, its next sequence number and
    /// target offsets; and per task the metadata its committed offsets carry — the sequence
    /// number (recovery asks Kafka "did this commit happen?", DESIGN.md "Recovery") and the
    /// task's state generation, if an offset reset with --reset-state set one.
    fn state_commits(&self) -> Result<(Vec<TaskCommit>, BTreeMap<i32, String>), RuntimeError> {
        let mut commits = Vec::new();
        let mut marks = BTreeMap::new();
        let Some(state) = &self.state else {
            return Ok((commits, marks));
        };
        for (task, offsets) in by_task(&self.positions) {
            let meta = state.meta(task)?.unwrap_or_default();
            let seq = meta.seq + 1;
            marks.insert(task, Marks::format(seq, meta.reset));
            commits.push((task, seq, offsets));
        }
        Ok((commits, marks))
    }

    /// Step 3d: apply the committed delta with its offsets and changelog positions.
    async fn apply_state(&mut self, commits: Vec<TaskCommit>) -> Result<(), RuntimeError> {
        if self.state.is_none() {
            return Ok(());
        }
        let prefix = format!("{}-", self.config.application_id);
        let next: BTreeMap<(String, i32), i64> = self
            .delivery
            .take_changelog_offsets()
            .into_iter()
            .filter_map(|((topic, p), o)| {
                let store = topic.strip_prefix(&prefix)?.strip_suffix("-changelog")?;
                Some(((store.to_string(), p), o + 1))
            })
            .collect();
        match self.state_blocking(move |s| s.apply(&commits, &next)).await {
            Some(Err(e)) => Err(self.stop(e.into()).await),
            _ => {
                failpoint("after_apply");
                Ok(())
            }
        }
    }
}

/// A polled batch as runs of one task (partition number) each, in polled order: librdkafka
/// hands over a fetched partition's records together, so runs are long, and each partition's
/// records keep their order. (Regrouping the batch by task instead moved every record into a
/// fresh vector per task and batch — at 100-byte records, more of weir's time than the
/// operator's.)
fn task_runs(batch: &[Record]) -> impl Iterator<Item = &[Record]> {
    batch.chunk_by(|a, b| a.partition == b.partition)
}

fn kafka(during: &str, source: KafkaError) -> RuntimeError {
    RuntimeError::Kafka {
        during: during.to_string(),
        source: source.into(),
    }
}

fn to_tpl(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .expect("a concrete offset is always valid");
    }
    tpl
}

/// The offsets to commit, each with its task's metadata (see `Engine::state_commits`).
fn to_commit_tpl(
    offsets: &[(TopicPartition, i64)],
    marks: &BTreeMap<i32, String>,
) -> TopicPartitionList {
    let tpl = to_tpl(offsets);
    for mut e in tpl.elements() {
        if let Some(m) = marks.get(&e.partition()) {
            e.set_metadata(m.clone());
        }
    }
    tpl
}

/// Start offsets, and the marks (state commit sequence number, state generation) in each
/// committed offset's metadata.
pub(crate) type Starts = (Vec<AssignedPartition>, BTreeMap<TopicPartition, Marks>);

/// Where reading starts for each partition: the group's committed offset (read as a stable
/// offset, because the consumer is read_committed), or else `auto.offset.reset` resolved to a
/// concrete offset now — the log start for `earliest`, the last stable offset for `latest` — so
/// that records produced after the assignment are never skipped. Blocking.
pub(crate) fn resolve_starts(
    consumer: &WeirConsumer,
    group: &str,
    partitions: &[TopicPartition],
    policy: OffsetReset,
    patience: Duration,
) -> Result<Starts, RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.partition);
    }
    // A stable-offset fetch waits while a transaction that touches these offsets is open —
    // e.g. one left by a crashed member, until the broker aborts it after its
    // `transaction.timeout.ms`. That is worth waiting for, not an error.
    let deadline = std::time::Instant::now() + patience;
    let committed = loop {
        let result = consumer
            .committed_offsets(tpl.clone(), CALL_TIMEOUT)
            .and_then(
                |c| match c.elements().iter().find_map(|e| e.error().err()) {
                    Some(e) => Err(e),
                    None => Ok(c),
                },
            );
        match result {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                telemetry::transient("fetching committed offsets", &e.to_string());
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(source) => return Err(kafka("fetching the group's committed offsets", source)),
        }
    };
    let mut starts = Vec::with_capacity(partitions.len());
    let mut marks = BTreeMap::new();
    let mut missing = Vec::new();
    for e in committed.elements() {
        let partition = TopicPartition::new(e.topic(), e.partition());
        marks.insert(partition.clone(), Marks::parse(e.metadata()));
        if let Offset::Offset(o) = e.offset() {
            starts.push(AssignedPartition {
                partition,
                start_offset: o,
                start: StartFrom::Committed,
            });
            continue;
        }
        let start = match policy {
            OffsetReset::None => {
                missing.push(partition);
                continue;
            }
            OffsetReset::Earliest => StartFrom::Earliest,
            OffsetReset::Latest => StartFrom::Latest,
        };
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)
            .map_err(|source| kafka(&format!("watermarks of {partition}"), source))?;
        starts.push(AssignedPartition {
            partition,
            start_offset: if start == StartFrom::Earliest {
                low
            } else {
                high
            },
            start,
        });
    }
    if !missing.is_empty() {
        return Err(RuntimeError::NoCommittedOffset {
            group: group.to_string(),
            partitions: missing,
        });
    }
    Ok((starts, marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &Arc<str>, partition: i32, offset: i64) -> Record {
        Record {
            topic: Arc::clone(topic),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_batch_goes_to_process_as_runs_of_one_task_in_polled_order() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        // Partition 0 of two topics (one task), then partition 1, then partition 0 again.
        let batch = vec![
            record(&a, 0, 10),
            record(&b, 0, 7),
            record(&a, 0, 11),
            record(&a, 1, 3),
            record(&a, 1, 4),
            record(&a, 0, 12),
        ];
        let runs: Vec<Vec<(String, i32, i64)>> = task_runs(&batch)
            .map(|run| {
                run.iter()
                    .map(|r| (r.topic.to_string(), r.partition, r.offset))
                    .collect()
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                vec![
                    ("a".to_string(), 0, 10),
                    ("b".to_string(), 0, 7),
                    ("a".to_string(), 0, 11)
                ],
                vec![("a".to_string(), 1, 3), ("a".to_string(), 1, 4)],
                vec![("a".to_string(), 0, 12)],
            ]
        );
        assert!(task_runs(&[]).next().is_none());
    }
}
