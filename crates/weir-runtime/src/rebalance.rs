//! Rebalance callbacks: commit before partitions go, abort when they are lost, resolve start
//! offsets before they come.
//!
//! librdkafka runs these callbacks inside `poll`, which weir only calls from a blocking thread
//! (see `poll.rs`), while the main loop may be processing the previous batch. The callback
//! takes the engine's lock (waiting for that step to end) and drives its async methods with
//! `Handle::block_on`; their blocking Kafka calls go to other blocking threads. The partitions
//! are (un)assigned only after the engine returns, so:
//!
//! - **revoke**: the operator's `on_partitions_revoked` runs, and the open transaction — with
//!   the revoked partitions' last offsets — commits *before* they are released to another
//!   member (Kafka Streams' "commit on revoke");
//! - **lost** (session timeout, fenced member): the open transaction is aborted, never
//!   committed, because another member may already own the partitions;
//! - **assign**: start offsets are resolved (committed offset, else `auto.offset.reset`) and
//!   assigned explicitly, and `on_partitions_assigned` runs, before the first fetch.
//!
//! An error in a callback cannot be returned through librdkafka; it is parked with the
//! listener ([`RebalanceListener::park`]), and the main loop returns it right after `poll`.
//!
//! The handler knows the engine only as a [`RebalanceListener`]: this module is below the
//! engine and imports nothing of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use weir_core::{AssignedPartition, TopicPartition};

use crate::RuntimeError;

/// What the rebalance callbacks drive (the engine).
pub(crate) trait RebalanceListener: Send + 'static {
    /// Partitions assigned: where each starts, once its state is recovered.
    async fn assigned(
        &mut self,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<AssignedPartition>, RuntimeError>;
    /// Partitions revoked (`lost`: taken away without a chance to commit).
    async fn revoked(
        &mut self,
        partitions: Vec<TopicPartition>,
        lost: bool,
    ) -> Result<(), RuntimeError>;
    /// Performs a pending rewind, if any (see `Engine::rewind_now`); whether there was one.
    async fn rewind(&mut self) -> Result<bool, RuntimeError>;
    /// Keeps an error of a callback for the main loop (the first one wins).
    fn park(&mut self, error: RuntimeError);
}

/// The consumer's context.
pub(crate) struct RebalanceHandler<L> {
    pub(crate) engine: Arc<Mutex<L>>,
    pub(crate) handle: Handle,
    /// Bumped on every revocation; lets `poll_batch` notice one happened during a poll.
    pub(crate) revocations: AtomicU64,
    /// Partitions revoked since `poll_batch` last cleared this.
    pub(crate) revoked: StdMutex<Vec<TopicPartition>>,
    /// The engine's pending-rewind flag (see `Engine::rewind_pending`).
    pub(crate) rewind_pending: Arc<AtomicBool>,
    /// The engine's committed offsets (see `Engine::committed_view`).
    pub(crate) committed: Arc<StdMutex<std::collections::BTreeMap<TopicPartition, i64>>>,
    /// The engine's stall watch (see `stall.rs`): told whether input waits.
    pub(crate) stall: Arc<crate::stall::StallWatch>,
}

impl<L> std::fmt::Debug for RebalanceHandler<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceHandler").finish_non_exhaustive()
    }
}

impl<L: RebalanceListener> ClientContext for RebalanceHandler<L> {
    /// librdkafka's statistics (every 5 s, `statistics.interval.ms`): the consumer lag of each
    /// assigned partition: the end of its log (last stable offset) minus the offset weir
    /// committed (librdkafka's own `consumer_lag` does not know the offsets a transaction
    /// commits); and for the stall watch, whether any of them is behind.
    /// Parsed here rather than through `rdkafka::Statistics`, whose strict schema does not
    /// follow every librdkafka version.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            tracing::debug!("unparseable librdkafka statistics");
            return;
        };
        // The gauges are set under the lock (the JSON is parsed before it, off the commit
        // path), so that a revoke, which zeroes the gauges of the partitions it takes away
        // under the same lock, cannot be overtaken by a sample taken before it.
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let behind = crate::telemetry::consumer_lag(&stats, &committed);
        self.stall.set_behind(behind);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl<L: RebalanceListener> ConsumerContext for RebalanceHandler<L> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = partitions(tpl);
                let result = self.handle.block_on(async {
                    let mut engine = self.engine.lock().await;
                    let result = engine.assigned(parts).await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "cannot start the assigned partitions");
                    }
                    match result {
                        Ok(starts) => Some(starts),
                        Err(e) => {
                            engine.park(e);
                            None
                        }
                    }
                });
                for s in result.into_iter().flatten() {
                    // The partitions are in `tpl` already, so this cannot fail.
                    let _ = tpl.set_partition_offset(
                        &s.partition.topic,
                        s.partition.partition,
                        Offset::Offset(s.start_offset),
                    );
                }
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    self.park(RuntimeError::Kafka {
                        during: "assigning partitions".into(),
                        source: e.into(),
                    });
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts = partitions(tpl);
                let lost = consumer.assignment_lost();
                self.handle.block_on(async {
                    let mut engine = self.engine.lock().await;
                    if let Err(e) = engine.revoked(parts.clone(), lost).await {
                        engine.park(e);
                    }
                });
                self.revoked.lock().expect("poisoned").extend(parts);
                self.revocations.fetch_add(1, Ordering::SeqCst);
                let unassigned = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = unassigned {
                    self.park(RuntimeError::Kafka {
                        during: "unassigning partitions".into(),
                        source: e.into(),
                    });
                }
            }
            other => {
                // librdkafka reports a failed rebalance this way; giving everything up is the
                // documented response, and the group hands the partitions out again.
                tracing::error!(error = ?other, "rebalance error; releasing the assignment");
                let all = consumer
                    .assignment()
                    .map(|a| partitions(&a))
                    .unwrap_or_default();
                self.handle.block_on(async {
                    let mut engine = self.engine.lock().await;
                    if let Err(e) = engine.revoked(all, true).await {
                        engine.park(e);
                    }
                });
                self.revocations.fetch_add(1, Ordering::SeqCst);
                let _ = consumer.unassign();
            }
        }
    }
}

impl<L: RebalanceListener> RebalanceHandler<L> {
    /// Performs a rewind an abort asked for — in a callback of the poll that just returned, or
    /// in the main loop meanwhile — if there is one (see `Engine::rewind_now`). Called on the
    /// polling thread between two polls; returns whether it rewound, in which case every record
    /// polled so far precedes the seek.
    pub(crate) fn rewind_if_pending(&self) -> bool {
        if !self.rewind_pending.load(Ordering::SeqCst) {
            return false;
        }
        self.handle.block_on(async {
            let mut engine = self.engine.lock().await;
            match engine.rewind().await {
                Ok(rewound) => rewound,
                Err(e) => {
                    engine.park(e);
                    true
                }
            }
        })
    }

    fn park(&self, error: RuntimeError) {
        self.handle.block_on(async {
            self.engine.lock().await.park(error);
        });
    }
}
