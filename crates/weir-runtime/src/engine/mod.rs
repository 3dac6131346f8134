//! The engine: the operator, the producer and the open transaction — process, assign, revoke,
//! stop — driven by the loop in `app.rs` and, as a [`RebalanceListener`], by the consumer's
//! rebalance callbacks. Its two hard parts are modules of their own: [`commit`] (the commit
//! cycle, step by step, and the guarantee's [`Mode`](commit::Mode); [`overlap`] is the part of
//! an overlapped commit that runs in the background) and [`recovery`] (one function per case
//! of DESIGN.md's recovery table).
//!
//! ```text
//!   process(batch) ─ ok ─> commit::produce ─> positions[tp] = last offset + 1
//!   (first batch: commit::begin)              │
//!                                             ▼  at the commit point: CommitReason
//!                                      commit::commit ─> on_commit
//!   assign ─> recovery::recover_assignment ─> on_partitions_assigned
//!   revoke ─> on_partitions_revoked ─> commit (Revoke);  lost ─> abort_and_rewind
//! ```
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
//! - Once `stopped` is set, nothing more is produced or committed. Only a new producer
//!   ([`Engine::replace_producer`]) runs a stopped engine again.

mod commit;
mod failure;
mod overlap;
mod oversize;
mod recovery;
mod timers;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use weir_core::{
    AssignedPartition, Config, Context, Guarantee, Output, PoisonHandling, PoisonRecord,
    PoisonTally, ProcessError, Processor, Record, TimeDomain, TopicPartition,
};
use weir_state::StateManager;

use self::timers::lower_timer_floor;

use crate::changelog::RestoreObserver;
use crate::producer::{DeliveryState, WeirProducer};
use crate::rebalance::{RebalanceHandler, RebalanceListener};
use crate::stall::StallWatch;
use crate::summary::{CommitReason, RunSummary, Wait};
use crate::threads::{blocking, detached};
use crate::txn::{CALL_TIMEOUT, WATCHDOG};
use crate::{telemetry, RuntimeError};
use commit::Mode;
use failure::Health;

/// The consumer type the engine drives.
pub(crate) type WeirConsumer = BaseConsumer<RebalanceHandler<Engine>>;

/// See the module documentation.
pub(crate) struct Engine {
    config: Arc<Config>,
    instance_id: String,
    transactional_id: String,
    processor: Box<dyn Processor>,
    producer: Arc<WeirProducer>,
    delivery: Arc<DeliveryState>,
    consumer: Weak<WeirConsumer>,
    poison: PoisonHandling,
    /// How transactions commit, with what only that needs (the spare producer, the commit in
    /// the background).
    mode: Mode,
    health: Health,

    /// Whether a transaction is open on `producer`.
    txn_open: bool,
    /// When the current commit interval began.
    period_started: Instant,
    /// When the last in-line commit started: the next transaction's period starts there if it
    /// begins within an interval of it (see `begin`).
    next_period: Option<Instant>,
    positions: BTreeMap<TopicPartition, i64>,
    pending_in: u64,
    pending_out: u64,
    outputs: Vec<Output>,
    consecutive_failures: u32,

    /// RocksDB state, when the operator declares stores. Moved out while a blocking call
    /// (prepare, apply, restore) runs on the blocking pool.
    state: Option<StateManager>,
    /// Whether the operator declared any store (`state` is `None` while it is moved out).
    stateful: bool,
    /// Set while the open transaction is aborted with the previous one still committing in the
    /// background (`await_committing`): the state's committing layer stays for its outcome.
    commit_in_flight: bool,
    /// Told how restores progress (`App::on_restore_progress`).
    restore_observer: Option<RestoreObserver>,

    /// Partitions currently assigned to this instance.
    assigned: BTreeSet<TopicPartition>,
    /// Per assigned partition, where reading resumes after an abort: the start offset resolved
    /// at assignment, then every committed offset. Rewinding never asks `auto.offset.reset`
    /// again (the log may have moved since).
    resume_at: BTreeMap<TopicPartition, i64>,
    /// A copy of `resume_at` (the committed offsets of the assigned partitions) for the
    /// consumer-lag gauge, which librdkafka's statistics callback computes.
    committed_view: Arc<StdMutex<BTreeMap<TopicPartition, i64>>>,
    /// Set by an abort: every assigned partition must be seeked back before the next record is
    /// processed (see "Rewinds" above).
    rewind_pending: Arc<AtomicBool>,
    /// An error raised inside a rebalance callback, for the main loop to return.
    failure: Option<RuntimeError>,
    /// Set once the application is stopping with an error: nothing more is committed.
    stopped: bool,
    /// Totals for the run summary.
    totals: RunSummary,
    /// Producer replacements since the last successful commit (see `replace_producer`).
    replacements_in_a_row: u32,
    /// When the first of those replacements began.
    failing_since: Option<Instant>,
    /// Whether the instance can commit what it processed (see `stall.rs`).
    stall: Arc<StallWatch>,
    /// The largest output each topic accepts (see `oversize.rs`).
    limits: oversize::Limits,

