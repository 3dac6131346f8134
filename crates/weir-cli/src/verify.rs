//! `weir verify`: the exactly-once verifier of `weir-verify` (the one the test kit uses) over
//! real topics, with progress bars.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use weir_kafka::clients::{base_config, ReaderContext};
use weir_verify::{verify_copy, verify_totals, ReadRecord};

use crate::kafka::Cluster;
use crate::Format;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The topic the pipeline read.
    #[arg(long)]
    input: String,
    /// The topic the pipeline wrote.
    #[arg(long)]
    output: String,
    /// What the pipeline computes: `mirror` (a copy: same key, value and partition, in order)
    /// or `totals` (the running count/sum/min/max per key of the `totals` example).
    #[arg(long, value_enum, default_value_t = VerifyMode::Mirror)]
    mode: VerifyMode,
    /// Before the check, read the output live (read_committed) for this many seconds while the
    /// pipeline runs: any record seen then but missing from the final log is an aborted read.
    #[arg(long, value_name = "SECONDS")]
    live: Option<u64>,
    /// `table` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    Mirror,
    Totals,
}

#[derive(Serialize)]
struct Summary {
    exactly_once: bool,
    input: usize,
    output: usize,
    live: usize,
    duplicated: Vec<String>,
    lost: Vec<String>,
    unexpected: Vec<String>,
    misplaced: Vec<String>,
    reordered: Vec<String>,
    wrong: Vec<String>,
    aborted_reads: Vec<String>,
}

pub fn run(cluster: &Cluster, args: &VerifyArgs, format: Format) -> anyhow::Result<ExitCode> {
    for t in [&args.input, &args.output] {
        cluster.partitions(t)?;
    }
    let live = match args.live {
        Some(secs) => Some(read(
            cluster,
            &args.output,
            Some(Duration::from_secs(secs)),
        )?),
        None => None,
    };
    let input = read(cluster, &args.input, None)?;
    let output = read(cluster, &args.output, None)?;
    let mut report = match args.mode {
        VerifyMode::Mirror => verify_copy(&input, &output),
        VerifyMode::Totals => verify_totals(&input, &output),
    };
    if let Some(live) = &live {
        report.check_live_read(live, &output);
    }
    let ok = report.is_exactly_once();
    match format {
        Format::Table => {
            print!("{report}");
            println!(
                "{}",
                if ok {
                    "exactly once: every input record is in the output once, in order"
                } else {
                    "NOT exactly once (see above)"
                }
            );
        }
        Format::Json => {
            let cap = |v: &Vec<String>| v.iter().take(100).cloned().collect::<Vec<_>>();
            let s = Summary {
                exactly_once: ok,
                input: report.input,
                output: report.output,
                live: report.live,
                duplicated: cap(&report.duplicated),
                lost: cap(&report.lost),
                unexpected: cap(&report.unexpected),
                misplaced: cap(&report.misplaced),
                reordered: cap(&report.reordered),
                wrong: cap(&report.wrong),
                aborted_reads: cap(&report.aborted_reads),
            };
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads `topic` with read_committed, with a progress bar: to its current last stable offsets,
/// or (`live`) from the beginning for that long, whatever arrives.
fn read(cluster: &Cluster, topic: &str, live: Option<Duration>) -> anyhow::Result<Vec<ReadRecord>> {
    let n = cluster.partitions(topic)?;
    let mut ends = BTreeMap::new();
    for p in 0..n {
        ends.insert(p, cluster.watermarks(topic, p)?.2);
    }
    let consumer: BaseConsumer<ReaderContext> = base_config(&cluster.bootstrap)
        .set("group.id", format!("weir-verify-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext)
        .context("creating a reader")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .context("assign")?;
    }
    consumer.assign(&tpl).context("assigning the partitions")?;
    let total: i64 = ends.values().sum();
    let bar = match live {
        Some(d) => {
            let bar = ProgressBar::new(d.as_secs());
            bar.set_style(
                ProgressStyle::with_template("reading {msg} live {bar:30} {pos}/{len} s")
                    .expect("template"),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new(total.max(0) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "reading {msg} {bar:30} {pos}/{len} offsets {per_sec}",
                )
                .expect("template"),
            );
            bar
        }
    };
    bar.set_message(topic.to_string());
    let started = Instant::now();
    let mut pending: Vec<i32> = ends
        .iter()
        .filter(|(_, e)| **e > 0)
        .map(|(p, _)| *p)
        .collect();
    let mut position: BTreeMap<i32, i64> = BTreeMap::new();
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    loop {
        match live {
            Some(d) if started.elapsed() >= d => break,
            Some(_) => bar.set_position(started.elapsed().as_secs()),
            None if pending.is_empty() => break,
            None => {}
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if live.is_none() && idle_since.elapsed() > Duration::from_secs(60) {
                    bail!("reading {topic}: no progress for 60 s towards the end offsets {ends:?}");
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if live.is_none() {
                    pending.retain(|x| *x != p);
                }
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let p = m.partition();
                position.insert(p, m.offset() + 1);
                if live.is_none() {
                    if m.offset() + 1 >= ends[&p] {
                        pending.retain(|x| *x != p);
                    }
                    if m.offset() >= ends[&p] {
                        continue;
                    }
                    bar.set_position(position.values().sum::<i64>().max(0) as u64);
                }
                out.push(ReadRecord::from_message(&m));
            }
        }
    }
    bar.finish_and_clear();
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}
