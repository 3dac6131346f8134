//! Overlapped commits (`commit.overlap`, exactly_once): transaction n commits in the
//! background on one producer while n+1 fills on the spare, once n's outputs (its changelog
//! records included) are acknowledged, so that each output partition keeps its inputs' order.
//! With state stores, n's writes are frozen as the state's committing layer first, and their
//! prepare handed to the state's writer thread: n+1 reads over them, the background thread
//! waits for the prepare to be durable before it sends n's offsets and commits, and they are
//! applied once n commits.
//! Commits complete in order: the one in the background is settled before anything else
//! commits or aborts, and a failed one aborts the open transaction too (it holds work, and
//! state, from after it). See `commit.rs` for the cycle's steps; this is the part of them that
//! runs on the other producer.

use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use weir_core::TopicPartition;
use weir_state::TaskCommit;

use super::commit::{to_commit_tpl, ChangelogNext, Mode, Offsets, Prepare};
use super::Engine;
use crate::failpoint::{failpoint, failpoint_error};
use crate::producer::{drain, WeirProducer};
use crate::summary::CommitReason;
use crate::threads::{detached, Detached};
use crate::txn::{self, Failed, Failure, CALL_TIMEOUT, WATCHDOG};
use crate::RuntimeError;

/// A transaction committing in the background (`commit.overlap`).
pub(crate) struct Committing {
    /// The producer whose transaction it is; the spare again once it has committed.
    producer: Arc<WeirProducer>,
    /// `send_offsets_to_transaction` and `commit_transaction`, on a detached thread.
    task: Detached<Result<(), Failed>>,
    offsets: Offsets,
    /// Its tasks' state commits (prepared), applied once it committed.
    commits: Vec<TaskCommit>,
    /// Its changelog offsets, for the apply.
    changelog_next: ChangelogNext,
    /// The times of its partitions, committed in the offsets' metadata.
    times: Vec<(TopicPartition, i64)>,
    records_in: u64,
    records_out: u64,
    reason: CommitReason,
    started: Instant,
    /// When its transaction began (for telling a timeout abort from fencing, see `fatal`).
    began: Instant,
}

impl Committing {
    /// The offset this commit moves `tp` to, if it has `tp`.
    pub(super) fn offset_of(&self, tp: &TopicPartition) -> Option<i64> {
        self.offsets.iter().find(|(p, _)| p == tp).map(|(_, o)| *o)
    }
}

