//! The operator trait and the context it emits through.

use async_trait::async_trait;

use crate::config::{Guarantee, PoisonPolicy};
use crate::error::{BoxError, PoisonRecord, ProcessError};
use crate::record::{Header, Output, Record, TopicPartition};
use crate::state::{StateAccess, StateError, Store, StoreKey, StoreSpec};
use crate::time::{Timer, Timers};

/// An operator: user code that turns batches of input records into output records.
///
/// Only [`process`](Processor::process) is required; every hook has a no-op default.
///
/// # Call order
///
/// The runtime drives one `Processor` per application instance from one task; no two methods
/// run at the same time, so `&mut self` state needs no locking.
///
/// ```text
/// on_start
/// loop {
///     on_partitions_assigned(new partitions, with their start offsets)      (on a rebalance)
///     begin transaction                                 (exactly_once; lazily, at the first batch)
///     process(batch) ... process(batch)        (one commit interval: many batches, one transaction)
///       on_timer(timer)   (after a batch that moved stream time past an event-time timer, and
///                          whenever a processing-time timer is due: same task, same transaction)
///     commit: outputs + input offsets atomically ─┬─ ok    → on_commit
///                                                 └─ abort → on_abort; the uncommitted records
///                                                            are delivered again
///     on_partitions_revoked(partitions, ctx)     (on a rebalance; its outputs join the transaction
///                                                 that is committed before the partitions go)
/// }
/// on_close                                           (after the last commit, on SIGINT/SIGTERM)
/// ```
///
/// A batch holds records of one *task* — one partition number of the input topics — in offset
/// order per partition; its state is reachable through [`Context::store`]. Outputs go through [`Context::emit`]; they become visible to `read_committed`
/// consumers only when the transaction that carries them commits, together with the input
/// offsets of the records that produced them.
///
/// # Errors
///
/// What a returned [`ProcessError`] does is in its table: `Retriable` aborts the open transaction
/// and replays from the committed offsets, `Fatal` and `Poison` abort and stop. An error from a
/// hook stops the application (after aborting the open transaction).
///
/// # After an abort
///
/// Nothing emitted since the last commit is visible to `read_committed` consumers, ever: the
/// records are in the log but marked aborted. Every input record since the last commit is
/// delivered to `process` again. **In-memory state the operator derived from those records must
/// be dropped in [`on_abort`](Processor::on_abort)** — or kept in weir's state stores, which roll
/// back by themselves.
///
/// # Wrong, then right
///
/// ```ignore
/// // Wrong: counts survive an abort, so replayed records are counted twice.
/// async fn process(&mut self, batch: &[Record], ctx: &mut Context<'_>) -> Result<(), ProcessError> {
///     self.seen += batch.len() as u64;
///     Ok(())
/// }
///
/// // Right: keep the uncommitted part apart and settle it on commit or abort.
/// async fn process(&mut self, batch: &[Record], ctx: &mut Context<'_>) -> Result<(), ProcessError> {
///     self.pending += batch.len() as u64;
///     Ok(())
/// }
/// async fn on_commit(&mut self, _: &CommitInfo) -> Result<(), ProcessError> {
///     self.seen += std::mem::take(&mut self.pending);
///     Ok(())
/// }
/// async fn on_abort(&mut self) -> Result<(), ProcessError> {
///     self.pending = 0;
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait Processor: Send {
    /// Processes one batch, emitting outputs through `ctx`.
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError>;

    /// The state stores this operator uses, by name. Each task (input partition) gets its own
    /// copy of each store; see [`Context::store`].
    fn stores(&self) -> Vec<StoreSpec> {
        Vec::new()
    }

    /// Whether this operator schedules timers ([`Context::timers`]). If so, weir keeps them in
    /// an internal state store per task, [`TIMER_STORE`](crate::time::TIMER_STORE), with a
    /// changelog, and calls [`on_timer`](Processor::on_timer) when one is due (see
    /// [`crate::time`]).
    fn timers(&self) -> bool {
        false
    }

    /// Called when a timer is due, with the context of its task: state reads and writes and
    /// emits go into the open transaction, together with the timer's deletion. Errors are those
    /// of [`process`](Processor::process). A timer scheduled here that is already due fires in
    /// the same round.
    async fn on_timer(
        &mut self,
        _timer: &Timer,
        _ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called once before the first batch, after the producer is initialised (in exactly_once,
    /// after `init_transactions` fenced any previous incarnation of this instance).
    async fn on_start(&mut self, _info: &AppInfo) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called after partitions were assigned to this instance, before their first records.
    async fn on_partitions_assigned(
        &mut self,
        _partitions: &[AssignedPartition],
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called before partitions are taken away cleanly. Outputs emitted here are committed in
    /// the same transaction as the revoked partitions' last offsets, before they are released.
    /// Not called when the assignment is *lost* (session timeout, fencing): then the open
    /// transaction is aborted and [`on_abort`](Processor::on_abort) is called instead.
    async fn on_partitions_revoked(
        &mut self,
        _partitions: &[TopicPartition],
        _ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called after a commit succeeded: everything emitted before it is durable and visible.
    async fn on_commit(&mut self, _info: &CommitInfo) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called after the open transaction was aborted; records since the last commit will be
    /// delivered again.
    async fn on_abort(&mut self) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called once at shutdown, after the last commit.
    async fn on_close(&mut self) -> Result<(), ProcessError> {
        Ok(())
    }
}

#[async_trait]
impl<P: Processor + ?Sized> Processor for Box<P> {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        (**self).process(batch, ctx).await
    }
    fn stores(&self) -> Vec<StoreSpec> {
        (**self).stores()
    }
    fn timers(&self) -> bool {
        (**self).timers()
    }
    async fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        (**self).on_timer(timer, ctx).await
    }
    async fn on_start(&mut self, info: &AppInfo) -> Result<(), ProcessError> {
        (**self).on_start(info).await
    }
    async fn on_partitions_assigned(
        &mut self,
        partitions: &[AssignedPartition],
    ) -> Result<(), ProcessError> {
        (**self).on_partitions_assigned(partitions).await
    }
    async fn on_partitions_revoked(
        &mut self,
        partitions: &[TopicPartition],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        (**self).on_partitions_revoked(partitions, ctx).await
    }
    async fn on_commit(&mut self, info: &CommitInfo) -> Result<(), ProcessError> {
        (**self).on_commit(info).await
    }
    async fn on_abort(&mut self) -> Result<(), ProcessError> {
        (**self).on_abort().await
    }
    async fn on_close(&mut self) -> Result<(), ProcessError> {
        (**self).on_close().await
    }
}

/// Who is running: passed to [`Processor::on_start`].
#[derive(Clone, Debug)]
pub struct AppInfo {
    /// `application.id`: the consumer group and transactional-id prefix.
    pub application_id: String,
    /// This instance's stable id (persisted in the state directory).
    pub instance_id: String,
    /// The processing guarantee in force.
    pub guarantee: Guarantee,
}

/// A partition newly assigned to this instance and where reading starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignedPartition {
    /// The partition.
    pub partition: TopicPartition,
    /// The first offset that will be read.
    pub start_offset: i64,
    /// Where the start offset came from.
    pub start: StartFrom,
}

/// Why reading a partition starts where it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The group's committed offset.
    Committed,
    /// No committed offset; `auto.offset.reset = earliest`.
    Earliest,
    /// No committed offset; `auto.offset.reset = latest`.
    Latest,
}

