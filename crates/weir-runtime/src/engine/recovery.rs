//! Recovery, per task, at start-up and on every assignment (DESIGN.md, "Recovery").
//!
//! [`Engine::recover_assignment`] is the one entry: it runs after `init_transactions` (which
//! aborted this instance's previous open transaction; see `txn::new_producer`), reads the
//! group's committed offsets `K` as stable offsets, and takes each case of the table in turn,
//! one function each. The classification is weir-state's (`weir_state::standing`), shared
//! with `weir state inspect`.
//!
//! | case | fn |
//! |---|---|
//! | no committed offset: `auto.offset.reset` (`none`: a clear error naming the partitions) | [`start_without_committed`] |
//! | offsets reset with `--reset-state`: a new state generation, local state wiped | [`Engine::reset_generation`] |
//! | a pending entry: decided by Kafka's committed sequence number — forward or back | [`Engine::decide_pending`] |
//! | `R == K`: in step, resume at `K`, no replay | [`Engine::compare`] (in step: nothing to do) |
//! | `R > K`: refused, naming the way out (`weir offsets reset --reset-state`) | [`Engine::compare`] (its error) |
//! | `R < K`: restore the changelog tail, then `R = K` | [`Engine::restore_behind`] |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use weir_core::{AssignedPartition, OffsetReset, StartFrom, StoreSpec, TopicPartition};
use weir_state::{Committed, Marks, RecoveryOutcome};

use super::{kafka, Engine, WeirConsumer};
use crate::changelog::restore;
use crate::threads::blocking;
use crate::txn::CALL_TIMEOUT;
use crate::{telemetry, RuntimeError};

/// Start offsets, and the marks (state commit sequence number, state generation) in each
/// committed offset's metadata.
type Starts = (Vec<AssignedPartition>, BTreeMap<TopicPartition, Marks>);

impl Engine {
    /// Where each of `partitions` resumes — the group's committed offset, else
    /// `auto.offset.reset` — with each task's state recovered to match it before the first
    /// record (the cases of the module documentation, in order).
    pub(super) async fn recover_assignment(
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
                    self.reset_generation(task, reset, &committed).await?;
                }
                let rolled_forward = self.decide_pending(task, &committed).await?;
                let outcome = self.compare(task, &committed, rolled_forward).await?;
                tracing::info!(task, ?outcome, "state recovery");
                if let RecoveryOutcome::Behind { changelog_from } = outcome {
                    self.restore_behind(task, &committed, changelog_from)
                        .await?;
                }
            }
        }
        let times = starts
            .iter()
            .filter(|s| s.start == StartFrom::Committed)
            .filter_map(|s| {
                let time = marks.get(&s.partition).and_then(|m| m.time)?;
                Some((s.partition.clone(), time))
            })
            .collect();
        self.times_assigned(times);
        self.resume_at
            .extend(starts.iter().map(|s| (s.partition.clone(), s.start_offset)));
        self.publish_committed();
        Ok(starts)
    }

    /// The offsets were reset with `weir offsets reset --reset-state`, which put a new state
    /// generation `reset` into their metadata: the local state of `task`, if of another
    /// generation, is wiped, and starts over at the new offsets.
    async fn reset_generation(
        &mut self,
        task: i32,
        reset: u64,
        committed: &Committed,
    ) -> Result<(), RuntimeError> {
        let offsets = offsets_of(committed);
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

    /// A pending entry (a crash between prepare and apply) is decided by Kafka's committed
    /// offsets: rolled forward if they carry its sequence number, back otherwise. Returns
    /// whether it rolled forward.
    async fn decide_pending(
        &mut self,
        task: i32,
        committed: &Committed,
    ) -> Result<bool, RuntimeError> {
        let committed = committed.clone();
        let decided = self
            .state_blocking(move |state| state.decide_pending(task, &committed))
            .await;
        Ok(decided.transpose()?.unwrap_or(false))
    }

    /// `R` against `K`: in step (nothing to do), fresh, behind (restore), or ahead — an error
    /// that refuses to start and names the way out.
    async fn compare(
        &mut self,
        task: i32,
        committed: &Committed,
        rolled_forward: bool,
    ) -> Result<RecoveryOutcome, RuntimeError> {
        let committed = committed.clone();
        let outcome = self
            .state_blocking(move |state| state.compare(task, &committed, rolled_forward))
            .await;
        Ok(outcome
            .transpose()?
            .unwrap_or(RecoveryOutcome::InStep { rolled_forward }))
    }

    /// `R < K`: every changelog store of `task` restores from where its local copy ends (or
    /// from the beginning) to the changelog's end, with progress reported; then `R = K`.
    async fn restore_behind(
        &mut self,
        task: i32,
        committed: &Committed,
        changelog_from: BTreeMap<String, i64>,
    ) -> Result<(), RuntimeError> {
        let config = Arc::clone(&self.config);
        let observer = self.restore_observer.clone();
        let k = offsets_of(committed);
        let seq = committed
            .values()
            .filter_map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        let result = self
            .state_blocking(move |state| -> Result<(), RuntimeError> {
                let stores: Vec<StoreSpec> = state.stores().cloned().collect();
                let mut ends = BTreeMap::new();
                for store in stores {
                    if store.changelog {
                        let from = changelog_from.get(&store.name).copied();
                        let end =
                            restore(&config, state, &store.name, task, from, observer.as_ref())?;
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
}

/// The committed offsets of a task, without the ones not committed.
fn offsets_of(committed: &Committed) -> BTreeMap<String, i64> {
    committed
        .iter()
        .filter_map(|(t, (o, _))| o.map(|o| (t.clone(), o)))
        .collect()
}

/// Where reading starts for each partition: the group's committed offset (read as a stable
/// offset, because the consumer is read_committed), or else [`start_without_committed`].
/// Blocking.
fn resolve_starts(
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
        match start_without_committed(consumer, &partition, policy)? {
            Some(start) => starts.push(start),
            None => missing.push(partition),
        }
    }
    if !missing.is_empty() {
        return Err(RuntimeError::NoCommittedOffset {
            group: group.to_string(),
            partitions: missing,
        });
    }
    Ok((starts, marks))
}

/// No committed offset: `auto.offset.reset` resolved to a concrete offset now — the log start
/// for `earliest`, the last stable offset for `latest` — so that records produced after the
/// assignment are never skipped; `none` gives `None` (the caller's error names the
/// partitions). Blocking.
fn start_without_committed(
    consumer: &WeirConsumer,
    partition: &TopicPartition,
    policy: OffsetReset,
) -> Result<Option<AssignedPartition>, RuntimeError> {
    let start = match policy {
        OffsetReset::None => return Ok(None),
        OffsetReset::Earliest => StartFrom::Earliest,
        OffsetReset::Latest => StartFrom::Latest,
    };
    let (low, high) = consumer
        .fetch_watermarks(&partition.topic, partition.partition, CALL_TIMEOUT)
        .map_err(|source| kafka(&format!("watermarks of {partition}"), source))?;
    Ok(Some(AssignedPartition {
        partition: partition.clone(),
        start_offset: if start == StartFrom::Earliest {
            low
        } else {
            high
        },
        start,
    }))
}
