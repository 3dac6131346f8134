//! `weir state inspect`: what a state directory holds per task, against the group's offsets.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde::Serialize;
use weir_state::{changelog_topic, pending_decided, standing, Marks, Standing, StateManager};

use crate::kafka::Cluster;
use crate::table::{self, opt};
use crate::Format;

#[derive(Debug, Serialize)]
struct TaskRow {
    task: i32,
    topic: String,
    /// `R`: the input offset stored with the state.
    stored: i64,
    /// `K`: the group's committed offset (`None`: none, or not asked).
    committed: Option<i64>,
    status: String,
    /// A prepared, not applied commit: its sequence number and what recovery will do with it.
    pending: Option<String>,
    /// Per store: the next changelog offset stored, and the changelog's last stable offset.
    changelog: BTreeMap<String, (i64, Option<i64>)>,
    seq: u64,
    generation: Option<u64>,
}

pub fn inspect(
    cluster: Option<&Cluster>,
    state_dir: &Path,
    application_id: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let app = match application_id {
        Some(a) => a.to_string(),
        None => only_application(state_dir)?,
    };
    let path = state_dir.join(&app).join("rocksdb");
    if !path.join("CURRENT").exists() {
        bail!(
            "{} holds no weir state (no RocksDB there); --state-dir is the application's \
             state.dir, which holds {{application.id}}/rocksdb",
            path.display()
        );
    }
    let (mut state, _) = StateManager::open(&path, Vec::new()).map_err(|e| {
        let hint = if e.to_string().contains("lock") {
            ": an instance is running on this directory (RocksDB is locked); stop it, or \
             inspect a copy"
        } else {
            ""
        };
        anyhow::anyhow!("opening {}: {e}{hint}", path.display())
    })?;
    let tasks = state.tasks()?;
    let committed = match cluster {
        Some(c) => {
            let mut topics = BTreeMap::new();
            for (_, meta) in &tasks {
                for t in meta.offsets.keys() {
                    if !topics.contains_key(t) {
                        topics.insert(t.clone(), c.partitions(t)?);
                    }
                }
            }
            Some(c.committed(&app, &topics)?)
        }
        None => None,
    };
    // A changelog deleted by a state reset (recreated at the next start) has no offsets.
    let existing = match cluster {
        Some(c) => c.topics()?,
        None => BTreeMap::new(),
    };
    let mut rows = Vec::new();
    for (task, meta) in &tasks {
        let pending = state.pending(*task)?;
        let mut changelog = BTreeMap::new();
        for (store, next) in &meta.changelog {
            let topic = changelog_topic(&app, store);
            let end = match cluster {
                Some(c) if existing.contains_key(&topic) => Some(c.watermarks(&topic, *task)?.2),
                _ => None,
            };
            changelog.insert(store.clone(), (*next, end));
        }
        for (topic, r) in &meta.offsets {
            let k = committed
                .as_ref()
                .and_then(|c| c.get(&(topic.clone(), *task)));
            let marks = k.map(|k| Marks::parse(&k.metadata)).unwrap_or_default();
            let status = match (committed.is_some(), k) {
                (false, _) => "not compared (--offline)".to_string(),
                (true, Some(_)) if marks.reset.is_some() && marks.reset != meta.reset => {
                    "reset: the offsets were reset with --reset-state; wiped at the next start"
                        .into()
                }
                (true, k) => match (standing(Some(*r), k.map(|k| k.offset)), k) {
                    (Standing::InStep, _) => "in step".into(),
                    (Standing::Behind, Some(k)) => format!(
                        "behind by {}: restores the changelog tail at the next start",
                        k.offset - r
                    ),
                    (Standing::Ahead, Some(k)) => format!(
                        "ahead by {}: the offsets were moved back; the next start refuses (reset \
                         with `weir offsets reset --reset-state`, or delete this directory)",
                        r - k.offset
                    ),
                    (_, _) => "no committed offset: the group has none for this partition".into(),
                },
            };
            let pending = pending.as_ref().map(|p| {
                let decided = committed.as_ref().is_some_and(|c| {
                    pending_decided(p, |t| {
                        c.get(&(t.to_string(), *task))
                            .map(|k| (k.offset, Marks::parse(&k.metadata).seq))
                    })
                });
                let fate = match (committed.is_some(), decided) {
                    (false, _) => "fate decided by Kafka at the next start",
                    (true, true) => "Kafka committed it: rolls forward at the next start",
                    (true, false) => "Kafka did not commit it: rolls back at the next start",
                };
                format!("seq {}: {fate}", p.seq)
            });
            rows.push(TaskRow {
                task: *task,
                topic: topic.clone(),
                stored: *r,
                committed: k.map(|k| k.offset),
                status,
                pending,
                changelog: changelog.clone(),
                seq: meta.seq,
                generation: meta.reset,
            });
        }
    }
    table::print(format, &rows, || {
        let lines: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.task.to_string(),
                    r.topic.clone(),
                    r.stored.to_string(),
                    opt(r.committed),
                    r.changelog
                        .iter()
                        .map(|(s, (n, end))| format!("{s}:{n}/{}", opt(*end)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    r.pending.clone().unwrap_or_else(|| "-".into()),
                    r.status.clone(),
                ]
            })
            .collect();
        format!(
            "application {app}, state {}\n\n{}",
            path.display(),
            table::render(
                &[
                    "TASK",
                    "TOPIC",
                    "STORED",
                    "COMMITTED",
                    "CHANGELOG (next/end)",
                    "PENDING",
                    "STATUS"
                ],
                &lines
            )
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// The one application with state under `state_dir`.
fn only_application(state_dir: &Path) -> anyhow::Result<String> {
    let entries = std::fs::read_dir(state_dir)
        .with_context(|| format!("reading the state directory {}", state_dir.display()))?;
    let apps: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("rocksdb").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match apps.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{} holds no weir application state ({{application.id}}/rocksdb)",
            state_dir.display()
        ),
        many => bail!(
            "{} holds the state of several applications ({}); choose one with --application-id",
            state_dir.display(),
            many.join(", ")
        ),
    }
}
