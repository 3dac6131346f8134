//! Named telemetry events: each emits one `tracing` event and updates its metrics, so logs and
//! metrics never disagree. Labels are low-cardinality (no offsets, no keys).
//!
//! Levels: `info` for lifecycle (start, assignment, shutdown), `debug` for every commit, `warn`
//! for aborts, skips and transient errors, `error` for what stops the application.

use std::time::Duration;

use metrics::{counter, histogram};
use weir_core::{AssignedPartition, TopicPartition};

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

pub(crate) fn poison(skipped: u64, dead_lettered: u64) {
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
