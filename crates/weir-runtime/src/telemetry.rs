//! Named telemetry events: each emits one `tracing` event and updates its metrics, so logs and
//! metrics never disagree. Labels are low-cardinality (no offsets, no keys).
//!
//! Levels: `info` for lifecycle (start, assignment, shutdown), `debug` for every commit, `warn`
//! for aborts, skips and transient errors, `error` for what stops the application.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use weir_core::{AssignedPartition, TopicPartition};

/// Serves the Prometheus exposition at `http://{address}/metrics` (once per process: the
/// recorder is global; a second application in the same process shares it).
pub(crate) fn serve(address: SocketAddr) -> Result<(), String> {
    static SERVING: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    let result = SERVING.get_or_init(|| {
        PrometheusBuilder::new()
            .with_http_listener(address)
            .set_buckets_for_metric(
                Matcher::Full("weir_commit_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("weir_batch_records".into()),
                    &[1.0, 10.0, 100.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0],
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("weir_wait_seconds".into()),
                    &[
                        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0,
                    ],
                )
            })
            .and_then(PrometheusBuilder::install)
            .map(|()| address)
            .map_err(|e| format!("cannot serve metrics at {address}: {e}"))
    });
    describe();
    match result {
        Ok(serving) if *serving == address => {
            tracing::info!(%address, "serving Prometheus metrics at /metrics");
            Ok(())
        }
        Ok(serving) => {
            tracing::warn!(%address, %serving, "metrics are already served at another address in this process; using it");
            Ok(())
        }
        Err(e) => Err(e.clone()),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("weir_records_in_total", "Input records processed");
    describe_counter!("weir_records_out_total", "Output records produced");
    describe_counter!("weir_batches_total", "Batches handed to the operator");
    describe_counter!(
        "weir_late_records_total",
        "Records that arrived after every window of theirs had closed (Context::late): dropped, or dead-lettered under poison.policy=dead_letter"
    );
    describe_histogram!("weir_batch_records", Unit::Count, "Records per batch");
    describe_counter!(
        "weir_commits_total",
        "Commits (transactions committed), by reason"
    );
    describe_histogram!(
        "weir_commit_seconds",
        Unit::Seconds,
        "Time to commit a transaction (or, at_least_once, offsets)"
    );
    describe_counter!(
        "weir_aborts_total",
        "Transactions aborted (at_least_once: rewinds), by step"
    );
    describe_counter!(
        "weir_fenced_total",
        "Producer fencings (another instance took this transactional id)"
    );
    describe_counter!(
        "weir_fatal_errors_total",
        "Errors that stopped the application"
    );
    describe_counter!(
        "weir_transient_errors_total",
        "Transient Kafka errors, retried"
    );
    describe_counter!(
        "weir_rebalances_total",
        "Rebalance callbacks, by kind (assign, revoke, lost)"
    );
    describe_gauge!(
        "weir_consumer_lag",
        Unit::Count,
        "Records between the committed offset and the end of the partition"
    );
    describe_gauge!(
        "weir_restore_remaining_records",
        Unit::Count,
        "Changelog records left to restore"
    );
    describe_counter!("weir_restored_records_total", "Changelog records restored");
    describe_histogram!(
        "weir_wait_seconds",
        Unit::Seconds,
        "Time the processing loop waited, by what for: input (the next batch), output (room in the producer's queue: back-pressure), commit"
    );
    describe_gauge!(
        "weir_stalled",
        "1 while the instance is stalled: nothing committed for longer than transaction.timeout.ms while records wait or errors keep coming"
    );
    describe_counter!("weir_stalls_total", "Stalls reported (see weir_stalled)");
    describe_counter!("weir_poison_skipped_total", "Poison records skipped");
    describe_counter!(
        "weir_dead_lettered_total",
        "Poison records sent to the dead-letter topic"
    );
}

