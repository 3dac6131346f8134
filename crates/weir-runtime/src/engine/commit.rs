//! The commit cycle (DESIGN.md, "The commit cycle"): its steps are the functions below, in
//! order.
//!
//! ```text
//!   begin ─> produce (each batch's outputs) ─> ... ─> at the commit point (CommitReason):
//!       changelog ─> prepare ─> send_offsets ─> commit_txn ─> apply      (exactly_once)
//!       changelog ─> flush, commit offsets ─> apply                     (at_least_once)
//!   on a failure (txn::Failure): abort_and_rewind, or stop
//! ```
//!
//! | step | what | fn |
//! |---|---|---|
//! | begin | `begin_transaction` (local to the client) | [`Engine::begin`] |
//! | produce | the operator's outputs into the transaction | [`Engine::produce`] |
//! | changelog | the final value of each written key, to the task's changelog partition | [`Engine::changelog`] |
//! | prepare | the state delta and its target offsets, durable, as a pending entry: written on the state's writer thread while the next steps go on | [`Engine::prepare`] |
//! | send offsets | `send_offsets_to_transaction(positions, group metadata)` (EOS v2) | [`Engine::send_offsets`] |
//! | commit | every output acknowledged and the prepare durable, then `commit_transaction`: Kafka decides | [`Engine::commit_txn`] |
//! | apply | state + offsets (R = K) in one atomic write; the pending entry goes | [`Engine::apply`] |
//! | abort / rewind | abort, drop the uncommitted work, seek back to the committed offsets | [`Engine::abort_and_rewind`] |
//!
//! # The mode
//!
//! How transactions commit is one [`Mode`], which owns what only it needs: in line (each
//! transaction commits before the next begins), overlapped (`commit.overlap`, exactly_once:
//! transaction n commits in the background on one producer while n+1 fills on the spare, once
//! n's outputs are acknowledged, so that each output partition keeps its input order, and with
//! n's state prepared and frozen under n+1's; commits complete in order and a failed one aborts
//! the next too), or at_least_once (no transactions: offsets commit after every output is
//! acknowledged).
//!
//! The overlapped commit's part that runs on the other producer is in `overlap.rs`. Every
//! transactional call goes through the `txn` module's one policy; a call's [`Failed`] outcome
//! takes [`Engine::on_failure`], its one path.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::TopicPartitionList;
use weir_core::{Bytes, CommitInfo, Output, TopicPartition};
use weir_state::{changelog_topic, Marks, Prepared, StateManager, TaskCommit};

use super::overlap::Committing;
use super::{to_tpl, Engine, Health};
use crate::failpoint::{failpoint, failpoint_error};
use crate::producer::{drain, WeirProducer};
use crate::summary::{CommitReason, Wait};
use crate::threads::blocking;
use crate::txn::{self, Failed, Failure, CALL_TIMEOUT, WATCHDOG};
use crate::{telemetry, RuntimeError};

/// Input offsets of a commit, per partition: the offset after the last record processed.
pub(crate) type Offsets = Vec<(TopicPartition, i64)>;

/// Per (store, task): the changelog offset after a transaction's last record there.
pub(crate) type ChangelogNext = BTreeMap<(String, i32), i64>;

/// A transaction's state side from its commit point on: what each task commits, the marks its
/// offsets carry, and its prepare, under way on the state's writer thread (`None` without
/// state or tasks to commit).
pub(super) struct Prepare {
    pub(super) commits: Vec<TaskCommit>,
    pub(super) marks: BTreeMap<i32, Marks>,
    pub(super) written: Option<Prepared>,
}

impl Prepare {
    /// Waits until the prepare is durable (a blocking call: on the blocking pool, or a
    /// background commit's thread).
    pub(super) fn wait(written: Option<Prepared>) -> Result<(), weir_state::StateStoreError> {
        if let Some(p) = written {
            let path = p.path().to_path_buf();
            p.wait()?;
            if failpoint_error("prepare") {
                return Err(weir_state::StateStoreError::Rocks {
                    path,
                    message: "preparing a commit: failed by WEIR_FAILPOINT_ERROR".into(),
                });
            }
            failpoint("after_prepare");
        }
        Ok(())
    }
}