/// What a commit carried: passed to [`Processor::on_commit`].
#[derive(Clone, Debug, Default)]
pub struct CommitInfo {
    /// Input records whose offsets this commit covers.
    pub records_in: u64,
    /// Output records it made visible.
    pub records_out: u64,
    /// The committed next offsets per partition.
    pub offsets: Vec<(TopicPartition, i64)>,
}

/// How the context handles poison records; set by the runtime from the configuration.
#[derive(Clone, Debug)]
pub struct PoisonHandling {
    /// The policy.
    pub policy: PoisonPolicy,
    /// The dead-letter topic, for [`PoisonPolicy::DeadLetter`].
    pub dead_letter_topic: Option<String>,
    /// The application id, stamped into dead-letter headers.
    pub application_id: String,
}

/// What the context saw of poison records in one call; read by the runtime afterwards.
#[derive(Debug, Default)]
pub struct PoisonTally {
    /// Records skipped under `skip`.
    pub skipped: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Late records reported with `Context::late`.
    pub late: u64,
    /// Set under `fail`: the first poison record. The runtime stops even if the operator
    /// swallowed the error `poison` returned.
    pub failed: Option<(String, i32, i64, String)>,
}

/// Header names weir puts on a dead-lettered record, next to the record's own headers.
pub mod dlq_headers {
    /// The error message.
    pub const ERROR: &str = "weir.error.message";
    /// The source topic.
    pub const TOPIC: &str = "weir.error.topic";
    /// The source partition, as decimal text.
    pub const PARTITION: &str = "weir.error.partition";
    /// The source offset, as decimal text.
    pub const OFFSET: &str = "weir.error.offset";
    /// The application that rejected it.
    pub const APPLICATION: &str = "weir.error.application.id";
}

