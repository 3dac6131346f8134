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
//! Every transactional call runs on a blocking thread (`spawn_blocking`), never on an async
//! worker. Errors take one path per class (`weir_kafka::errors`): retriable → the same call
//! again; abortable → [`Engine::abort_and_rewind`]; fatal → stop.
//!
//! # Who may touch what
//!
//! The engine sits behind an async mutex. The main loop takes it to process a batch and to
//! commit; the consumer's rebalance callback takes it (from the polling thread) to commit on
//! revoke and to resolve start offsets on assign. Callbacks run only inside `poll`, and the main
//! loop never holds the lock while polling, so the two never wait on each other.
//!
//! # Invariants
//!
//! - `positions` holds, per partition, the offset after the last record whose outputs were
//!   handed to the producer in the open transaction (exactly_once) or since the last offset
//!   commit (at_least_once). Only these offsets are ever committed: never past processing.
//! - After an abort, `positions` is empty, the operator has been told (`on_abort`), and the
//!   consumer has been seeked back to the committed offsets of every assigned partition.
//! - Once `stopped` is set, nothing more is produced or committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header as KHeader, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use weir_core::{
    AssignedPartition, CommitInfo, Config, Context, Guarantee, OffsetReset, Output, PoisonHandling,
    PoisonRecord, PoisonTally, ProcessError, Processor, Record, StartFrom, TopicPartition,
};
use weir_kafka::errors::{classify, is_fenced, TxnErrorClass};

use crate::rebalance::RebalanceHandler;
use crate::{telemetry, RuntimeError};

/// The consumer type the engine drives.
pub(crate) type WeirConsumer = BaseConsumer<RebalanceHandler>;

/// Timeout of the transactional calls and offset queries. A transactional call that cannot
/// finish in this time is retried or aborted by class.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a blocking client call on tokio's blocking pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking Kafka call panicked")
}

/// Counts failed deliveries since the last commit; read at commit time.
#[derive(Debug, Default)]
pub(crate) struct DeliveryState {
    failed: AtomicU64,
    first: StdMutex<Option<String>>,
}

impl DeliveryState {
    fn reset(&self) {
        self.failed.store(0, Ordering::SeqCst);
        *self.first.lock().expect("poisoned") = None;
    }
}

/// The producer's context: records delivery failures.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryContext(pub(crate) Arc<DeliveryState>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
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

pub(crate) type WeirProducer = ThreadedProducer<DeliveryContext>;

/// See the module documentation.
pub(crate) struct Engine {
    pub(crate) config: Arc<Config>,
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