/// How transactions commit (see the module documentation).
#[derive(Debug)]
pub(crate) enum Mode {
    /// exactly_once: each transaction commits before the next begins.
    InLine,
    /// exactly_once with `commit.overlap`.
    Overlapped {
        /// The producer not in use: the next transaction's. `None` while a transaction commits
        /// in the background, on it (in `committing`).
        spare: Option<Arc<WeirProducer>>,
        /// The transaction committing in the background, on the producer that is not current.
        /// It is settled before anything else commits or aborts.
        committing: Option<Committing>,
    },
    /// at_least_once: no transactions.
    AtLeastOnce,
}

impl Mode {
    pub(super) fn committing(&self) -> Option<&Committing> {
        match self {
            Mode::Overlapped { committing, .. } => committing.as_ref(),
            _ => None,
        }
    }

    pub(super) fn take_committing(&mut self) -> Option<Committing> {
        match self {
            Mode::Overlapped { committing, .. } => committing.take(),
            _ => None,
        }
    }

    /// Makes `producer` the spare again, returning the one it replaces.
    pub(super) fn put_spare(&mut self, producer: Arc<WeirProducer>) -> Option<Arc<WeirProducer>> {
        match self {
            Mode::Overlapped { spare, .. } => spare.replace(producer),
            _ => Some(producer),
        }
    }
}

impl Engine {
    /// Whether the commit interval has elapsed with work pending (or the state's
    /// uncommitted-bytes bound is reached).
    pub(crate) fn commit_due(&self) -> bool {
        let pending = self.txn_open || !self.positions.is_empty();
        let state_full = self
            .state
            .as_ref()
            .is_some_and(|s| s.uncommitted_bytes() >= self.config.state_max_uncommitted_bytes);
        pending && (state_full || self.period_started.elapsed() >= self.config.commit_interval)
    }

    /// Step 1: `begin_transaction`, when none is open (exactly_once); at_least_once starts a
    /// commit period.
    pub(super) async fn begin(&mut self) -> Result<(), RuntimeError> {
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
            .map_err(|e| self.fatal("begin_transaction", e))?;
        self.txn_open = true;
        // A transaction that begins within an interval of the last in-line commit's start
        // counts its period from there: commits come every `commit.interval.ms`, not every
        // interval plus the commit's own time (0.118 s apart at 0.1 s before 2026-12-05, which
        // a window result or any output waited for on top).
        self.period_started = self
            .next_period
            .take()
            .filter(|s| s.elapsed() < self.config.commit_interval)
            .unwrap_or_else(Instant::now);
        Ok(())
    }