impl std::fmt::Debug for Committing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committing")
            .field("offsets", &self.offsets)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Steps 4 and 6 of an overlapped commit — once its prepare (step 5, under way) is
    /// durable — on a thread of its own, while the spare producer becomes current. The outcome
    /// is taken up by [`settle_committing`](Self::settle_committing), which applies the state
    /// (step 7).
    pub(super) async fn commit_in_background(
        &mut self,
        reason: CommitReason,
        prepare: Prepare,
    ) -> Result<(), RuntimeError> {
        let offsets = self.position_list();
        self.check_forward(&offsets);
        let Prepare {
            commits,
            marks,
            written,
        } = prepare;
        // Every output is acknowledged (drained): the changelog offsets are this transaction's.
        let changelog_next = self.changelog_next();
        let group = self.group_metadata().await?;
        let times = self.times_of(&offsets);
        let tpl = (!offsets.is_empty()).then(|| Arc::new(to_commit_tpl(&offsets, &marks, &times)));
        let group = Arc::new(group);
        let Mode::Overlapped { spare, committing } = &mut self.mode else {
            return Err(RuntimeError::Internal(
                "a background commit outside commit.overlap".into(),
            ));
        };
        let Some(next) = spare.take() else {
            return Err(RuntimeError::Internal(
                "no spare producer to overlap the commit".into(),
            ));
        };
        let producer = std::mem::replace(&mut self.producer, next);
        let p = Arc::clone(&producer);
        let task = detached("commit", move || {
            if failpoint_error("background_commit") {
                return Err(Failed {
                    during: "commit_transaction",
                    failure: Failure::Abortable(KafkaError::Flush(
                        RDKafkaErrorCode::OperationTimedOut,
                    )),
                });
            }
            Prepare::wait(written).map_err(|e| Failed {
                during: "prepare",
                failure: Failure::State(e),
            })?;
            if let Some(tpl) = tpl {
                txn::call_blocking("send_offsets_to_transaction", &p, move |p| {
                    p.send_offsets_to_transaction(&tpl, &group, CALL_TIMEOUT)
                })?;
                failpoint("after_send_offsets");
            }
            txn::call_blocking("commit_transaction", &p, |p| {
                drain(p);
                p.commit_transaction(CALL_TIMEOUT)
            })?;
            failpoint("after_commit_transaction");
            Ok(())
        });
        *committing = Some(Committing {
            producer,
            task,
            offsets,
            commits,
            changelog_next,
            times,
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
        if self.mode.committing().is_some_and(|c| c.task.is_finished()) {
            self.settle_committing().await?;
        }
        Ok(())
    }

    /// Waits for the transaction committing in the background, if any, and records it. Returns
    /// `Ok(false)` when it failed and was aborted, together with the open transaction (which
    /// holds work from after it), and every partition was rewound.
    pub(super) async fn settle_committing(&mut self) -> Result<bool, RuntimeError> {
        match self.await_committing().await? {
            None => Ok(true),
            Some(failed) => self.on_failure(failed).await,
        }
    }

    /// Waits for the transaction committing in the background, if any. Committed: it is
    /// recorded. Failed: the open transaction on the current producer is aborted (it holds work
    /// from after the failed one), the failed producer becomes current again with its
    /// transaction open, and the failure is returned for the caller's [`on_failure`](Self::on_failure).
    pub(super) async fn await_committing(&mut self) -> Result<Option<Failed>, RuntimeError> {
        let Some(mut c) = self.mode.take_committing() else {
            return Ok(None);
        };
        let patience = self.config.transaction_timeout / 4;
        let mut rewound = false;
        if self.txn_open && !c.task.is_finished() {
            // The open transaction must not outlive its timeout while this one is slow (a
            // coordinator moving during a broker failure): the broker would abort it and bump
            // the producer's epoch, which looks like fencing. Past a quarter of the timeout it
            // is aborted, and its work replayed from whatever this commit leaves committed.
            if let Ok(outcome) = tokio::time::timeout(patience, &mut c.task).await {
                return self.committing_ended(c, outcome).await;
            }
            let cause = format!(
                "the previous transaction's commit has taken over {patience:?} (a quarter of transaction.timeout.ms)"
            );
            self.commit_in_flight = true;
            let aborted =
                Box::pin(self.abort_and_rewind("waiting for the previous commit", &cause)).await;
            self.commit_in_flight = false;
            aborted?;
            rewound = true;
        }
        // The task's own calls are watched (`txn::call_blocking`): it always ends.
        let outcome = (&mut c.task).await;
        let ended = self.committing_ended(c, outcome).await?;
        if rewound && ended.is_none() {
            // It committed: the replay starts after it, at its times (the rewind above went
            // back to the times before it).
            self.times_rewound();
        }
        Ok(ended)
    }

    /// The end of [`await_committing`](Self::await_committing), once the background commit
    /// returned.
    async fn committing_ended(
        &mut self,
        c: Committing,
        outcome: Result<(), Failed>,
    ) -> Result<Option<Failed>, RuntimeError> {
        let Err(failed) = outcome else {
            self.mode.put_spare(c.producer);
            self.resume_at.extend(c.offsets.iter().cloned());
            self.times_committed(c.times);
            self.publish_committed();
            self.apply(c.commits, c.changelog_next).await?;
            self.committed(c.reason, c.started, c.records_in, c.records_out, c.offsets)
                .await?;
            return Ok(None);
        };
        // The open transaction holds work from after the failed one: it goes first.
        self.abort_open().await?;
        let failed_producer = std::mem::replace(&mut self.producer, c.producer);
        self.mode.put_spare(failed_producer);
        self.txn_open = true;
        self.period_started = c.began;
        Ok(Some(failed))
    }

    /// Lets a background commit end either way while stopping, waiting at most [`WATCHDOG`]
    /// (a restart resumes from whatever Kafka decided).
    pub(super) async fn let_background_commit_end(&mut self) {
        if let Some(c) = self.mode.take_committing() {
            if tokio::time::timeout(WATCHDOG, c.task).await.is_err() {
                tracing::warn!("commit_transaction did not return while stopping; the broker aborts the transaction after transaction.timeout.ms unless it committed");
            }
            self.mode.put_spare(c.producer);
        }
    }
}