/// The operator's handle on the running transaction: emit outputs, read and write the task's
/// state, report poison records.
pub struct Context<'a> {
    outputs: &'a mut Vec<Output>,
    poison: &'a PoisonHandling,
    tally: &'a mut PoisonTally,
    state: Option<&'a mut dyn StateAccess>,
    stream_time: Option<i64>,
    timers: bool,
    task: Option<i32>,
    /// The earliest due time of a timer scheduled through this context.
    earliest_scheduled: Option<i64>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("outputs", &self.outputs.len())
            .field("state", &self.state.is_some())
            .finish()
    }
}

impl<'a> Context<'a> {
    /// Used by the runtime (and operator unit tests): emits into `outputs`, handles poison
    /// records by `poison`, and counts them in `tally`.
    pub fn new(
        outputs: &'a mut Vec<Output>,
        poison: &'a PoisonHandling,
        tally: &'a mut PoisonTally,
    ) -> Self {
        Self {
            outputs,
            poison,
            tally,
            state: None,
            stream_time: None,
            timers: false,
            task: None,
            earliest_scheduled: None,
        }
    }

    /// Gives the context the task (input partition number) being processed.
    #[must_use]
    pub fn with_task(mut self, task: i32) -> Self {
        self.task = Some(task);
        self
    }

    /// The task being processed: the partition number of the batch's records, or of the
    /// timer's task in `on_timer`. `None` outside a task.
    pub fn task(&self) -> Option<i32> {
        self.task
    }

    /// Moves this context's stream time to `timestamp_ms` if that is later, and returns the
    /// stream time before it: call it for each record of a batch, in order, to get the stream
    /// time *before each record* (the one lateness is judged by; the windows library does).
    /// The runtime moves the task's stream time the same way after the batch.
    pub fn observe_time(&mut self, timestamp_ms: i64) -> Option<i64> {
        let before = self.stream_time;
        self.stream_time = Some(before.map_or(timestamp_ms, |t| t.max(timestamp_ms)));
        before
    }

    /// Reports that `record` arrived too late to count (its window closed: end + grace <=
    /// stream time). It is dropped and counted (`weir_late_records_total`); under `poison.policy
    /// = dead_letter` it also goes to the dead-letter topic, with `why` in its
    /// `weir.error.message` header, in the same transaction.
    pub fn late(&mut self, record: &Record, why: impl std::fmt::Display) {
        self.tally.late += 1;
        if self.poison.policy == PoisonPolicy::DeadLetter {
            self.dead_letter(record, format!("late record: {why}"));
        }
    }
    /// Gives the context its task's stream time and whether timers are enabled.
    #[must_use]
    pub fn with_time(mut self, stream_time: Option<i64>, timers: bool) -> Self {
        self.stream_time = stream_time;
        self.timers = timers;
        self
    }