    /// Step 2: hands the buffered outputs to the producer (waiting while its queue is full).
    /// Returns `None` when the transaction had to be aborted instead (the work is replayed).
    pub(super) async fn produce(&mut self) -> Result<Option<u64>, RuntimeError> {
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
            let mut refreshed = false;
            loop {
                match self.producer.produce(topic, &mut out) {
                    Ok(()) => break,
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))
                        if !refreshed =>
                    {
                        // The topic may have grown since the producer last fetched its metadata
                        // (partitions added while running): fetch it once, then try again.
                        refreshed = true;
                        let producer = Arc::clone(&self.producer);
                        let name = topic.to_string();
                        let _ = blocking(move || {
                            producer
                                .client()
                                .fetch_metadata(Some(&name), Duration::from_secs(10))
                                .map(drop)
                        })
                        .await;
                    }
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
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                        // Larger than the producer's message.max.bytes: refused before sending.
                        let size = out.key.as_ref().map_or(0, |k| k.len())
                            + out.value.as_ref().map_or(0, |v| v.len());
                        result = Err(RuntimeError::TooLarge {
                            topic: topic.to_string(),
                            detail: format!(
                                "{}: a record of {size} bytes",
                                out.partition
                                    .map_or("the key's partition".to_string(), |p| format!(
                                        "partition {p}"
                                    ))
                            ),
                        });
                        break;
                    }
                    Err(source) if source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                        result = Err(self.fatal("produce", source));
                        break;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))
                        if self.is_changelog(topic) =>
                    {
                        // A task its changelog has no partition for: the input grew.
                        result = Err(RuntimeError::Changelog {
                            topic: topic.to_string(),
                            problem: format!(
                                "has no partition {} for task {}: partitions were added to the \
                                 input while the application ran, which moves keys to other \
                                 tasks than their state. Run the application on a new input \
                                 topic, or reset its state and offsets together (`weir offsets \
                                 reset --reset-state`)",
                                out.partition.unwrap_or(-1),
                                out.partition.unwrap_or(-1)
                            ),
                        });
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

    /// Whether `topic` is the changelog of one of the state stores.
    fn is_changelog(&self, topic: &str) -> bool {
        self.state.as_ref().is_some_and(|s| {
            s.stores()
                .filter(|st| st.changelog)
                .any(|st| changelog_topic(&self.config.application_id, &st.name) == topic)
        })
    }

    /// The commit point. Overlapped, an interval commit goes on in the background while the
    /// next transaction fills on the spare producer; every other commit completes before this
    /// returns.
    pub(crate) async fn commit(&mut self, reason: CommitReason) -> Result<(), RuntimeError> {
        if self.stopped {
            return Ok(());
        }
        if !self.settle_committing().await? {
            return Ok(());
        }
        let overlap = matches!(&self.mode, Mode::Overlapped { spare: Some(_), .. });
        let mut prepared = None;
        if overlap && reason == CommitReason::Interval && self.txn_open {
            // Step 3 first: the changelog records are outputs of this transaction too.
            if !self.changelog().await? {
                return Ok(());
            }
            failpoint("after_produce");
            // The prepare's write goes on while the outputs drain.
            let prepare = self.prepare().await?;
            // The next transaction's outputs may go out only once every output of this one is
            // written, so that each output partition keeps the order of its inputs. If the
            // producer cannot drain now, the commit takes the in-line path. (Holding the next
            // transaction's outputs in memory instead, so that the main loop never waits here,
            // was measured on 2026-11-27: no gain, 45 MiB more RSS; see docs/benchmarks.md.)
            let producer = Arc::clone(&self.producer);
            if blocking(move || drain(&producer)).await {
                return self.commit_in_background(reason, prepare).await;
            }
            prepared = Some(prepare);
        }
        let started = Instant::now();
        let committed = match self.mode {
            Mode::AtLeastOnce => self.commit_offsets().await?,
            Mode::InLine | Mode::Overlapped { .. } => self.commit_in_line(prepared).await?,
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

    /// Steps 3–7 in line (steps 3 and 5 unless `prepared`: they were taken already). Returns
    /// the committed offsets, or `None` when nothing was open (or the transaction had to be
    /// aborted, in which case the work is replayed).
    async fn commit_in_line(
        &mut self,
        prepared: Option<Prepare>,
    ) -> Result<Option<Offsets>, RuntimeError> {
        if !self.txn_open {
            return Ok(None);
        }
        let offsets = self.position_list();
        self.check_forward(&offsets);
        let prepare = match prepared {
            Some(prepare) => prepare,
            None => {
                if !self.changelog().await? {
                    return Ok(None);
                }
                failpoint("after_produce");
                self.prepare().await?
            }
        };
        let Prepare {
            commits,
            marks,
            written,
        } = prepare;
        if !self.send_offsets(&offsets, &marks).await? {
            return Ok(None);
        }
        if !self.commit_txn(written).await? {
            return Ok(None);
        }
        self.txn_open = false;
        let changelog_next = self.changelog_next();
        self.offsets_committed(commits, changelog_next).await?;
        Ok(Some(offsets))
    }

    /// The offsets are committed (in the transaction, or to the group): they are where
    /// reading resumes, the lag gauge learns them, and the state applies (step 7).
    async fn offsets_committed(
        &mut self,
        commits: Vec<TaskCommit>,
        changelog_next: ChangelogNext,
    ) -> Result<(), RuntimeError> {
        let times = self.times_of(&self.position_list());
        self.times_committed(times);
        self.resume_at
            .extend(self.positions.iter().map(|(tp, o)| (tp.clone(), *o)));
        self.positions.clear();
        self.publish_committed();
        self.apply(commits, changelog_next).await?;
        self.delivery.reset();
        Ok(())
    }

    /// Step 3: the uncommitted state writes of changelog stores (the final value of each key)
    /// into the open transaction. Returns `false` when the transaction was aborted instead.
    async fn changelog(&mut self) -> Result<bool, RuntimeError> {
        let Some(state) = &self.state else {
            return Ok(true);
        };
        let app = &self.config.application_id;
        let producer = &self.producer;
        let outputs = &mut self.outputs;
        let before = outputs.len();
        // The writes come store by store: the topic's name is made once per store.
        let mut topic: Option<(String, String)> = None;
        // Each record goes to librdkafka straight from the state's layer. From the first one
        // it refuses (its queue full, the transaction in an abortable state, ...) on, the rest
        // take the outputs' path, which waits, aborts or stops as each error asks.
        let mut refused = false;
        state.for_each_changelog_write(|store, task, key, value| {
            if topic.as_ref().is_none_or(|(s, _)| s != store) {
                topic = Some((store.to_string(), changelog_topic(app, store)));
            }
            let name = topic.as_ref().map_or("", |(_, name)| name);
            if !refused {
                match producer.produce_copy(name, task, key, value) {
                    Ok(()) => return,
                    Err(_) => refused = true,
                }
            }
            outputs.push(Output {
                topic: Some(name.to_string()),
                partition: Some(task),
                key: Some(Bytes::copy_from_slice(key)),
                value: value.map(Bytes::copy_from_slice),
                ..Output::default()
            });
        });
        if outputs.len() == before {
            return Ok(true);
        }
        Ok(self.produce().await?.is_some())
    }

    /// Step 4: the input offsets join the transaction, with the group's generation, so that a
    /// zombie of this group member is fenced (EOS v2). Returns `false` when aborted instead.
    async fn send_offsets(
        &mut self,
        offsets: &Offsets,
        marks: &BTreeMap<i32, Marks>,
    ) -> Result<bool, RuntimeError> {
        if offsets.is_empty() {
            return Ok(true);
        }
        let tpl = Arc::new(to_commit_tpl(offsets, marks, &self.times_of(offsets)));
        let group = Arc::new(self.group_metadata().await?);
        let sent = txn::call("send_offsets_to_transaction", &self.producer, move |p| {
            p.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)
        })
        .await;
        if let Err(failed) = sent {
            return self.on_failure(failed).await;
        }
        failpoint("after_send_offsets");
        Ok(true)
    }

    /// Step 5: prepare — the transaction's writes become the state's committing layer, and
    /// their delta with its target offsets goes to the state's writer thread as a synced
    /// pending entry (`StateManager::prepare`), which must be durable before Kafka decides
    /// ([`Prepare::wait`], before `commit_transaction`). Meanwhile the offsets are sent and the
    /// outputs drain.
    pub(super) async fn prepare(&mut self) -> Result<Prepare, RuntimeError> {
        let (commits, marks) = self.state_commits()?;
        let written = match self.state.as_mut() {
            Some(state) if !commits.is_empty() => match state.prepare(&commits) {
                Ok(written) => Some(written),
                Err(e) => return Err(self.stop(e.into()).await),
            },
            Some(state) => {
                state.freeze();
                None
            }
            None => None,
        };
        Ok(Prepare {
            commits,
            marks,
            written,
        })
    }

    /// Step 6: `commit_transaction` once every output is acknowledged and the prepare is
    /// durable — Kafka is the commit point: outputs, offsets and changelog records become
    /// visible together. Returns `false` when aborted instead.
    async fn commit_txn(&mut self, prepared: Option<Prepared>) -> Result<bool, RuntimeError> {
        if prepared.is_some() {
            let producer = Arc::clone(&self.producer);
            let durable = blocking(move || {
                drain(&producer);
                Prepare::wait(prepared)
            })
            .await;
            if let Err(e) = durable {
                return Err(self.stop(e.into()).await);
            }
        }
        let committed = txn::call("commit_transaction", &self.producer, |p| {
            drain(p);
            p.commit_transaction(CALL_TIMEOUT)
        })
        .await;
        if let Err(failed) = committed {
            return self.on_failure(failed).await;
        }
        failpoint("after_commit_transaction");
        Ok(true)
    }

    /// Per store and task, the changelog offset after the last record this transaction wrote
    /// there (taken from the delivery reports: call it once the transaction's outputs are all
    /// acknowledged, before the next one produces).
    pub(super) fn changelog_next(&self) -> ChangelogNext {
        if !self.stateful {
            return ChangelogNext::new();
        }
        let prefix = format!("{}-", self.config.application_id);
        self.delivery
            .take_changelog_offsets()
            .into_iter()
            .filter_map(|((topic, p), o)| {
                let store = topic.strip_prefix(&prefix)?.strip_suffix("-changelog")?;
                Some(((store.to_string(), p), o + 1))
            })
            .collect()
    }

    /// Step 7: apply — the committed delta with its offsets and changelog positions.
    pub(super) async fn apply(
        &mut self,
        commits: Vec<TaskCommit>,
        next: ChangelogNext,
    ) -> Result<(), RuntimeError> {
        if self.state.is_none() {
            return Ok(());
        }
        match self.state_blocking(move |s| s.apply(&commits, &next)).await {
            Some(Err(e)) => Err(self.stop(e.into()).await),
            _ => {
                failpoint("after_apply");
                Ok(())
            }
        }
    }

    /// Records a commit: metrics, totals, and the operator's `on_commit`.
    pub(super) async fn committed(
        &mut self,
        reason: CommitReason,
        started: Instant,
        records_in: u64,
        records_out: u64,
        offsets: Offsets,
    ) -> Result<(), RuntimeError> {
        let info = CommitInfo {
            records_in,
            records_out,
            offsets,
        };
        telemetry::committed(
            reason.as_str(),
            started.elapsed(),
            info.records_in,
            info.records_out,
        );
        self.totals.commits += 1;
        self.replacements_in_a_row = 0;
        self.failing_since = None;
        if let Some(resumed) = self.stall.committed(Instant::now()) {
            self.stall.report(resumed);
        }
        self.totals.records_in += info.records_in;
        self.totals.records_out += info.records_out;
        self.consecutive_failures = 0;
        if self.mode.committing().is_none() && !self.txn_open {
            self.period_started = Instant::now();
            self.next_period = Some(started);
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

    /// at_least_once: the changelog, every output acknowledged, then the offsets committed to
    /// the group, then apply.
    async fn commit_offsets(&mut self) -> Result<Option<Offsets>, RuntimeError> {
        if self.positions.is_empty() && self.pending_out == 0 {
            return Ok(None);
        }
        if !self.changelog().await? {
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
        if let Some((failed, first)) = self.delivery.failures() {
            return Err(self.stop(RuntimeError::Delivery { failed, first }).await);
        }
        let offsets = self.position_list();
        if offsets.is_empty() {
            // Only outputs of a revoke hook were pending: acknowledged, nothing to commit.
            self.delivery.reset();
            return Ok(Some(offsets));
        }
        let tpl = to_commit_tpl(&offsets, &marks, &self.times_of(&offsets));
        let consumer = self.consumer();
        match blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
            Ok(()) => {
                // Nothing was written since the changelog went out: these are the writes the
                // offsets commit.
                if let Some(state) = self.state.as_mut() {
                    state.freeze();
                }
                let changelog_next = self.changelog_next();
                self.offsets_committed(commits, changelog_next).await?;
                Ok(Some(offsets))
            }
            Err(e) => {
                // Not fatal: the outputs are acknowledged, and the positions stay to be
                // committed next time (or the records are reprocessed: at-least-once).
                telemetry::transient("commit offsets", &e.to_string());
                self.trouble();
                Ok(None)
            }
        }
    }

    /// The one path of a failed transactional call (see `txn`): abortable → abort and rewind,
    /// `Ok(false)`; fatal or stuck → stop (the main loop replaces a producer that a new one
    /// heals, see `Engine::producer_failed`).
    pub(super) async fn on_failure(&mut self, failed: Failed) -> Result<bool, RuntimeError> {
        let Failed { during, failure } = failed;
        match failure {
            Failure::Abortable(e) => {
                // A record the broker refuses as too large fails the same way on every replay.
                let too_large = self.delivery.too_large();
                self.abort_and_rewind(during, &e.to_string()).await?;
                if let Some((topic, detail)) = too_large {
                    return Err(self.stop(RuntimeError::TooLarge { topic, detail }).await);
                }
                Ok(false)
            }
            Failure::Fatal(e) => {
                let err = self.fatal(during, e);
                Err(self.stop(err).await)
            }
            Failure::Stuck => {
                self.health = Health::Stuck;
                let err = RuntimeError::Stuck {
                    during: during.to_string(),
                    waited: WATCHDOG,
                };
                Err(self.stop(err).await)
            }
            Failure::State(e) => Err(self.stop(e.into()).await),
        }
    }

    /// Abort / rewind: abort the transaction, drop the uncommitted work, tell the operator, and
    /// have every assigned partition seeked back to its committed offset
    /// ([`rewind_now`](Self::rewind_now), before the next record is processed).
    pub(crate) async fn abort_and_rewind(
        &mut self,
        during: &'static str,
        cause: &str,
    ) -> Result<(), RuntimeError> {
        // A transaction committing in the background settles first: if it committed, the
        // rewind goes to its offsets; if it failed, its producer is current again, and aborted
        // here (only a fatal or stuck failure changes the path: it stops).
        if let Some(failed) = self.await_committing().await? {
            if !matches!(failed.failure, Failure::Abortable(_)) {
                Box::pin(self.on_failure(failed)).await?;
            }
        }
        telemetry::aborted(during, cause);
        self.stall.dropped(Instant::now(), self.owed_partitions());
        self.totals.aborts += 1;
        self.abort_open().await?;
        self.positions.clear();
        self.times_rewound();
        self.outputs.clear();
        self.pending_in = 0;
        self.pending_out = 0;
        self.delivery.reset();
        // The state of a transaction still committing in the background stays for its outcome.
        let drop_state = if self.commit_in_flight {
            StateManager::abort_open
        } else {
            StateManager::abort
        };
        if let Some(Err(e)) = self.state_blocking(drop_state).await {
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

    /// `abort_transaction` on the current producer, if a transaction is open. An abort that
    /// fails cannot be aborted: every failure stops (a fatal or stuck one has the producer
    /// replaced, see `Engine::producer_failed`).
    pub(super) async fn abort_open(&mut self) -> Result<(), RuntimeError> {
        if !self.txn_open {
            return Ok(());
        }
        let aborted = txn::call("abort_transaction", &self.producer, |p| {
            p.abort_transaction(CALL_TIMEOUT)
        })
        .await;
        if let Err(failed) = aborted {
            let err = match failed.failure {
                Failure::Abortable(e) | Failure::Fatal(e) => self.fatal("abort_transaction", e),
                Failure::Stuck => {
                    self.health = Health::Stuck;
                    RuntimeError::Stuck {
                        during: "abort_transaction".into(),
                        waited: WATCHDOG,
                    }
                }
                Failure::State(e) => e.into(),
            };
            return Err(self.stop(err).await);
        }
        self.txn_open = false;
        Ok(())
    }

    /// The positions to commit, as a list.
    pub(super) fn position_list(&self) -> Offsets {
        self.positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect()
    }

    /// Debug builds (the tests): a commit never moves a partition's offset back from where
    /// the last commit left it. Call it once the previous commit has settled.
    pub(super) fn check_forward(&self, offsets: &Offsets) {
        for (tp, o) in offsets {
            debug_assert!(
                self.resume_at.get(tp).is_none_or(|r| o >= r),
                "committing {tp:?} at {o}, behind its committed offset {:?}",
                self.resume_at.get(tp)
            );
        }
    }

    /// The consumer's group metadata for `send_offsets_to_transaction` (its generation fences
    /// zombies); without it, weir stops.
    pub(super) async fn group_metadata(&mut self) -> Result<ConsumerGroupMetadata, RuntimeError> {
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

    /// The state side of a commit: per task with new offsets, its next sequence number and
    /// target offsets; and per task the metadata its committed offsets carry — the sequence
    /// number (recovery asks Kafka "did this commit happen?", DESIGN.md "Recovery") and the
    /// task's state generation, if an offset reset with --reset-state set one.
    pub(super) fn state_commits(
        &self,
    ) -> Result<(Vec<TaskCommit>, BTreeMap<i32, Marks>), RuntimeError> {
        let mut commits = Vec::new();
        let mut marks = BTreeMap::new();
        let Some(state) = &self.state else {
            return Ok((commits, marks));
        };
        for (task, offsets) in by_task(&self.positions) {
            let meta = state.meta(task)?.unwrap_or_default();
            let seq = meta.seq + 1;
            marks.insert(
                task,
                Marks {
                    seq: Some(seq),
                    reset: meta.reset,
                    time: None,
                },
            );
            commits.push((task, seq, offsets));
        }
        Ok((commits, marks))
    }
}

/// The offsets to commit, each with its task's marks (see `Engine::state_commits`) and its
/// partition's time (`times`), in its metadata.
pub(super) fn to_commit_tpl(
    offsets: &Offsets,
    marks: &BTreeMap<i32, Marks>,
    times: &[(TopicPartition, i64)],
) -> TopicPartitionList {
    let tpl = to_tpl(offsets);
    for mut e in tpl.elements() {
        let time = times
            .iter()
            .find(|(tp, _)| tp.partition == e.partition() && tp.topic == e.topic())
            .map(|(_, t)| *t);
        let m = Marks {
            time,
            ..marks.get(&e.partition()).copied().unwrap_or_default()
        }
        .encode();
        if !m.is_empty() {
            e.set_metadata(m);
        }
    }
    tpl
}

/// Groups offsets by task (partition number): `task -> topic -> next offset`.
fn by_task(positions: &BTreeMap<TopicPartition, i64>) -> BTreeMap<i32, BTreeMap<String, i64>> {
    let mut tasks: BTreeMap<i32, BTreeMap<String, i64>> = BTreeMap::new();
    for (tp, o) in positions {
        tasks
            .entry(tp.partition)
            .or_default()
            .insert(tp.topic.clone(), *o);
    }
    tasks
}
