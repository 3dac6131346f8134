//! `weir offsets reset`: every mode of `kafka-consumer-groups.sh --reset-offsets`, dry run by
//! default, refused while the group has members, and state-aware for weir applications.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::ArgGroup;
use serde::Serialize;
use weir_state::Marks;

use crate::kafka::Cluster;
use crate::plan::{self, Mode, Move, PartitionFacts};
use crate::table::{self, opt};
use crate::Format;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("mode").required(true).multiple(false)))]
#[command(group(ArgGroup::new("scope").multiple(true)))]
pub struct ResetArgs {
    /// The group (a weir application's `application.id`).
    #[arg(long)]
    group: String,
    /// Every topic the group has committed offsets on.
    #[arg(long, group = "scope")]
    all_topics: bool,
    /// A topic, optionally with partitions: `orders` or `orders:0,2` (repeatable).
    #[arg(long = "topic", value_name = "TOPIC[:P,...]", group = "scope")]
    topics: Vec<String>,
    /// To the first offset still in the log.
    #[arg(long, group = "mode")]
    to_earliest: bool,
    /// To the end of the log (skip everything not yet processed).
    #[arg(long, group = "mode")]
    to_latest: bool,
    /// To the first record at or after this time: YYYY-MM-DDTHH:mm:SS[.sss][zone] (no zone:
    /// local time).
    #[arg(long, group = "mode", value_name = "DATETIME")]
    to_datetime: Option<String>,
    /// To the first record at or after now minus this ISO-8601 duration (PnDTnHnMnS, e.g.
    /// PT30M).
    #[arg(long, group = "mode", value_name = "DURATION")]
    by_duration: Option<String>,
    /// Move each committed offset by N (negative: back, reprocess).
    #[arg(long, group = "mode", value_name = "N", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// To this offset in every partition in scope.
    #[arg(long, group = "mode", value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// To the current committed offsets (with --reset-state: start the state over in place).
    #[arg(long, group = "mode")]
    to_current: bool,
    /// From a CSV file of `topic,partition,offset` lines (what --export prints).
    #[arg(long, group = "mode", value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Apply the plan (without it, nothing changes: a dry run).
    #[arg(long)]
    execute: bool,
    /// Print the plan as CSV (`topic,partition,offset`), for --from-file.
    #[arg(long)]
    export: bool,
    /// Also reset the application's state: delete its changelog topics and mark every task's
    /// local state for wiping (done by each instance when it next starts), so state and offsets
    /// stay in step.
    #[arg(long)]
    reset_state: bool,
    #[command(flatten)]
    pub output: crate::FormatArg,
}

#[derive(Serialize)]
struct Outcome<'a> {
    group: &'a str,
    executed: bool,
    moves: &'a [Move],
    /// With --reset-state: the changelog topics deleted (or to delete) and the new state
    /// generation.
    state_reset: Option<StateReset>,
}

#[derive(Serialize)]
struct StateReset {
    changelogs: Vec<String>,
    generation: u64,
}

