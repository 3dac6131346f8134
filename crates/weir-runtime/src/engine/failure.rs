//! When the producer fails: which fatal errors a new producer heals (the broker's own timeout
//! abort, a stuck call, any fatal error but fencing) and which stop the application (fencing:
//! another incarnation owns the transactional id), and the replacement itself — bounded, with
//! a back-off, every task resumed from the committed offsets.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use weir_core::TopicPartition;
use weir_kafka::errors::{is_fenced, is_fenced_code};

use super::commit::Mode;
use super::Engine;
use crate::threads::detached;
use crate::txn::new_producer;
use crate::{telemetry, RuntimeError};

/// The longest wait between two producer replacements with no commit between them (see
/// [`Engine::replace_producer`]).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Whether the producer can go on, or which failure a new producer heals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Healthy,
    /// A transactional call did not return within [`WATCHDOG`].
    Stuck,
    /// "Fenced" after its transaction had been open longer than `transaction.timeout.ms`: the
    /// broker aborted it and bumped the epoch (see [`Engine::fatal`]).
    EpochBumped,
}

impl Engine {
    /// The error for a fatal transactional failure: fenced (another incarnation owns the
    /// transactional id), the broker's own timeout abort (which librdkafka reports as fencing;
    /// a new producer heals it), or another fatal error.
    pub(super) fn fatal(&mut self, during: &'static str, source: KafkaError) -> RuntimeError {
        // Once the producer hit a fatal error, every call reports `ERR__FATAL`; the cause
        // (fenced or not) is kept by the client.
        let fatal_fenced = source.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
            && self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| is_fenced_code(code));
        let fenced = is_fenced(&source) || fatal_fenced;
        let open_for = self.period_started.elapsed();
        if fenced && self.txn_open && open_for >= self.config.transaction_timeout {
            // Not another instance: this transaction outlived transaction.timeout.ms (a broker
            // failure held it up), the coordinator aborted it and bumped the producer's epoch,
            // and librdkafka reports the next call on it as fenced. A new producer heals that.
            self.health = Health::EpochBumped;
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

    /// Whether the producer failed in a way that a new producer heals: stuck, any fatal error
    /// except fencing, or "fencing" of a transaction older than `transaction.timeout.ms` (the
    /// broker's own timeout abort, see [`fatal`](Self::fatal)). Real fencing means another
    /// producer took this transactional id over; replacing it would fence that one in turn, so
    /// it stops the application.
    pub(crate) fn producer_failed(&self) -> bool {
        self.health != Health::Healthy
            || self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| !is_fenced_code(code))
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
    /// dead broker's leaders, or while a lost quorum or too few in-sync replicas hold every
    /// commit back), so replacements go on, further apart each time (0, 1, 2, 4, ... up to
    /// [`MAX_BACKOFF`]), for as long as `stall.timeout.ms` since the first failure with no
    /// commit since; the next failure after that stops the application with `cause`: something
    /// is persistently wrong.
    pub(crate) async fn replace_producer(
        &mut self,
        cause: RuntimeError,
    ) -> Result<(), RuntimeError> {
        let now = Instant::now();
        let failing_for = now.saturating_duration_since(*self.failing_since.get_or_insert(now));
        if failing_for >= self.config.stall_timeout {
            tracing::error!(
                replacements = self.replacements_in_a_row,
                failing_for = ?failing_for,
                "the producer kept failing for stall.timeout.ms ({} ms) with no commit; stopping",
                self.config.stall_timeout.as_millis()
            );
            return Err(self.stop(cause).await);
        }
        self.replacements_in_a_row += 1;
        // The first replacement is immediate; the next ones (nothing committed since) give the
        // cluster time to recover.
        let backoff = match self.replacements_in_a_row {
            1 => Duration::ZERO,
            n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_BACKOFF),
        };
        self.stall.dropped(now, self.owed_partitions());
        tracing::warn!(error = %cause, transactional_id = %self.transactional_id,
            "the producer failed; replacing it and resuming every task from the committed offsets");
        telemetry::aborted("replacing the producer", &cause.to_string());
        self.totals.aborts += 1;
        self.totals.producer_replacements += 1;
        // Drop the uncommitted work (the same as an abort, without the failed producer); the
        // failure stopped the engine already, unless it came from outside a transactional call.
        self.halt().await;
        // The timers that fired in the dropped transaction are there again.
        self.timer_floor.clear();
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
        if matches!(self.mode, Mode::Overlapped { .. }) {
            // Both transactional ids start afresh: `init_transactions` aborts whatever the
            // other one left open.
            let second = self.config.second_transactional_id(&self.instance_id);
            let spare = new_producer(&self.config, &second, &self.delivery).await?;
            if let Some(old) = self.mode.put_spare(spare) {
                drop(detached("drop-producer", move || drop(old)));
            }
        }
        // The new producer is healthy and runs the engine again: the only way out of `stopped`.
        self.health = Health::Healthy;
        self.stopped = false;
        let assigned: Vec<TopicPartition> = self.assigned.iter().cloned().collect();
        // Every assigned partition resumes from its start just resolved (`resume_at`).
        self.recover_assignment(&assigned).await?;
        self.rewind_pending.store(true, Ordering::SeqCst);
        tracing::info!(partitions = assigned.len(), "new producer ready; resuming");
        Ok(())
    }
}