/// Consumer lag per assigned partition: the partition's end (`ls_offset`, the last stable
/// offset — the high watermark under read_uncommitted — from librdkafka's statistics JSON)
/// minus the offset weir committed for it. Returns whether any partition lags.
pub(crate) fn consumer_lag(
    stats: &serde_json::Value,
    committed: &BTreeMap<TopicPartition, i64>,
) -> bool {
    let mut behind = false;
    for (tp, offset) in committed {
        let p = &stats["topics"][&tp.topic]["partitions"][tp.partition.to_string()];
        let end = ["ls_offset", "hi_offset"]
            .iter()
            .filter_map(|k| p[k].as_i64())
            .find(|o| *o >= 0);
        if let Some(end) = end {
            behind |= end > *offset;
            gauge!("weir_consumer_lag", "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
                .set((end - offset).max(0) as f64);
        }
    }
    behind
}

/// A partition this instance no longer owns: its lag is its new owner's to report.
pub(crate) fn lag_released(tp: &TopicPartition) {
    gauge!("weir_consumer_lag", "topic" => tp.topic.clone(), "partition" => tp.partition.to_string())
        .set(0.0);
}

pub(crate) fn fenced() {
    counter!("weir_fenced_total").increment(1);
}

pub(crate) fn started(
    application_id: &str,
    instance_id: &str,
    guarantee: &str,
    transactional_id: Option<&str>,
) {
    tracing::info!(
        application_id,
        instance_id,
        guarantee,
        transactional_id,
        "weir application started"
    );
}

pub(crate) fn batch(records_in: usize, records_out: usize) {
    counter!("weir_records_in_total").increment(records_in as u64);
    counter!("weir_records_out_total").increment(records_out as u64);
    counter!("weir_batches_total").increment(1);
    histogram!("weir_batch_records").record(records_in as f64);
}

pub(crate) fn waited(on: crate::summary::Wait, took: Duration) {
    use crate::summary::Wait;
    let on = match on {
        Wait::Input => "input",
        Wait::Output => "output",
        Wait::Commit => "commit",
    };
    histogram!("weir_wait_seconds", "on" => on).record(took.as_secs_f64());
}

pub(crate) fn committed(reason: &'static str, took: Duration, records_in: u64, records_out: u64) {
    counter!("weir_commits_total", "reason" => reason).increment(1);
    histogram!("weir_commit_seconds").record(took.as_secs_f64());
    tracing::debug!(reason, ?took, records_in, records_out, "committed");
}

pub(crate) fn aborted(during: &'static str, cause: &str) {
    counter!("weir_aborts_total", "during" => during).increment(1);
    tracing::warn!(
        during,
        cause,
        "transaction aborted; rewinding to the committed offsets"
    );
}

pub(crate) fn retrying(during: &'static str, cause: &str, attempt: u32, backoff: Duration) {
    tracing::warn!(during, cause, attempt, ?backoff, "retrying");
}

/// A stall begins (see `stall.rs`).
pub(crate) fn stalled(quiet: Duration, waiting: u64, errors: u64, threshold: Duration) {
    gauge!("weir_stalled").set(1.0);
    counter!("weir_stalls_total").increment(1);
    tracing::warn!(
        nothing_committed_for = ?quiet,
        waiting_records = waiting,
        errors_since_commit = errors,
        "stalled: nothing committed for longer than transaction.timeout.ms ({} ms) while \
         records wait or errors keep coming. The cluster may be unavailable (brokers down, \
         partitions below min.insync.replicas, no controller quorum); weir keeps retrying and \
         resumes by itself",
        threshold.as_millis()
    );
}

/// A stall ends: by a commit, or because nothing waits and no errors came any more.
pub(crate) fn resumed(after: Duration, committed: bool) {
    gauge!("weir_stalled").set(0.0);
    let how = if committed {
        "committed again"
    } else {
        "nothing waits and no errors came"
    };
    tracing::info!(stalled_for = ?after, "resumed: {how}");
}

pub(crate) fn poison(skipped: u64, dead_lettered: u64, late: u64) {
    if late > 0 {
        counter!("weir_late_records_total").increment(late);
    }
    if skipped > 0 {
        counter!("weir_poison_skipped_total").increment(skipped);
    }
    if dead_lettered > 0 {
        counter!("weir_dead_lettered_total").increment(dead_lettered);
    }
}

pub(crate) fn assigned(partitions: &[AssignedPartition]) {
    counter!("weir_rebalances_total", "kind" => "assign").increment(1);
    for p in partitions {
        tracing::info!(partition = %p.partition, start_offset = p.start_offset, start = ?p.start, "partition assigned");
    }
}

pub(crate) fn revoked(partitions: &[TopicPartition], lost: bool) {
    let kind = if lost { "lost" } else { "revoke" };
    counter!("weir_rebalances_total", "kind" => kind).increment(1);
    let list: Vec<String> = partitions.iter().map(ToString::to_string).collect();
    if lost {
        tracing::warn!(partitions = ?list, "partitions lost; the open transaction is aborted");
    } else {
        tracing::info!(partitions = ?list, "partitions revoked");
    }
}

pub(crate) fn transient(during: &'static str, cause: &str) {
    counter!("weir_transient_errors_total", "during" => during).increment(1);
    tracing::warn!(during, cause, "transient Kafka error");
}

pub(crate) fn stopped(error: Option<&str>) {
    match error {
        Some(error) => {
            counter!("weir_fatal_errors_total").increment(1);
            tracing::error!(error, "weir application stopped with an error");
        }
        None => tracing::info!("weir application stopped cleanly"),
    }
}