pub fn run(cluster: &Cluster, args: &ResetArgs, format: Format) -> anyhow::Result<ExitCode> {
    let group = args.group.as_str();
    // 1. Only an empty group: a running instance would overwrite the new offsets with its
    //    next commit (and its state would disagree with them).
    if let Some(g) = cluster.group(group)? {
        if !g.members.is_empty() {
            let names: Vec<String> = g
                .members
                .iter()
                .map(|m| format!("{} on {} ({})", m.client_id, m.host, m.member_id))
                .collect();
            bail!(
                "group {group:?} has {} active member(s): {}. Stop every instance of the \
                 application first: offsets can only be reset while the group is empty (a \
                 running member would overwrite them with its next commit)",
                names.len(),
                names.join(", ")
            );
        }
    }
    let mode = mode(args)?;
    let committed = cluster.all_committed(group)?;

    // 2. The partitions in scope.
    let mut scope: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if let Mode::FromFile(offsets) = &mode {
        for (t, p) in offsets.keys() {
            scope.entry(t.clone()).or_default().push(*p);
        }
    } else if args.all_topics {
        if committed.is_empty() {
            bail!(
                "group {group:?} has no committed offsets, so --all-topics names nothing; name \
                 the topics with --topic"
            );
        }
        for (t, p) in committed.keys() {
            scope.entry(t.clone()).or_default().push(*p);
        }
    } else if !args.topics.is_empty() {
        for spec in &args.topics {
            let (topic, parts) = parse_topic(spec)?;
            let n = cluster.partitions(&topic)?;
            let parts = match parts {
                Some(parts) => {
                    if let Some(bad) = parts.iter().find(|p| **p >= n) {
                        bail!(
                            "{topic} has {n} partitions (0..{}); there is no partition {bad}",
                            n - 1
                        );
                    }
                    parts
                }
                None => (0..n).collect(),
            };
            scope.entry(topic).or_default().extend(parts);
        }
    } else {
        bail!("say which partitions to reset: --all-topics, or --topic TOPIC[:P,...]");
    }

    // 3. What the cluster says about each, and the plan.
    let time = match mode {
        Mode::Datetime(ms) => Some(ms),
        Mode::ByDuration(d) => Some(chrono::Utc::now().timestamp_millis() - d),
        _ => None,
    };
    let mut facts: BTreeMap<(String, i32), PartitionFacts> = BTreeMap::new();
    for (topic, parts) in &scope {
        let n = cluster.partitions(topic)?;
        let for_time = match time {
            Some(ms) => cluster.offsets_for_time(topic, parts, ms)?,
            None => BTreeMap::new(),
        };
        for p in parts {
            if *p >= n {
                bail!("{topic} has {n} partitions; there is no partition {p}");
            }
            let (log_start, log_end, _) = cluster.watermarks(topic, *p)?;
            facts.insert(
                (topic.clone(), *p),
                PartitionFacts {
                    committed: committed.get(&(topic.clone(), *p)).map(|c| c.offset),
                    log_start,
                    log_end,
                    for_time: for_time.get(p).copied().flatten(),
                },
            );
        }
    }
    let moves = plan::plan(&mode, &facts)?;
    for m in &moves {
        if let Some(why) = &m.clamped {
            eprintln!("weir: warning: {why}");
        }
    }

    // 4. State: a weir application with state moves its state with its offsets, or not at all.
    let prefix = format!("{group}-");
    let changelogs: Vec<String> = cluster
        .topics()?
        .into_keys()
        .filter(|t| t.starts_with(&prefix) && t.ends_with("-changelog"))
        .collect();
    if !changelogs.is_empty() && !args.reset_state {
        bail!(
            "group {group:?} is a stateful weir application (changelog topics: {}). Moving its \
             offsets without its state would put them out of step: its aggregates would count \
             records twice (moved back) or miss them (moved forward), and instances whose local \
             state is ahead of the offsets refuse to start. Add --reset-state to start the state \
             over from the new offsets (the changelogs are deleted and every instance wipes its \
             local state when it next starts)",
            changelogs.join(", ")
        );
    }
    let generation = args
        .reset_state
        .then(|| chrono::Utc::now().timestamp_millis() as u64);

    // 5. Show, and apply.
    if args.export {
        print!("{}", plan::to_csv(&moves));
    } else {
        let outcome = Outcome {
            group,
            executed: args.execute,
            moves: &moves,
            state_reset: generation.map(|g| StateReset {
                changelogs: changelogs.clone(),
                generation: g,
            }),
        };
        table::print(format, &outcome, || {
            let rows: Vec<Vec<String>> = moves
                .iter()
                .map(|m| {
                    vec![
                        m.topic.clone(),
                        m.partition.to_string(),
                        opt(m.current),
                        m.new.to_string(),
                    ]
                })
                .collect();
            let mut text = table::render(&["TOPIC", "PARTITION", "CURRENT", "NEW"], &rows);
            if args.reset_state {
                text.push_str(&format!(
                    "state: {} changelog topic(s) {}; every task's local state wiped when its \
                     instance next starts\n",
                    if args.execute { "deleted" } else { "to delete" },
                    if changelogs.is_empty() {
                        "(none)".to_string()
                    } else {
                        changelogs.join(", ")
                    }
                ));
            }
            if !args.execute {
                text.push_str("dry run: nothing changed. Add --execute to apply.\n");
            }
            text
        });
    }
    if !args.execute {
        return Ok(ExitCode::SUCCESS);
    }
    let mut commits: Vec<((String, i32), i64, String)> = moves
        .iter()
        .map(|m| ((m.topic.clone(), m.partition), m.new, String::new()))
        .collect();
    if let Some(generation) = generation {
        // Every committed partition carries the new generation — those not moved keep their
        // offset — so every task starts its state over, wherever it runs next.
        let mark = Marks::format(0, Some(generation));
        for c in &mut commits {
            c.2.clone_from(&mark);
        }
        for (tp, c) in &committed {
            if !commits.iter().any(|(k, _, _)| k == tp) {
                commits.push((tp.clone(), c.offset, mark.clone()));
            }
        }
        if !changelogs.is_empty() {
            cluster.delete_topics(&changelogs)?;
        }
    }
    cluster.commit(group, &commits)?;
    if format == Format::Table && !args.export {
        println!("done: group {group:?} moved ({} partitions)", moves.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn mode(args: &ResetArgs) -> anyhow::Result<Mode> {
    Ok(if args.to_earliest {
        Mode::Earliest
    } else if args.to_latest {
        Mode::Latest
    } else if let Some(t) = &args.to_datetime {
        Mode::Datetime(plan::parse_datetime(t)?)
    } else if let Some(d) = &args.by_duration {
        Mode::ByDuration(plan::parse_duration(d)?)
    } else if let Some(n) = args.shift_by {
        Mode::ShiftBy(n)
    } else if let Some(o) = args.to_offset {
        Mode::ToOffset(o)
    } else if args.to_current {
        Mode::Current
    } else if let Some(file) = &args.from_file {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {name}"))?;
        Mode::FromFile(plan::parse_csv(&text, &name)?)
    } else {
        bail!("choose a mode: --to-earliest, --to-latest, --to-datetime, --by-duration, --shift-by, --to-offset, --to-current or --from-file")
    })
}

/// `orders` or `orders:0,2`.
fn parse_topic(spec: &str) -> anyhow::Result<(String, Option<Vec<i32>>)> {
    match spec.rsplit_once(':') {
        None => Ok((spec.to_string(), None)),
        Some((topic, parts)) => {
            let parts = parts
                .split(',')
                .map(|p| p.trim().parse::<i32>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "--topic {spec:?}: expected TOPIC or TOPIC:P[,P...] with partition numbers"
                    )
                })?;
            Ok((topic.to_string(), Some(parts)))
        }
    }
}
