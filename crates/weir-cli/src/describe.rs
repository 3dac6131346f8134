//! `weir groups list`, `weir offsets describe`, `weir lag`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::kafka::{Cluster, Group};
use crate::table::{self, opt};
use crate::Format;

pub fn groups_list(cluster: &Cluster, format: Format) -> anyhow::Result<ExitCode> {
    let groups = cluster.groups(None)?;
    table::print(format, &groups, || {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    g.state.clone(),
                    g.protocol_type.clone(),
                    g.members.len().to_string(),
                ]
            })
            .collect();
        table::render(&["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"], &rows)
    });
    Ok(ExitCode::SUCCESS)
}

/// One partition of a group's description.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    pub last_stable: i64,
    /// `log_end - committed` (what kafka-consumer-groups.sh shows).
    pub lag: Option<i64>,
    /// `last_stable - committed`: committed records a read_committed reader has yet to process.
    pub stable_lag: Option<i64>,
    pub member: Option<String>,
    pub host: Option<String>,
    pub client_id: Option<String>,
}

/// A group's description.
#[derive(Clone, Debug, Serialize)]
pub struct Description {
    pub group: String,
    pub state: String,
    pub members: usize,
    pub partitions: Vec<PartitionRow>,
    pub total_lag: i64,
}

/// Describes `group`: every partition it has committed offsets on or its members own.
pub fn describe(cluster: &Cluster, group: &str) -> anyhow::Result<Description> {
    let info: Option<Group> = cluster.group(group)?;
    let committed = cluster.all_committed(group)?;
    let members = info.as_ref().map(|g| g.members.clone()).unwrap_or_default();
    if committed.is_empty() && members.is_empty() {
        bail!(
            "group {group:?} not found on {}: it has no active member and no committed offset. \
             `weir groups list` shows the groups",
            cluster.bootstrap
        );
    }
    let mut owners = BTreeMap::new();
    for m in &members {
        for tp in &m.assignment {
            owners.insert(tp.clone(), m);
        }
    }
    let mut keys: Vec<(String, i32)> = committed.keys().cloned().collect();
    keys.extend(owners.keys().cloned());
    keys.sort();
    keys.dedup();
    let mut partitions = Vec::new();
    for (topic, partition) in keys {
        let (log_start, log_end, last_stable) = cluster.watermarks(&topic, partition)?;
        let c = committed.get(&(topic.clone(), partition)).map(|c| c.offset);
        let owner = owners.get(&(topic.clone(), partition));
        partitions.push(PartitionRow {
            lag: c.map(|c| (log_end - c).max(0)),
            stable_lag: c.map(|c| (last_stable - c).max(0)),
            member: owner.map(|m| m.member_id.clone()),
            host: owner.map(|m| m.host.clone()),
            client_id: owner.map(|m| m.client_id.clone()),
            topic,
            partition,
            committed: c,
            log_start,
            log_end,
            last_stable,
        });
    }
    let total_lag = partitions.iter().filter_map(|p| p.lag).sum();
    Ok(Description {
        group: group.to_string(),
        state: info.map_or_else(|| "Empty".to_string(), |g| g.state),
        members: members.len(),
        partitions,
        total_lag,
    })
}

fn describe_text(d: &Description) -> String {
    let rows: Vec<Vec<String>> = d
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                opt(p.committed),
                p.log_start.to_string(),
                p.log_end.to_string(),
                p.last_stable.to_string(),
                opt(p.lag),
                p.member.clone().unwrap_or_else(|| "-".into()),
                p.host.clone().unwrap_or_else(|| "-".into()),
                p.client_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "GROUP {}  STATE {}  MEMBERS {}  TOTAL LAG {}\n\n{}",
        d.group,
        d.state,
        d.members,
        d.total_lag,
        table::render(
            &[
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "LOG-START",
                "LOG-END",
                "LAST-STABLE",
                "LAG",
                "CONSUMER-ID",
                "HOST",
                "CLIENT-ID"
            ],
            &rows
        )
    )
}

pub fn offsets_describe(
    cluster: &Cluster,
    group: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let d = describe(cluster, group)?;
    table::print(format, &d, || describe_text(&d));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct LagArgs {
    /// The group (a weir application's `application.id`).
    #[arg(long)]
    group: String,
    /// Refresh until interrupted (Ctrl-C).
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Stop after this many refreshes with --watch (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[command(flatten)]
    pub output: crate::FormatArg,
}

#[derive(Serialize)]
struct LagLine<'a> {
    at: String,
    group: &'a str,
    total_lag: i64,
    partitions: Vec<(String, i32, Option<i64>)>,
}

pub fn lag(cluster: &Cluster, args: &LagArgs, format: Format) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        let d = describe(cluster, &args.group)?;
        let at = chrono::Local::now().format("%H:%M:%S").to_string();
        match format {
            // One JSON object per line: easy to follow with jq.
            Format::Json => println!(
                "{}",
                serde_json::to_string(&LagLine {
                    at,
                    group: &args.group,
                    total_lag: d.total_lag,
                    partitions: d
                        .partitions
                        .iter()
                        .map(|p| (p.topic.clone(), p.partition, p.lag))
                        .collect(),
                })?
            ),
            Format::Table => {
                if args.watch && terminal {
                    print!("\x1b[2J\x1b[H"); // clear the screen, cursor home
                }
                let rows: Vec<Vec<String>> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            opt(p.committed),
                            p.log_end.to_string(),
                            opt(p.lag),
                        ]
                    })
                    .collect();
                println!(
                    "{at}  group {}  {}  total lag {}",
                    d.group, d.state, d.total_lag
                );
                print!(
                    "{}",
                    table::render(
                        &["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"],
                        &rows
                    )
                );
                if args.watch {
                    println!();
                }
            }
        }
        shown += 1;
        if !args.watch || (args.count > 0 && shown >= args.count) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs_f64(args.interval.max(0.1)));
    }
}
