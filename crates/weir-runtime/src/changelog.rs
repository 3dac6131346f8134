//! Changelog topics: created (compacted, one partition per task) and checked at start-up,
//! and read back into a task's store in a restore (DESIGN.md, "Recovery", `R < K`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use weir_core::{Config, RestoreProgress};
use weir_kafka::admin::{Admin, TopicSpec};
use weir_kafka::clients::{client_config, ReaderContext};
use weir_state::{changelog_topic, StateManager};

use crate::RuntimeError;

/// A function told how each state restore progresses (see `App::on_restore_progress`).
pub type RestoreObserver = std::sync::Arc<dyn Fn(&RestoreProgress) + Send + Sync>;

/// Creates missing changelog topics (compacted, one partition per task) and checks existing
/// ones. Blocking.
pub(crate) fn ensure_changelogs(
    config: &Config,
    state: &StateManager,
    admin: &Admin,
) -> Result<(), RuntimeError> {
    let mut tasks = 0;
    for t in &config.input_topics {
        tasks = tasks.max(admin.partition_count(t)?);
    }
    for store in state.stores().filter(|s| s.changelog) {
        let topic = changelog_topic(&config.application_id, &store.name);
        match admin.partition_count(&topic) {
            Ok(n) if n != tasks => {
                return Err(RuntimeError::Changelog {
                    topic,
                    problem: format!(
                        "has {n} partitions but the input has {tasks} tasks; a changelog needs \
                         one partition per task. Delete it (its state is then rebuilt from the \
                         input) or fix the input topics"
                    ),
                })
            }
            Ok(_) => {
                let policy = admin.topic_config(&topic, "cleanup.policy")?;
                if !policy.as_deref().unwrap_or_default().contains("compact") {
                    return Err(RuntimeError::Changelog {
                        topic,
                        problem: format!(
                            "has cleanup.policy={} ; a changelog must be compacted or old state is \
                             deleted by retention. Set cleanup.policy=compact on it",
                            policy.unwrap_or_default()
                        ),
                    });
                }
            }
            Err(weir_kafka::admin::AdminError::MissingTopic { .. }) => {
                // The broker's default.replication.factor.
                let mut spec = TopicSpec::new(&topic, tasks);
                spec.configs
                    .push(("cleanup.policy".into(), "compact".into()));
                admin.create_topics(&[spec])?;
                tracing::info!(topic, partitions = tasks, "created changelog topic");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Restores `store` of `task` from its changelog partition, from `from` (or the beginning,
/// after wiping the local copy) to the last stable offset, in batches. Each batch records the
/// changelog position it reached with it (`StateManager::restore_batch`), so an interrupted
/// restore resumes there. Returns the next changelog offset: the high watermark, or the last
/// stable offset if another producer's transaction is still open there. Blocking.
pub(crate) fn restore(
    config: &Config,
    state: &mut StateManager,
    store: &str,
    task: i32,
    from: Option<i64>,
    observer: Option<&RestoreObserver>,
) -> Result<i64, RuntimeError> {
    let topic = changelog_topic(&config.application_id, store);
    let kafka = |during: &str, e: KafkaError| RuntimeError::Kafka {
        during: format!("restoring {topic}/{task}: {during}"),
        source: e.into(),
    };
    let consumer: BaseConsumer<ReaderContext> = client_config(config)
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("group.id", format!("{}-restore", config.application_id))
        .create_with_context(ReaderContext)
        .map_err(|e| kafka("creating the reader", e))?;
    let (low, end) = consumer
        .fetch_watermarks(&topic, task, Duration::from_secs(30))
        .map_err(|e| kafka("watermarks", e))?;
    let start = match from {
        Some(o) => o.max(low),
        None => {
            state.wipe(task, store)?;
            low
        }
    };
    if start >= end {
        return Ok(end.max(start));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, task, Offset::Offset(start))
        .map_err(|e| kafka("assign", e))?;
    consumer.assign(&tpl).map_err(|e| kafka("assign", e))?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(10_000);
    let mut progress = RestoreProgress {
        store: store.to_string(),
        task,
        changelog_topic: topic.clone(),
        from: start,
        end,
        position: start,
        restored: 0,
        finished: false,
    };
    let report = |p: &RestoreProgress| {
        metrics::gauge!("weir_restore_remaining_records", "store" => p.store.clone())
            .set(p.remaining() as f64);
        if let Some(observer) = observer {
            observer(p);
        }
    };
    report(&progress);
    tracing::info!(
        topic,
        task,
        from = start,
        to = end,
        "restoring state from the changelog"
    );
    let mut eof = false;
    while progress.position < end && !eof {
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // The end for a read_committed reader: the last stable offset. The consumer's
                // position is past the trailing transaction marker (which the loop never
                // sees, so `position` alone stays one short of the high watermark); below
                // the high watermark only if another producer's transaction is still open
                // there, and then the next restore must read from here, not from `end`.
                eof = true;
                let after = consumer.position().ok().and_then(|tpl| {
                    tpl.find_partition(&topic, task)
                        .and_then(|p| p.offset().to_raw())
                });
                if let Some(after) = after.filter(|&o| o >= 0) {
                    progress.position = progress.position.max(after);
                }
            }
            Some(Err(e)) => return Err(kafka("reading", e)),
            Some(Ok(m)) => {
                progress.position = m.offset() + 1;
                if let Some(key) = m.key() {
                    batch.push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
                }
            }
        }
        if batch.len() >= 10_000 || ((progress.position >= end || eof) && !batch.is_empty()) {
            state.restore_batch(task, store, &batch, progress.position)?;
            progress.restored += batch.len() as u64;
            batch.clear();
            report(&progress);
            tracing::debug!(
                topic,
                task,
                position = progress.position,
                "restore batch applied"
            );
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            let (position, restored) = (progress.position, progress.restored);
            tracing::info!(topic, task, position, end, restored, "restoring");
            last_log = Instant::now();
        }
    }
    if progress.position < end {
        tracing::info!(
            topic,
            task,
            stable = progress.position,
            end,
            "restore stopped at the last stable offset: a transaction of another producer is \
             still open in the changelog; the next restore reads on from there"
        );
    }
    progress.finished = true;
    report(&progress);
    let restored = progress.restored;
    metrics::counter!("weir_restored_records_total").increment(restored);
    tracing::info!(topic, task, restored, took = ?started.elapsed(), "restore finished");
    Ok(progress.position)
}