    /// The task's stream time (see [`crate::time`]): in `process`, the largest record
    /// timestamp of the task before this batch; in `on_timer`, after the batch that made the
    /// timer due. `None` until the task has processed a record with a timestamp.
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// The timers of the task being processed (see [`crate::time`]). Requires
    /// [`Processor::timers`] to return `true`; otherwise (or outside a task) a
    /// [`ProcessError::Fatal`] that says so.
    pub fn timers(&mut self) -> Result<Timers<'_>, ProcessError> {
        if !self.timers {
            return Err(ProcessError::Fatal(Box::new(StateError::NoTimers)));
        }
        let access = self
            .state
            .as_deref_mut()
            .ok_or_else(|| ProcessError::Fatal(Box::new(StateError::NoTask)))?;
        Ok(Timers::new(access, &mut self.earliest_scheduled))
    }

    /// The earliest due time of the timers scheduled through this context, if any (for the
    /// runtime: where its next look for due timers must start).
    pub fn earliest_scheduled(&self) -> Option<i64> {
        self.earliest_scheduled
    }

    /// Gives the context the state of the task being processed.
    #[must_use]
    pub fn with_state(mut self, state: &'a mut dyn StateAccess) -> Self {
        self.state = Some(state);
        self
    }

    /// A typed view of the store `name` of the task being processed (a batch holds the
    /// records of one task). Reads see this task's uncommitted writes; writes commit with the
    /// transaction, or vanish with an abort.
    ///
    /// State failures (an undeclared store, a value that does not deserialize) are
    /// [`ProcessError::Fatal`], wrapping a [`StateError`].
    pub fn store<K, V>(&mut self, name: &str) -> Result<Store<'_, K, V>, ProcessError>
    where
        K: StoreKey,
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        let access = self
            .state
            .as_deref_mut()
            .ok_or_else(|| ProcessError::Fatal(Box::new(StateError::NoTask)))?;
        Ok(Store::new(name, access))
    }

    /// Emits an output record into the open transaction. It is produced after `process`
    /// returns and becomes visible when the transaction commits.
    pub fn emit(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// Emits `record` (key, value, headers) plus `weir.error.*` headers to the dead-letter
    /// topic.
    fn dead_letter(&mut self, record: &Record, message: String) {
        let topic = self
            .poison
            .dead_letter_topic
            .clone()
            .expect("validated: dead_letter requires dead.letter.topic");
        let mut headers = record.headers.clone();
        headers.extend([
            Header::new(dlq_headers::ERROR, message),
            Header::new(dlq_headers::TOPIC, record.topic.as_bytes()),
            Header::new(dlq_headers::PARTITION, record.partition.to_string()),
            Header::new(dlq_headers::OFFSET, record.offset.to_string()),
            Header::new(
                dlq_headers::APPLICATION,
                self.poison.application_id.as_bytes(),
            ),
        ]);
        self.outputs.push(Output {
            topic: Some(topic),
            partition: None,
            timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
            headers,
            input: None,
        });
    }

    /// Reports that `record` cannot be processed, and applies `poison.policy`:
    ///
    /// - `fail`: returns `Err(ProcessError::Poison)`; return it from `process`. The
    ///   application stops without committing anything at or after this record.
    /// - `skip`: logs a warning, counts it, and returns `Ok(())`: carry on with the next record.
    /// - `dead_letter`: emits the original record (key, value, headers) plus `weir.error.*`
    ///   headers to `dead.letter.topic` in the same transaction, and returns `Ok(())`.
    pub fn poison(
        &mut self,
        record: &Record,
        cause: impl Into<BoxError>,
    ) -> Result<(), ProcessError> {
        let cause: BoxError = cause.into();
        match self.poison.policy {
            PoisonPolicy::Fail => {
                if self.tally.failed.is_none() {
                    self.tally.failed = Some((
                        record.topic.to_string(),
                        record.partition,
                        record.offset,
                        cause.to_string(),
                    ));
                }
                Err(ProcessError::Poison(PoisonRecord {
                    topic: record.topic.to_string(),
                    partition: record.partition,
                    offset: record.offset,
                    cause,
                }))
            }
            PoisonPolicy::Skip => {
                tracing::warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    error = %cause,
                    "skipping poison record (poison.policy = skip)"
                );
                self.tally.skipped += 1;
                Ok(())
            }
            PoisonPolicy::DeadLetter => {
                self.dead_letter(record, cause.to_string());
                self.tally.dead_lettered += 1;
                Ok(())
            }
        }
    }
}