    /// Partitions currently assigned to this instance.
    pub(crate) assigned: BTreeSet<TopicPartition>,
    /// An error raised inside a rebalance callback, for the main loop to return.
    pub(crate) failure: Option<RuntimeError>,
    /// Set once the application is stopping with an error: nothing more is committed.
    pub(crate) stopped: bool,
    /// Totals for the run summary.
    pub(crate) totals: crate::RunSummary,
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
        transactional_id: String,
        processor: Box<dyn Processor>,
        producer: Arc<WeirProducer>,
        delivery: Arc<DeliveryState>,
    ) -> Self {
        let poison = PoisonHandling {
            policy: config.poison_policy,
            dead_letter_topic: config.dead_letter_topic.clone(),
            application_id: config.application_id.clone(),
        };
        Self {
            config,
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
            assigned: BTreeSet::new(),
            failure: None,
            stopped: false,
            totals: crate::RunSummary::default(),
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
        (self.txn_open || !self.positions.is_empty())
            && self.period_started.elapsed() >= self.config.commit_interval
    }

    fn txn_error(&self, during: &'static str, source: KafkaError) -> RuntimeError {
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
        if is_fenced(&source) || fatal_fenced {
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
    pub(crate) async fn process(&mut self, batch: Vec<Record>) -> Result<(), RuntimeError> {
        if batch.is_empty() || self.stopped {
            return Ok(());
        }
        self.begin_if_needed().await?;
        let mut tally = PoisonTally::default();
        let result = {
            let mut ctx = Context::new(&mut self.outputs, &self.poison, &mut tally);
            self.processor.process(&batch, &mut ctx).await
        };
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
                let produced = self.produce_outputs().await?;
                for r in &batch {
                    let tp = TopicPartition::new(&*r.topic, r.partition);
                    let next = self.positions.entry(tp).or_insert(r.offset + 1);
                    *next = (*next).max(r.offset + 1);
                }
                self.pending_in += batch.len() as u64;
                self.pending_out += produced;
                telemetry::batch(batch.len(), produced as usize);
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

    /// Hands the buffered outputs to the producer (waiting while its queue is full).
    async fn produce_outputs(&mut self) -> Result<u64, RuntimeError> {
        let mut outputs = std::mem::take(&mut self.outputs);
        let mut produced = 0;
        let mut result = Ok(());
        for out in outputs.drain(..) {
            let Some(topic) = out.topic.as_deref().or(self.config.output_topic.as_deref()) else {
                result = Err(RuntimeError::NoOutputTopic);
                break;
            };
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(k) = out.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = out.value.as_deref() {
                record = record.payload(v);
            }
            if let Some(ts) = out.timestamp_ms {
                record = record.timestamp(ts);
            }
            if !out.headers.is_empty() {
                let headers = out.headers.iter().fold(
                    OwnedHeaders::new_with_capacity(out.headers.len()),
                    |h, header| {
                        h.insert(KHeader {
                            key: &header.key,
                            value: header.value.as_deref(),
                        })
                    },
                );
                record = record.headers(headers);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((source, _))
                        if source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) =>
                    {
                        result = Err(self.txn_error("produce", source));
                        break;
                    }
                    Err((source, _)) => {
                        result = Err(RuntimeError::Produce {
                            topic: topic.to_string(),
                            partition: out.partition,
                            source: source.into(),
                        });
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            produced += 1;
        }
        outputs.clear();
        self.outputs = outputs;
        match result {
            Ok(()) => Ok(produced),
            Err(e) => Err(self.stop(e).await),
        }
    }

    /// Step 3 of the commit cycle: commit outputs and input offsets.
    pub(crate) async fn commit(&mut self, reason: &'static str) -> Result<(), RuntimeError> {
        if self.stopped {
            return Ok(());
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
        let info = CommitInfo {
            records_in: std::mem::take(&mut self.pending_in),
            records_out: std::mem::take(&mut self.pending_out),
            offsets,
        };
        telemetry::committed(reason, started.elapsed(), info.records_in, info.records_out);
        self.totals.commits += 1;
        self.totals.records_in += info.records_in;
        self.totals.records_out += info.records_out;
        self.consecutive_failures = 0;
        self.period_started = Instant::now();
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
        let offsets: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        if !offsets.is_empty() {
            let tpl = to_tpl(&offsets);
            let Some(group) = self.consumer().group_metadata() else {
                let err = RuntimeError::Internal(
                    "the consumer has no group metadata for send_offsets_to_transaction".into(),
                );
                return Err(self.stop(err).await);
            };
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
        }
        // 3c. Kafka is the commit point: outputs and offsets become visible together.
        let committed = self
            .retrying("commit_transaction", |p| p.commit_transaction(CALL_TIMEOUT))
            .await?;
        if !committed {
            return Ok(None);
        }
        self.txn_open = false;
        self.positions.clear();
        self.delivery.reset();
        Ok(Some(offsets))
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
            let producer = Arc::clone(&self.producer);
            let call = call.clone();
            let result = blocking(move || call(&producer)).await;
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
        if self.positions.is_empty() {
            return Ok(None);
        }
        let producer = Arc::clone(&self.producer);
        if let Err(source) = blocking(move || producer.flush(CALL_TIMEOUT)).await {
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
        let offsets: Vec<(TopicPartition, i64)> = self
            .positions
            .iter()
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        let tpl = to_tpl(&offsets);
        let consumer = self.consumer();
        match blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
            Ok(()) => {
                self.positions.clear();
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
    /// operator, and seek every assigned partition back to its committed offset.
    pub(crate) async fn abort_and_rewind(
        &mut self,
        during: &'static str,
        cause: &str,
    ) -> Result<(), RuntimeError> {
        telemetry::aborted(during, cause);
        self.totals.aborts += 1;
        if self.txn_open {
            let producer = Arc::clone(&self.producer);
            if let Err(e) = blocking(move || producer.abort_transaction(CALL_TIMEOUT)).await {
                let err = self.txn_error("abort_transaction", e);
                return Err(self.stop(err).await);
            }
            self.txn_open = false;
        }
        self.positions.clear();
        self.outputs.clear();
        self.pending_in = 0;
        self.pending_out = 0;
        self.delivery.reset();
        if let Err(e) = self.processor.on_abort().await {
            let err = RuntimeError::Operator {
                during: "on_abort",
                message: e.to_string(),
            };
            return Err(self.stop(err).await);
        }
        let partitions: Vec<TopicPartition> = self.assigned.iter().cloned().collect();
        if partitions.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer();
        let group = self.config.application_id.clone();
        let policy = self.config.auto_offset_reset;
        let rewound = blocking(move || -> Result<(), RuntimeError> {
            let starts = resolve_starts(&consumer, &group, &partitions, policy)?;
            let mut tpl = TopicPartitionList::new();
            for s in &starts {
                tpl.add_partition_offset(
                    &s.partition.topic,
                    s.partition.partition,
                    Offset::Offset(s.start_offset),
                )
                .map_err(|source| kafka("seek", source))?;
            }
            let result = consumer
                .seek_partitions(tpl, CALL_TIMEOUT)
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
        .await;
        match rewound {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stop(e).await),
        }
    }

    /// Stops for good: aborts the open transaction (best effort) and returns `error`.
    pub(crate) async fn stop(&mut self, error: RuntimeError) -> RuntimeError {
        if !self.stopped {
            self.stopped = true;
            if self.txn_open {
                let producer = Arc::clone(&self.producer);
                if let Err(e) = blocking(move || producer.abort_transaction(CALL_TIMEOUT)).await {
                    tracing::warn!(error = %e, "could not abort the open transaction while stopping; the broker aborts it after transaction.timeout.ms, or the next start of this instance does");
                }
                self.txn_open = false;
            }
            self.positions.clear();
        }
        error
    }

    /// Rebalance: partitions assigned. Resolves where each starts and tells the operator.
    pub(crate) async fn on_assign(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<AssignedPartition>, RuntimeError> {
        let consumer = self.consumer();
        let group = self.config.application_id.clone();
        let policy = self.config.auto_offset_reset;
        let parts = partitions.clone();
        let starts = blocking(move || resolve_starts(&consumer, &group, &parts, policy)).await?;
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
        }
        result
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
            let produced = self.produce_outputs().await?;
            self.pending_out += produced;
        }
        self.commit("revoke").await
    }
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

/// Where reading starts for each partition: the group's committed offset (read as a stable
/// offset, because the consumer is read_committed), or else `auto.offset.reset` resolved to a
/// concrete offset now — the log start for `earliest`, the last stable offset for `latest` — so
/// that records produced after the assignment are never skipped. Blocking.
pub(crate) fn resolve_starts(
    consumer: &WeirConsumer,
    group: &str,
    partitions: &[TopicPartition],
    policy: OffsetReset,
) -> Result<Vec<AssignedPartition>, RuntimeError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.partition);
    }
    let committed = consumer
        .committed_offsets(tpl, CALL_TIMEOUT)
        .map_err(|source| kafka("fetching the group's committed offsets", source))?;
    let mut starts = Vec::with_capacity(partitions.len());
    let mut missing = Vec::new();
    for e in committed.elements() {
        let partition = TopicPartition::new(e.topic(), e.partition());
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
    Ok(starts)
}