    /// Whether the operator schedules timers (`Processor::timers`; see `timers.rs`).
    timers: bool,
    /// Per assigned partition, its time: the largest record timestamp processed (uncommitted
    /// work included). A task's stream time is the largest of its partitions'.
    times: BTreeMap<TopicPartition, i64>,
    /// The times as last committed (in the offsets' metadata): what `times` goes back to on an
    /// abort, so that replayed records see the stream time they saw the first time.
    resume_time: BTreeMap<TopicPartition, i64>,
    /// When processing-time timers were last looked for.
    timers_checked: Instant,
    /// Per task and clock: every timer due before this time has fired (in the open
    /// transaction, or before it), so the next look for due timers starts here instead of
    /// stepping over the tombstones of every timer that ever fired. Lowered when one is
    /// scheduled earlier; forgotten on an abort (the fired timers' deletions are undone) and
    /// with the task.
    timer_floor: BTreeMap<(i32, TimeDomain), i64>,
    /// Timestamp extractors, by input topic (`App::timestamp_extractor`).
    extractors: BTreeMap<String, weir_core::time::TimestampExtractor>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("transactional_id", &self.transactional_id)
            .field("mode", &self.mode)
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
        let timers = processor.timers();
        let mode = match config.guarantee {
            Guarantee::ExactlyOnce => Mode::InLine,
            Guarantee::AtLeastOnce => Mode::AtLeastOnce,
        };
        Self {
            instance_id,
            transactional_id,
            processor,
            producer,
            delivery,
            consumer: Weak::new(),
            poison,
            mode,
            health: Health::Healthy,
            txn_open: false,
            period_started: Instant::now(),
            next_period: None,
            positions: BTreeMap::new(),
            pending_in: 0,
            pending_out: 0,
            outputs: Vec::new(),
            consecutive_failures: 0,
            stateful: state.is_some(),
            commit_in_flight: false,
            state,
            restore_observer: None,
            assigned: BTreeSet::new(),
            resume_at: BTreeMap::new(),
            committed_view: Arc::default(),
            rewind_pending: Arc::new(AtomicBool::new(false)),
            failure: None,
            stopped: false,
            totals: RunSummary::default(),
            replacements_in_a_row: 0,
            failing_since: None,
            limits: oversize::Limits::default(),
            timers,
            times: BTreeMap::new(),
            resume_time: BTreeMap::new(),
            timers_checked: Instant::now(),
            timer_floor: BTreeMap::new(),
            extractors: BTreeMap::new(),
            stall: Arc::new(StallWatch::new(
                config.transaction_timeout.max(2 * config.commit_interval),
            )),
            config,
        }
    }

    /// `commit.overlap`: the second transactional producer.
    pub(crate) fn set_spare(&mut self, spare: Arc<WeirProducer>) {
        if matches!(self.mode, Mode::InLine) {
            self.mode = Mode::Overlapped {
                spare: Some(spare),
                committing: None,
            };
        }
    }

    /// The output size limits read from the broker at start-up.
    pub(crate) fn set_limits(&mut self, topics: BTreeMap<String, usize>) {
        self.limits = oversize::Limits::new(&self.config, topics);
    }

    pub(crate) fn set_consumer(&mut self, consumer: &Arc<WeirConsumer>) {
        self.consumer = Arc::downgrade(consumer);
    }

    pub(crate) fn set_restore_observer(&mut self, observer: Option<RestoreObserver>) {
        self.restore_observer = observer;
    }

    /// What the rebalance handler shares with the engine: the pending-rewind flag and the
    /// committed offsets (for the lag gauge).
    pub(crate) fn shared_with_handler(
        &self,
    ) -> (
        Arc<AtomicBool>,
        Arc<StdMutex<BTreeMap<TopicPartition, i64>>>,
    ) {
        (
            Arc::clone(&self.rewind_pending),
            Arc::clone(&self.committed_view),
        )
    }

    /// The stall watch, for its once-a-second check (`stall::watch`).
    pub(crate) fn stall_watch(&self) -> &Arc<StallWatch> {
        &self.stall
    }

    /// A transient error: the stall watch counts it.
    pub(crate) fn trouble(&self) {
        self.stall.trouble(Instant::now());
    }

    /// The partitions with processed, uncommitted work (their position past the committed
    /// offset): what an abort now would leave them owing (see `stall.rs`).
    pub(super) fn owed_partitions(&self) -> Vec<TopicPartition> {
        self.positions
            .iter()
            .filter(|(tp, p)| self.resume_at.get(*tp).is_none_or(|c| *p > c))
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// An error a rebalance callback parked, if any.
    pub(crate) fn take_failure(&mut self) -> Option<RuntimeError> {
        self.failure.take()
    }

    pub(crate) fn totals(&self) -> &RunSummary {
        &self.totals
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
        !matches!(self.mode, Mode::AtLeastOnce)
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

    /// Runs the operator on one batch and produces its outputs (steps 1 and 2 of the commit
    /// cycle, `commit::begin` and `commit::produce`); then fires the event-time timers the
    /// batch made due (`timers.rs`).
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
        self.begin().await?;
        let mut tally = PoisonTally::default();
        let mut result = Ok(());
        // One call per run of one task's records, in polled order (see `task_runs`).
        for task_batch in task_runs(batch) {
            let task = task_batch[0].partition;
            let first = self.outputs.len();
            let stream_time = self.stream_time(task);
            let ctx = Context::new(&mut self.outputs, &self.poison, &mut tally)
                .with_time(stream_time, self.timers)
                .with_task(task);
            // A panic in the operator is a fatal operator error (the open transaction is
            // aborted, nothing of it is committed), not a crash of the runtime's task.
            let run = match self.state.as_mut() {
                Some(state) => {
                    let mut access = state.access(task);
                    let mut ctx = ctx.with_state(&mut access);
                    let run = AssertUnwindSafe(self.processor.process(task_batch, &mut ctx))
                        .catch_unwind()
                        .await;
                    if let Some(due) = ctx.earliest_scheduled() {
                        lower_timer_floor(&mut self.timer_floor, task, due);
                    }
                    run
                }
                None => {
                    let mut ctx = ctx;
                    AssertUnwindSafe(self.processor.process(task_batch, &mut ctx))
                        .catch_unwind()
                        .await
                }
            };
            result = run.unwrap_or_else(|panic| {
                let at = task_batch[0].coordinates();
                Err(ProcessError::fatal(format!(
                    "the operator panicked on the batch starting at {at}: {}",
                    panic_message(&*panic)
                )))
            });
            if result.is_ok() {
                result = match self.police_oversize(task_batch, first, &mut tally) {
                    Ok(policed) => policed,
                    Err(e) => return Err(self.stop(e).await),
                };
            }
            if result.is_ok() {
                self.advance_time(task_batch);
                result = match self.fire_event_timers(task, &mut tally).await {
                    Ok(fired) => fired,
                    Err(e) => return Err(self.stop(e).await),
                };
            }
            if result.is_err() {
                break;
            }
        }
        match self.tallied(result, tally) {
            Ok(()) => {
                let Some(produced) = self.produce().await? else {
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
                self.stall.processed(records as u64);
                telemetry::batch(records, produced as usize);
                Ok(())
            }
            Err(e) => {
                self.failed_processing(e, "process", batch[0].coordinates())
                    .await
            }
        }
    }

    /// Counts what the context saw of poison records, and turns the operator's result into the
    /// one that counts: under `fail`, a poison record stops the application even if the
    /// operator swallowed the error that `Context::poison` returned.
    fn tallied(
        &mut self,
        result: Result<(), ProcessError>,
        mut tally: PoisonTally,
    ) -> Result<(), ProcessError> {
        telemetry::poison(tally.skipped, tally.dead_lettered, tally.late);
        self.totals.late += tally.late;
        self.totals.skipped += tally.skipped;
        self.totals.dead_lettered += tally.dead_lettered;
        match (result, tally.failed.take()) {
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
        }
    }

    /// What an operator's error does (its table in `ProcessError`): `Retriable` aborts and
    /// replays (until `processing.retries` is exhausted), `Fatal` and `Poison` stop. `during`
    /// names the hook, `position` where it was (a record's coordinates, or a timer).
    async fn failed_processing(
        &mut self,
        error: ProcessError,
        during: &'static str,
        position: String,
    ) -> Result<(), RuntimeError> {
        match error {
            ProcessError::Retriable(e) => {
                self.consecutive_failures += 1;
                let attempts = self.consecutive_failures;
                let message = e.to_string();
                if attempts > self.config.processing_retries {
                    let err = RuntimeError::RetriesExhausted {
                        attempts,
                        retries: self.config.processing_retries,
                        position,
                        message,
                    };
                    return Err(self.stop(err).await);
                }
                self.abort_and_rewind(during, &message).await?;
                let backoff = Duration::from_millis(100 * (1 << (attempts - 1).min(6)));
                telemetry::retrying(during, &message, attempts, backoff);
                tokio::time::sleep(backoff).await;
                Ok(())
            }
            ProcessError::Fatal(e) => {
                let err = RuntimeError::Operator {
                    during,
                    message: e.to_string(),
                };
                Err(self.stop(err).await)
            }
            ProcessError::Poison(p) => Err(self.stop(RuntimeError::Poison(p)).await),
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

    /// After a batch is processed: moves the position of each assigned partition to where the
    /// consumer stands once it had polled that batch (`ends`, see `poll::Polled::ends`), when
    /// that is further than the last record processed — the consumer read over transaction
    /// markers (or aborted records) that the application never sees. So when all input is
    /// processed the committed offsets step over a trailing marker and the lag is 0, on input
    /// written in transactions too (Kafka Streams did the same for KAFKA-6607). Every record
    /// before `ends` was in this batch or an earlier one, so this never commits past a record
    /// not yet processed. Nothing moves after an abort (a rewind is pending) or a stop.
    pub(crate) async fn step_over_markers(
        &mut self,
        ends: &[(TopicPartition, i64)],
    ) -> Result<(), RuntimeError> {
        if self.stopped || self.rewind_pending.load(Ordering::SeqCst) {
            return Ok(());
        }
        let further: Vec<(TopicPartition, i64)> = ends
            .iter()
            .filter(|(tp, end)| {
                self.assigned.contains(tp)
                    && self
                        .positions
                        .get(tp)
                        .or_else(|| self.resume_at.get(tp))
                        .is_some_and(|known| end > known)
            })
            .cloned()
            .collect();
        if further.is_empty() {
            return Ok(());
        }
        // Markers only: an offsets-only transaction (or offset commit) at the commit point.
        self.begin().await?;
        self.positions.extend(further);
        Ok(())
    }

    /// Moves the position of `record`'s partition to `next`, unless it is already past it.
    fn advance(&mut self, record: &Record, next: i64) {
        let tp = TopicPartition::new(&*record.topic, record.partition);
        let position = self.positions.entry(tp).or_insert(next);
        *position = (*position).max(next);
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

    /// Stops for good (nothing more is committed): aborts the open transaction (best effort)
    /// and returns `error`.
    pub(crate) async fn stop(&mut self, error: RuntimeError) -> RuntimeError {
        self.halt().await;
        error
    }

    /// Sets `stopped` and drops the uncommitted work: a background commit is let end either
    /// way, the open transaction is aborted (best effort: the broker aborts it after
    /// `transaction.timeout.ms`, or this instance's next `init_transactions` does), and the
    /// uncommitted state is dropped.
    async fn halt(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.let_background_commit_end().await;
        if self.txn_open && self.health != Health::Stuck {
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
        // The outcome of a commit in flight is Kafka's to tell: its pending entry stays for
        // recovery (the next assignment's, or the next start's).
        if let Some(Err(e)) = self.state_blocking(StateManager::forget).await {
            tracing::warn!(error = %e, "could not drop the uncommitted state while stopping; recovery rolls it back");
        }
    }

    /// Rebalance: partitions assigned. Recovers each one's start (and its task's state) and
    /// tells the operator.
    pub(crate) async fn on_assign(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<AssignedPartition>, RuntimeError> {
        if self.stateful && (self.txn_open || self.mode.committing().is_some()) {
            // A restore may take longer than the transaction timeout: commit the work of the
            // partitions kept so far before it starts (an incremental assignment), and settle a
            // commit in the background before recovery reads the state.
            self.commit(CommitReason::Assign).await?;
        }
        let starts = self.recover_assignment(&partitions).await?;
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
            self.totals.assignments_lost += 1;
            self.abort_and_rewind("partitions lost", "assignment lost")
                .await
        } else {
            self.revoke_cleanly(&partitions).await
        };
        for p in &partitions {
            self.assigned.remove(p);
            self.resume_at.remove(p);
            self.times_revoked(p);
            // Whatever happened to the commit, offsets of partitions this instance no longer
            // owns must never be committed by it.
            self.positions.remove(p);
        }
        self.stall.released(&partitions);
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
            self.begin().await?;
            let Some(produced) = self.produce().await? else {
                return Ok(()); // aborted and rewound: nothing to commit
            };
            self.pending_out += produced;
        }
        self.commit(CommitReason::Revoke).await
    }
}

impl RebalanceListener for Engine {
    async fn assigned(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<AssignedPartition>, RuntimeError> {
        self.on_assign(partitions).await
    }

    async fn revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
    ) -> Result<(), RuntimeError> {
        self.on_revoke(partitions, lost).await
    }

    async fn rewind(&mut self) -> Result<bool, RuntimeError> {
        self.rewind_now().await
    }

    fn park(&mut self, error: RuntimeError) {
        self.failure.get_or_insert(error);
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
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

pub(crate) fn to_tpl(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .expect("a concrete offset is always valid");
    }
    tpl
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
