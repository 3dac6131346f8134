//! # bench — weir against the raw client (the ceiling) and Kafka Streams, on one broker
//!
//! `just bench` (a program, not a test). It starts a local broker (or uses
//! `--bootstrap-servers`), preloads the datasets once — `--records-100b` records of 100 B,
//! `--records-1kb` of 1 KB, and `--totals-records` payments over `--totals-keys` accounts —
//! builds the Kafka Streams contender with Maven (`bench/kstreams`), and runs, one after the
//! other, on the same data and broker, each as its own process:
//!
//! | contender | what |
//! |---|---|
//! | `ceiling` | a raw rdkafka copy: consume, produce (acks=all, idempotent, weir-eos's producer settings: linger 100 ms in a 4 MiB window, flushed when idle), offsets committed async every interval; no transactions |
//! | `weir-eos` | the `mirror` example, exactly_once |
//! | `weir-eos-inline` | the same with `commit.overlap = false` (each commit completes before the next transaction starts) |
//! | `weir-alo` | the `mirror` example, at_least_once |
//! | `kstreams-eos` | Kafka Streams 4.1 `stream(in).to(out)`, exactly_once_v2 |
//! | `weir-totals` | the `totals` example (RocksDB store with changelog), exactly_once |
//! | `weir-totals-inline` | the same with `commit.overlap = false` |
//! | `kstreams-totals` | the same per-key totals in Kafka Streams (RocksDB store with changelog and the record cache), exactly_once_v2 |
//! | `weir-windows` | the `windows` example: count and sum per key per tumbling window with grace, each emitted once when it closes, exactly_once |
//! | `kstreams-windows` | the same in Kafka Streams: `groupByKey().windowedBy(TimeWindows.ofSizeAndGrace(..)).aggregate(..)` with `suppress(untilWindowCloses)`, exactly_once_v2 |
//!
//! all at `--commit-interval-ms` (100), plus `weir-eos` at each `--sweep` interval (10, 1000 ms)
//! on the 100 B data. Every run of a contender:
//!
//! 1. **throughput**: the contender drains the preloaded topic into a new output topic (with
//!    `message.timestamp.type = LogAppendTime`); the run lasts from the broker's append of the
//!    first output to the moment a read_committed reader sees the last one committed (start-up
//!    — JVM, group join — excluded; a transaction's time before its commit included); CPU
//!    seconds and peak RSS of the contender's process are read from /proc; then the whole output is verified record by record against the input
//!    (`verify_copy` or `verify_totals`): a run that is not exactly-once is reported INVALID and
//!    does not count;
//! 2. **latency** (100 B and totals data): a new input topic, the contender started, records
//!    produced at `--latency-rate` per second for `--latency-secs`, each stamped with its send
//!    time; the reader takes `time seen committed − record timestamp` for each: p50 and p99.
//!    For the windows contenders, **window-close latency**: records stamped with their send
//!    time for `--window-latency-secs`, windows of `--latency-window-ms` and no grace, so a
//!    window closes as the first record past its end arrives; the reader takes `time seen
//!    committed − window end` for each result. For weir it also replays the run's changelogs
//!    (windows and timers) to count the store's live rows at each tenth of the run: the state
//!    size over time.
//!
//! Runs repeat `--runs` times (3), round-robin per dataset (run 1 of every contender, then run
//! 2, ..., every other round in reverse order), so a drift of the machine over the session does
//! not favour whoever runs first, after `--warmup` (2) unmeasured rounds (throughput only, still verified) that take the
//! broker and the machine past their slow first minutes — more on the first dataset if that
//! makes fewer than `--warmup-runs` (12) runs, and then up to `--warmup-extra` (4) more until a
//! round in which the broker's JIT compiler threads took at most `--jit-quiet-secs` (0.25 s)
//! of every run; the table shows medians and the ratios
//! to the ceiling and to Kafka Streams from this same invocation, of the medians and round by
//! round; `--json FILE` (default
//! `target/bench/bench-<unix time>.json`) gets every run.
//!
//! ```text
//! just bench                                           # the defaults above, ~35 minutes
//! just bench --records-100b 300000 --records-1kb 150000 --totals-records 150000 --runs 1
//! ```
//! The results and the machine they came from are in `docs/benchmarks.md`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use weir_kafka::admin::TopicSpec;
use weir_kafka::clients::base_config;
use weir_testkit::{
    expected_windows, unique, verify_copy, verify_totals, verify_windows, ChildProcess, Isolation,
    Kafka, ReadRecord,
};

#[derive(Parser, Debug)]
#[command(about = "weir vs the raw client ceiling vs Kafka Streams, on one broker")]
struct Args {
    /// Records of the 100-byte dataset (0: skip it).
    #[arg(long, default_value_t = 2_000_000)]
    records_100b: usize,
    /// Records of the 1 KB dataset (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    records_1kb: usize,
    /// Payments of the totals dataset (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    totals_records: usize,
    /// Accounts (keys) of the totals dataset.
    #[arg(long, default_value_t = 100_000)]
    totals_keys: usize,
    /// Payments of the windows dataset (0: skip it): one per ms of event time, most up to
    /// 500 ms out of order, one in ten up to two windows behind (some late), then a record per
    /// partition far ahead that closes every window.
    #[arg(long, default_value_t = 1_000_000)]
    windows_records: usize,
    /// Accounts (keys) of the windows dataset.
    #[arg(long, default_value_t = 1_000)]
    windows_keys: usize,
    /// Window size of the windows dataset, ms of event time.
    #[arg(long, default_value_t = 10_000)]
    window_ms: i64,
    /// Grace of the windows dataset, ms.
    #[arg(long, default_value_t = 1_000)]
    grace_ms: i64,
    /// Window size in the window-close latency runs (no grace), ms.
    #[arg(long, default_value_t = 1_000)]
    latency_window_ms: i64,
    /// Seconds of producing in the window-close latency runs (also the run whose state size
    /// over time is reported).
    #[arg(long, default_value_t = 60)]
    window_latency_secs: u64,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Runs per contender and dataset (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Unmeasured rounds (every contender of a dataset once, verified) before the measured
    /// runs. After a start every contender runs slow for a few minutes — the broker's JIT, the
    /// first touch of memory — and the first rounds would weigh on whoever drew them.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// ... and at least this many unmeasured runs in the invocation before its first measured
    /// one (more warm-up rounds on the first dataset when it has few contenders): the broker's
    /// JIT takes about ten 1 GB runs to settle (its CPU per 1M × 1 KB run fell from 7.7 s to
    /// 2.5 s over the first ten on 2026-11-28), so a three-contender invocation with two rounds
    /// measured a broker still compiling.
    #[arg(long, default_value_t = 12)]
    warmup_runs: usize,
    /// ... and then more warm-up rounds (at most `--warmup-extra` of them) until one in which
    /// the broker's JIT compiler threads used at most this many CPU seconds in every run. After
    /// twelve runs they still took 0.3–0.5 s of some runs (2026-11-29), on one contender and
    /// not the other: a measured run then paid for compiling code every run uses, and the
    /// ratio to the ceiling moved by ±0.1 between invocations of the same binaries. Only with
    /// the local broker (the bench cannot see an external cluster's threads).
    #[arg(long, default_value_t = 0.25)]
    jit_quiet_secs: f64,
    /// The most extra warm-up rounds `--jit-quiet-secs` may add per dataset.
    #[arg(long, default_value_t = 4)]
    warmup_extra: usize,
    /// The commit interval of every contender, ms.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// Extra commit intervals for weir-eos on the 100 B data, ms.
    #[arg(long, value_delimiter = ',', default_value = "10,1000", num_args = 0..)]
    sweep: Vec<u64>,
    /// Records per second in the latency runs.
    #[arg(long, default_value_t = 5_000)]
    latency_rate: u64,
    /// Seconds of producing in the latency runs.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Stream threads of the Kafka Streams contenders.
    #[arg(long, default_value_t = 2)]
    kstreams_threads: u32,
    /// Run only these contenders (comma-separated names, e.g. `weir-eos,ceiling`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Leave Kafka Streams out (no Java/Maven needed).
    #[arg(long)]
    skip_kstreams: bool,
    /// A weir setting for every weir contender (repeatable), e.g. `state.cache.max.bytes=0`:
    /// passed on as `--set KEY=VALUE`, to compare a setting against its default.
    #[arg(long = "weir-set", value_name = "KEY=VALUE")]
    weir_set: Vec<String>,
    /// Where the JSON results go.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use this cluster instead of starting a local broker.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP")]
    bootstrap_servers: Option<String>,
    #[command(subcommand)]
    worker: Option<Worker>,
}

#[derive(Subcommand, Debug)]
enum Worker {
    /// (internal) The ceiling: a raw rdkafka copy, until SIGTERM.
    #[command(hide = true)]
    RawCopy(RawCopy),
}

#[derive(clap::Args, Debug)]
struct RawCopy {
    bootstrap: String,
    group: String,
    input: String,
    output: String,
    commit_interval_ms: u64,
    /// Producer properties over the defaults (`k=v`, repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Copy key, value and timestamp only, dropping the headers (the ceiling before
    /// 2026-11-28; `ceiling-x` with `WEIR_BENCH_CEILING_X_DROP_HEADERS=1`).
    #[arg(long)]
    drop_headers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Contender {
    Ceiling,
    WeirEos,
    WeirEosInline,
    WeirAlo,
    KstreamsEos,
    WeirTotals,
    WeirTotalsInline,
    KstreamsTotals,
    WeirWindows,
    KstreamsWindows,
    /// An experiment: `weir-eos` with the extra keys in `WEIR_BENCH_X_SET` ("k=v k=v"), or
    /// with the mirror binary in `WEIR_BENCH_X_BIN`, run only when `--only` names it, so that a
    /// change of settings or code is measured against `weir-eos` in the same rounds.
    WeirEosX,
    /// An experiment: the ceiling with the producer properties in `WEIR_BENCH_CEILING_X_SET`
    /// ("k=v k=v"), run only when `--only` names it.
    CeilingX,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling",
            Contender::WeirEos => "weir-eos",
            Contender::WeirEosInline => "weir-eos-inline",
            Contender::WeirAlo => "weir-alo",
            Contender::KstreamsEos => "kstreams-eos",
            Contender::WeirTotals => "weir-totals",
            Contender::WeirTotalsInline => "weir-totals-inline",
            Contender::KstreamsTotals => "kstreams-totals",
            Contender::WeirWindows => "weir-windows",
            Contender::KstreamsWindows => "kstreams-windows",
            Contender::WeirEosX => "weir-eos-x",
            Contender::CeilingX => "ceiling-x",
        }
    }

    fn totals(self) -> bool {
        matches!(
            self,
            Contender::WeirTotals | Contender::WeirTotalsInline | Contender::KstreamsTotals
        )
    }

    fn windows(self) -> bool {
        matches!(self, Contender::WeirWindows | Contender::KstreamsWindows)
    }

    fn kstreams(self) -> bool {
        matches!(
            self,
            Contender::KstreamsEos | Contender::KstreamsTotals | Contender::KstreamsWindows
        )
    }

    fn weir(self) -> bool {
        matches!(
            self,
            Contender::WeirEos
                | Contender::WeirEosInline
                | Contender::WeirEosX
                | Contender::WeirAlo
                | Contender::WeirTotals
                | Contender::WeirTotalsInline
                | Contender::WeirWindows
        )
    }
}

/// A preloaded input topic and its records (for verification).
struct Dataset {
    name: &'static str,
    topic: String,
    input: Vec<ReadRecord>,
    value_bytes: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Run {
    records_per_s: f64,
    seconds: f64,
    cpu_seconds: f64,
    /// CPU seconds of the local broker (all its threads) over the same run, when the bench
    /// started the broker itself: the broker shares the machine, so its work per record is
    /// part of every contender's cost.
    broker_cpu_seconds: Option<f64>,
    peak_rss_mib: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    /// weir-windows' latency run: live rows of its stores (windows and timers, from their
    /// changelogs) at each tenth of the run, first to last.
    state_rows: Option<Vec<usize>>,
    exactly_once: bool,
    problem: Option<String>,
    /// What the whole machine did over the throughput run, to tell a contender's cost from
    /// the machine's own noise.
    host: Option<HostUsage>,
    /// weir only: where its processing loop waited, seconds, from its `weir_wait_seconds`
    /// metric scraped as the reader saw the last output (start-up included).
    weir_waited: Option<WeirWaits>,
}

/// `weir_wait_seconds_sum` by `on`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct WeirWaits {
    input: f64,
    output: f64,
    commit: f64,
}

impl WeirWaits {
    /// Scrapes a weir process's Prometheus endpoint (`None` if it does not answer).
    fn scrape(address: &str) -> Option<Self> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(address).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let sum = |on: &str| {
            let prefix = format!("weir_wait_seconds_sum{{on=\"{on}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        text.contains("weir_wait_seconds_sum").then(|| WeirWaits {
            input: sum("input"),
            output: sum("output"),
            commit: sum("commit"),
        })
    }
}

/// The machine over one throughput run, from /proc: every process's CPU (the contender, the
/// broker, the reader, the kernel's writeback), the disk written, and the broker's CPU by
/// thread group.
#[derive(Clone, Debug, Default, Serialize)]
struct HostUsage {
    /// CPU seconds busy on all cores (user, system, irq, softirq).
    busy_seconds: f64,
    /// CPU seconds the hypervisor took (steal).
    steal_seconds: f64,
    /// CPU seconds idle waiting for the disk.
    iowait_seconds: f64,
    /// MiB written to block devices (`pgpgout`): page-cache writeback of the broker's logs,
    /// this run's or an earlier one's.
    disk_written_mib: f64,
    /// The broker's CPU seconds by thread group (thread name without its number), largest
    /// first.
    broker_threads: Vec<(String, f64)>,
}

/// Cumulative counters of the machine and the broker's threads at one instant.
struct HostSnapshot {
    busy: f64,
    steal: f64,
    iowait: f64,
    pgpgout_kib: f64,
    threads: BTreeMap<String, f64>,
}

impl HostUsage {
    /// CPU seconds of the broker's JIT compiler threads (HotSpot's `C1 CompilerThread<n>` and
    /// `C2 CompilerThread<n>`).
    fn jit_seconds(&self) -> f64 {
        self.broker_threads
            .iter()
            .filter(|(group, _)| group.contains("CompilerThre"))
            .map(|(_, cpu)| cpu)
            .sum()
    }
}

impl HostSnapshot {
    fn take(broker_pids: &[u32]) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<f64>().unwrap_or(0.0) / 100.0)
            .collect();
        // user nice system idle iowait irq softirq steal
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0.0);
        let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
        let pgpgout_kib = vmstat
            .lines()
            .find_map(|l| l.strip_prefix("pgpgout "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        let mut threads = BTreeMap::new();
        for pid in broker_pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let dir = task.path();
                let (Ok(comm), (cpu, _)) = (
                    std::fs::read_to_string(dir.join("comm")),
                    proc_usage_at(&dir),
                ) else {
                    continue;
                };
                if !cpu.is_finite() {
                    continue;
                }
                let group = comm
                    .trim()
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
                    .to_string();
                *threads.entry(group).or_insert(0.0) += cpu;
            }
        }
        Some(HostSnapshot {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
            iowait: field(4),
            pgpgout_kib,
            threads,
        })
    }

    fn since(&self, before: &HostSnapshot) -> HostUsage {
        let mut broker_threads: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|(g, cpu)| {
                (
                    g.clone(),
                    cpu - before.threads.get(g).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, cpu)| *cpu >= 0.05)
            .collect();
        broker_threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        HostUsage {
            busy_seconds: self.busy - before.busy,
            steal_seconds: self.steal - before.steal,
            iowait_seconds: self.iowait - before.iowait,
            disk_written_mib: (self.pgpgout_kib - before.pgpgout_kib) / 1024.0,
            broker_threads,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    contender: Contender,
    dataset: &'static str,
    commit_interval_ms: u64,
    runs: Vec<Run>,
    /// The warm-up rounds' runs (not in the median).
    warmup: Vec<Run>,
    median: Run,
}

#[derive(Serialize)]
struct Results<'a> {
    machine: String,
    started_unix: u64,
    args: String,
    rows: &'a [Row],
    ratios: &'a BTreeMap<String, Ratio>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Worker::RawCopy(copy)) = &args.worker {
        return raw_copy(copy);
    }
    common::init_tracing_with("warn,rdkafka=error");
    let started_unix = now_ms() / 1000;
    let _local;
    let mut broker_pids = Vec::new();
    let bootstrap = match &args.bootstrap_servers {
        Some(b) => b.clone(),
        None => {
            println!("▶ starting a local Kafka broker");
            let k = Kafka::start().context("starting a broker for the benchmark")?;
            let b = k.bootstrap_servers().to_string();
            broker_pids = k.broker_pids();
            _local = k;
            b
        }
    };
    let kafka = Kafka::start_with_bootstrap(&bootstrap);
    let kstreams = if args.skip_kstreams {
        None
    } else {
        Some(build_kstreams()?)
    };

    let mut datasets = Vec::new();
    for (name, n, bytes) in [
        ("100B", args.records_100b, 100),
        ("1KB", args.records_1kb, 1024),
        ("totals", args.totals_records, 0),
    ] {
        if n > 0 {
            datasets.push(preload(&kafka, &args, name, n, bytes)?);
        }
    }
    if args.windows_records > 0 {
        datasets.push(preload_windows(&kafka, &args)?);
    }
    let window = (args.window_ms, args.grace_ms);

    let mut rows = Vec::new();
    let mut warmed = 0;
    for ds in &datasets {
        let contenders: &[Contender] = if ds.name == "totals" {
            &[
                Contender::WeirTotals,
                Contender::WeirTotalsInline,
                Contender::KstreamsTotals,
            ]
        } else if ds.name == "windows" {
            &[Contender::WeirWindows, Contender::KstreamsWindows]
        } else {
            &[
                Contender::Ceiling,
                Contender::WeirEos,
                Contender::WeirEosInline,
                Contender::WeirAlo,
                Contender::KstreamsEos,
                Contender::WeirEosX,
                Contender::CeilingX,
            ]
        };
        let mut plan: Vec<(Contender, u64)> = contenders
            .iter()
            .filter(|c| kstreams.is_some() || !c.kstreams())
            .map(|c| (*c, args.commit_interval_ms))
            .collect();
        if ds.name == "100B" {
            plan.extend(args.sweep.iter().map(|ms| (Contender::WeirEos, *ms)));
        }
        plan.retain(|(c, _)| {
            let named = args.only.iter().any(|o| o == c.name());
            named
                || (args.only.is_empty() && !matches!(c, Contender::WeirEosX | Contender::CeilingX))
        });
        // Round-robin: run i of every contender before run i + 1 of any, so that a drift of
        // the machine or the broker over the session (page cache, log growth, other load)
        // spreads over all contenders instead of favouring those that run first; and every
        // other round in reverse order (A B C, C B A, ...), so that a steady drift does not
        // weigh on whoever is first in every round.
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); plan.len()];
        let mut warmup: Vec<Vec<Run>> = vec![Vec::new(); plan.len()];
        let mut rounds = args.warmup.max(
            args.warmup_runs
                .saturating_sub(warmed)
                .div_ceil(plan.len().max(1)),
        );
        let mut extra = 0;
        let mut i = 0;
        while i < rounds + args.runs {
            let warming = i < rounds;
            // The broker's JIT CPU in this round's busiest run.
            let mut jit = 0.0_f64;
            let label = if warming {
                format!("warm-up {}", i + 1)
            } else {
                format!("run {}", i - rounds + 1)
            };
            let order: Vec<usize> = if i % 2 == 0 {
                (0..plan.len()).collect()
            } else {
                (0..plan.len()).rev().collect()
            };
            for j in order {
                let (contender, interval) = plan[j];
                let launcher = Launcher {
                    kafka: &kafka,
                    broker_pids: &broker_pids,
                    kstreams: kstreams.as_deref(),
                    threads: args.kstreams_threads,
                    weir_set: &args.weir_set,
                    partitions: args.partitions,
                    contender,
                    interval,
                    window,
                };
                let mut run = launcher.throughput(ds)?;
                let latency = if ds.name == "1KB" || warming {
                    None
                } else if ds.name == "windows" {
                    Some(launcher.window_latency(
                        args.latency_rate,
                        args.window_latency_secs,
                        args.latency_window_ms,
                    ))
                } else {
                    Some(
                        launcher
                            .latency(ds, args.latency_rate, args.latency_secs)
                            .map(|(p50, p99)| (p50, p99, None)),
                    )
                };
                match latency {
                    Some(Ok((p50, p99, rows))) => {
                        run.latency_p50_ms = Some(p50);
                        run.latency_p99_ms = Some(p99);
                        run.state_rows = rows;
                    }
                    Some(Err(e)) => run.problem = Some(format!("latency run: {e:#}")),
                    None => {}
                }
                println!(
                    "  {:<16} {:<7} {:>5} ms  {:<9}: {:>9.0} rec/s  cpu {:>6.1} s  broker cpu {:>6} s  rss {:>6.0} MiB  p50 {:>6} ms  p99 {:>6} ms  {}",
                    contender.name(),
                    ds.name,
                    interval,
                    label,
                    run.records_per_s,
                    run.cpu_seconds,
                    fmt_secs(run.broker_cpu_seconds),
                    run.peak_rss_mib,
                    fmt_opt(run.latency_p50_ms),
                    fmt_opt(run.latency_p99_ms),
                    if run.exactly_once { "verified exactly-once".to_string() } else { format!("INVALID: {}", run.problem.clone().unwrap_or_default()) }
                );
                if let Some(rows) = &run.state_rows {
                    println!("    live state rows at each tenth of the latency run: {rows:?}");
                }
                if let Some(w) = &run.weir_waited {
                    println!(
                        "    weir waited: input {:.2} s, output (producer queue full) {:.2} s, commit {:.2} s",
                        w.input, w.output, w.commit
                    );
                }
                if let Some(h) = &run.host {
                    let threads: Vec<String> = h
                        .broker_threads
                        .iter()
                        .take(4)
                        .map(|(g, cpu)| format!("{g} {cpu:.1}"))
                        .collect();
                    println!(
                        "    host: busy {:.1} s, steal {:.1} s, iowait {:.1} s, disk written {:.0} MiB; broker threads: {}",
                        h.busy_seconds,
                        h.steal_seconds,
                        h.iowait_seconds,
                        h.disk_written_mib,
                        threads.join(", ")
                    );
                }
                jit = jit.max(run.host.as_ref().map_or(0.0, HostUsage::jit_seconds));
                if warming {
                    warmup[j].push(run);
                } else {
                    runs[j].push(run);
                }
            }
            if warming && i + 1 == rounds && jit > args.jit_quiet_secs {
                if extra < args.warmup_extra {
                    extra += 1;
                    rounds += 1;
                    println!(
                        "  the broker's JIT took up to {jit:.1} s of a run in this round (more than {} s): one more warm-up round",
                        args.jit_quiet_secs
                    );
                } else {
                    println!(
                        "  the broker's JIT still took up to {jit:.1} s of a run after {extra} extra warm-up rounds: measuring anyway"
                    );
                }
            }
            i += 1;
        }
        warmed += rounds * plan.len();
        for (((contender, interval), runs), warmup) in plan.into_iter().zip(runs).zip(warmup) {
            let median = median(&runs);
            rows.push(Row {
                contender,
                dataset: ds.name,
                commit_interval_ms: interval,
                runs,
                warmup,
                median,
            });
        }
    }

    let ratios = ratios(&rows, args.commit_interval_ms);
    print_table(&rows, &ratios);
    let file = format!("bench-{started_unix}.json");
    let path = match args.json {
        Some(p) if p.is_dir() => p.join(file),
        Some(p) => p,
        None => Path::new("target/bench").join(file),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the results (--json)", dir.display()))?;
    }
    let results = Results {
        machine: machine(),
        started_unix,
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        rows: &rows,
        ratios: &ratios,
    };
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing the results to {} (--json)", path.display()))?;
    println!("results: {}", path.display());
    if rows.iter().flat_map(|r| &r.runs).any(|r| !r.exactly_once) {
        bail!("some runs were not exactly-once (INVALID above)");
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn fmt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores, {cpu}")
}

/// A producer for the datasets and the latency runs. Partitions by murmur2 of the key — Java's
/// default partitioner — so every contender's output lands in the input's partition.
fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(base_config(bootstrap)
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn value_for(ds_bytes: usize, i: usize, keys: usize) -> (String, String) {
    if ds_bytes == 0 {
        let k = (i * 7_919) % keys;
        (
            format!("acct-{k}"),
            (((i * 37) % 20_001) as i64 - 10_000).to_string(),
        )
    } else {
        let head = format!("{i}:");
        (
            format!("k{i}"),
            format!("{head}{}", "x".repeat(ds_bytes.saturating_sub(head.len()))),
        )
    }
}

fn preload(
    kafka: &Kafka,
    args: &Args,
    name: &'static str,
    n: usize,
    bytes: usize,
) -> anyhow::Result<Dataset> {
    let topic = unique(&format!("bench-{name}"));
    kafka.create_topic(&topic, args.partitions);
    println!("▶ preloading {n} records ({name}) into {topic}");
    let p = producer(kafka.bootstrap_servers())?;
    for i in 0..n {
        let (k, v) = value_for(bytes, i, args.totals_keys);
        send_waiting(&p, &topic, BaseRecord::to(&topic).key(&k).payload(&v))?;
    }
    p.flush(Duration::from_secs(120))?;
    let input = kafka.read_to_end(&topic, Isolation::ReadCommitted);
    anyhow::ensure!(input.len() == n, "preloaded {} of {n} records", input.len());
    Ok(Dataset {
        name,
        topic,
        input,
        value_bytes: bytes,
    })
}

/// The windows dataset: `--windows-records` payments over `--windows-keys` accounts (keyed as
/// the totals data, partitioned by murmur2 like Kafka Streams), one per ms of event time from
/// three hours ago, most up to 500 ms out of order and one in ten up to two windows behind;
/// then one record per partition `2 × (window + grace)` past the last, which closes every
/// window of the data (its own stays open).
fn preload_windows(kafka: &Kafka, args: &Args) -> anyhow::Result<Dataset> {
    let n = args.windows_records;
    let topic = unique("bench-windows");
    kafka.create_topic(&topic, args.partitions);
    println!("▶ preloading {n} timed records (windows) into {topic}");
    let t0 = (now_ms() as i64 - 3 * 3_600_000) / 60_000 * 60_000;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: i64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) % bound.max(1) as u64) as i64
    };
    let p = producer(kafka.bootstrap_servers())?;
    let span = 2 * (args.window_ms + args.grace_ms);
    for i in 0..n {
        let (k, v) = value_for(0, i, args.windows_keys);
        let back = if next(10) == 0 { next(span) } else { next(500) };
        let ts = t0 + i as i64 - back;
        send_waiting(
            &p,
            &topic,
            BaseRecord::to(&topic).key(&k).payload(&v).timestamp(ts),
        )?;
    }
    let (zero, closer_ts) = ("0".to_string(), t0 + n as i64 + span);
    for partition in 0..args.partitions {
        let key = format!("closer-{partition}");
        send_waiting(
            &p,
            &topic,
            BaseRecord::to(&topic)
                .partition(partition)
                .key(&key)
                .payload(&zero)
                .timestamp(closer_ts),
        )?;
    }
    p.flush(Duration::from_secs(120))?;
    let input = kafka.read_to_end(&topic, Isolation::ReadCommitted);
    let total = n + args.partitions as usize;
    anyhow::ensure!(
        input.len() == total,
        "preloaded {} of {total} records",
        input.len()
    );
    Ok(Dataset {
        name: "windows",
        topic,
        input,
        value_bytes: 0,
    })
}

/// Sends `record` (preloading `topic`), waiting for room while the producer's queue is full.
fn send_waiting(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    mut record: BaseRecord<'_, String, String>,
) -> anyhow::Result<()> {
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r))
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => bail!("preloading {topic}: {e}"),
        }
    }
}

/// Builds the Kafka Streams contender; returns its class path.
fn build_kstreams() -> anyhow::Result<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/kstreams");
    println!(
        "▶ building the Kafka Streams contender with Maven ({})",
        dir.display()
    );
    let status = Command::new("mvn")
        .args(["-q", "-B", "package", "dependency:copy-dependencies"])
        .args(["-DoutputDirectory=target/deps", "-DincludeScope=runtime"])
        .current_dir(&dir)
        .status()
        .context("running mvn (install Maven and Java 17, or pass --skip-kstreams)")?;
    anyhow::ensure!(
        status.success(),
        "mvn failed in {} ({status})",
        dir.display()
    );
    Ok(format!(
        "{}:{}/*",
        dir.join("target/classes").display(),
        dir.join("target/deps").display()
    ))
}

/// See [`Launcher::latency_run`].
struct LatencyRun {
    app: String,
    input: String,
    output: String,
    state: PathBuf,
    producer: ThreadedProducer<DefaultProducerContext>,
}

#[derive(Clone, Copy)]
struct Launcher<'a> {
    kafka: &'a Kafka,
    broker_pids: &'a [u32],
    kstreams: Option<&'a str>,
    threads: u32,
    partitions: i32,
    contender: Contender,
    interval: u64,
    /// The windows contenders' window size and grace, ms.
    window: (i64, i64),
    /// `--weir-set`: settings for every weir contender.
    weir_set: &'a [String],
}

impl Launcher<'_> {
    /// The contender's command; weir's serve their metrics at `metrics` if given.
    fn command(
        &self,
        app: &str,
        input: &str,
        output: &str,
        state: &Path,
        metrics: Option<&str>,
    ) -> Command {
        let bootstrap = self.kafka.bootstrap_servers();
        let sibling = |name: &str| {
            std::env::current_exe()
                .expect("current_exe")
                .with_file_name(name)
        };
        let interval = self.interval.to_string();
        let mut cmd = match self.contender {
            Contender::Ceiling | Contender::CeilingX => {
                let mut c = Command::new(std::env::current_exe().expect("current_exe"));
                c.args(["raw-copy", bootstrap, app, input, output, &interval]);
                if self.contender == Contender::CeilingX {
                    set_from_env(&mut c, "WEIR_BENCH_CEILING_X_SET");
                    if std::env::var_os("WEIR_BENCH_CEILING_X_DROP_HEADERS")
                        .is_some_and(|v| !v.is_empty() && v != "0")
                    {
                        c.arg("--drop-headers");
                    }
                }
                c
            }
            Contender::WeirEos
            | Contender::WeirEosInline
            | Contender::WeirEosX
            | Contender::WeirAlo
            | Contender::WeirTotals
            | Contender::WeirTotalsInline
            | Contender::WeirWindows => {
                let example = match self.contender {
                    Contender::WeirTotals | Contender::WeirTotalsInline => "totals",
                    Contender::WeirWindows => "windows",
                    _ => "mirror",
                };
                // WEIR_BENCH_X_BIN: weir-eos-x runs this mirror binary instead (e.g. a copy
                // built from an earlier commit), to measure a code change in the same rounds.
                let program = match std::env::var_os("WEIR_BENCH_X_BIN") {
                    Some(bin) if self.contender == Contender::WeirEosX => PathBuf::from(bin),
                    _ => sibling(example),
                };
                let mut c = Command::new(program);
                c.args(["--bootstrap-servers", bootstrap, "--application-id", app])
                    .args(["--input-topic", input, "--output-topic", output])
                    .arg("--state-dir")
                    .arg(state)
                    .args(["--commit-interval-ms", &interval])
                    .args([
                        "--guarantee",
                        if self.contender == Contender::WeirAlo {
                            "at_least_once"
                        } else {
                            "exactly_once"
                        },
                    ]);
                if matches!(
                    self.contender,
                    Contender::WeirEosInline | Contender::WeirTotalsInline
                ) {
                    c.args(["--set", "commit.overlap=false"]);
                }
                for set in self.weir_set {
                    c.args(["--set", set]);
                }
                if self.contender == Contender::WeirWindows {
                    c.args(["--window-ms", &self.window.0.to_string()])
                        .args(["--grace-ms", &self.window.1.to_string()]);
                }
                if self.contender == Contender::WeirEosX {
                    set_from_env(&mut c, "WEIR_BENCH_X_SET");
                }
                if let Some(address) = metrics {
                    c.args(["--set", &format!("metrics.address={address}")]);
                }
                // WEIR_BENCH_SET="k=v k=v": extra weir keys, for experiments.
                set_from_env(&mut c, "WEIR_BENCH_SET");
                c
            }
            Contender::KstreamsEos | Contender::KstreamsTotals | Contender::KstreamsWindows => {
                let mut c = Command::new("java");
                c.args([
                    "-cp",
                    self.kstreams.unwrap_or_default(),
                    "weir.bench.KStreamsBench",
                ])
                .arg(match self.contender {
                    Contender::KstreamsTotals => "totals",
                    Contender::KstreamsWindows => "windows",
                    _ => "mirror",
                })
                .args([
                    bootstrap,
                    app,
                    input,
                    output,
                    &interval,
                    &self.threads.to_string(),
                ])
                .arg(state);
                if self.contender == Contender::KstreamsWindows {
                    c.args([self.window.0.to_string(), self.window.1.to_string()]);
                }
                c
            }
        };
        // WEIR_BENCH_WRAP="perf record -g -o /tmp/weir.perf --": run the contender under a
        // profiler (its CPU and RSS figures are then the wrapper's).
        if let Ok(wrap) = std::env::var("WEIR_BENCH_WRAP") {
            let mut parts: Vec<String> = wrap.split_whitespace().map(String::from).collect();
            if !parts.is_empty() {
                let program = parts.remove(0);
                let mut wrapped = Command::new(program);
                wrapped
                    .args(parts)
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                cmd = wrapped;
            }
        }
        // WEIR_BENCH_LOG: the contenders' RUST_LOG (e.g. to see weir's commits at debug).
        let log =
            std::env::var("WEIR_BENCH_LOG").unwrap_or_else(|_| "warn,librdkafka=error".into());
        cmd.env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    fn throughput(&self, ds: &Dataset) -> anyhow::Result<Run> {
        let (app, output) = (
            unique(&format!("bench-{}", self.contender.name())),
            unique("bench-out"),
        );
        // The broker stamps each output with the time it appended it: the first one marks the
        // start of the work for every contender alike, where the first output *seen* would
        // start an exactly-once run only at its first commit, leaving out the time its first
        // transaction took.
        self.kafka.create_topic_with(TopicSpec {
            configs: vec![("message.timestamp.type".into(), "LogAppendTime".into())],
            ..TopicSpec::new(&output, self.partitions)
        });
        let state = std::env::temp_dir().join(unique("weir-bench-state"));
        let n = ds.input.len();
        // The outputs to wait for: one per input, or one per window that closes.
        let expected = if self.contender.windows() {
            expected_windows(&ds.input, self.window.0, self.window.1)
                .0
                .len()
        } else {
            n
        };
        // weir serves its metrics, to tell where its loop waited.
        let metrics = self.contender.weir().then(free_address);
        let reader = Reader::start(
            self.kafka.bootstrap_servers(),
            &output,
            self.partitions,
            Some(expected),
            Latency::Timestamp,
        );
        let broker_before = self.broker_cpu();
        let host_before = HostSnapshot::take(self.broker_pids);
        let mut child = ChildProcess::spawn(
            self.contender.name(),
            self.command(&app, &ds.topic, &output, &state, metrics.as_deref()),
        );
        let pid = child.id();
        let seen = reader.wait(Duration::from_secs(900), || child.is_running());
        let weir_waited = metrics.as_deref().and_then(WeirWaits::scrape);
        let (cpu, rss) = proc_usage(pid);
        let broker_cpu = broker_before.zip(self.broker_cpu()).map(|(a, b)| b - a);
        let host = host_before
            .zip(HostSnapshot::take(self.broker_pids))
            .map(|(a, b)| b.since(&a));
        let status = child.terminate(Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&state);
        let mut run = Run {
            cpu_seconds: cpu,
            broker_cpu_seconds: broker_cpu,
            peak_rss_mib: rss,
            host,
            weir_waited,
            ..Run::default()
        };
        let Some(seen) = seen else {
            run.problem = Some(format!(
                "the output did not reach {expected} records (exit: {status}; the contender's \
                 output is above)"
            ));
            return Ok(run);
        };
        let Some(first_append_ms) = seen.first_append_ms else {
            run.problem = Some("the output records carry no LogAppendTime timestamps".into());
            return Ok(run);
        };
        run.seconds = seen.last_ms.saturating_sub(first_append_ms) as f64 / 1000.0;
        run.records_per_s = n as f64 / run.seconds.max(1e-3);
        let out = self.kafka.read_to_end(&output, Isolation::ReadCommitted);
        let report = if self.contender.totals() {
            verify_totals(&ds.input, &out)
        } else if self.contender.windows() {
            verify_windows(&ds.input, &out, self.window.0, self.window.1)
        } else {
            verify_copy(&ds.input, &out)
        };
        run.exactly_once = report.is_exactly_once();
        if !run.exactly_once {
            run.problem = Some(
                report
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        let _ = self.kafka.admin().delete_topics(&[output.as_str()]);
        Ok(run)
    }

    /// CPU seconds the local brokers have used so far (`None` when the bench did not start
    /// them).
    fn broker_cpu(&self) -> Option<f64> {
        if self.broker_pids.is_empty() {
            return None;
        }
        let cpu: f64 = self.broker_pids.iter().map(|&p| proc_usage(p).0).sum();
        cpu.is_finite().then_some(cpu)
    }

    /// A latency run's application id, new input and output topics, state directory and
    /// producer.
    fn latency_run(&self) -> anyhow::Result<LatencyRun> {
        let (app, input, output) = (
            unique(&format!("bench-lat-{}", self.contender.name())),
            unique("bench-lat-in"),
            unique("bench-lat-out"),
        );
        self.kafka.create_topic(&input, self.partitions);
        self.kafka.create_topic(&output, self.partitions);
        Ok(LatencyRun {
            app,
            input,
            output,
            state: std::env::temp_dir().join(unique("weir-bench-state")),
            producer: producer(self.kafka.bootstrap_servers())?,
        })
    }

    /// p50 and p99 of (seen committed − record timestamp), in ms, at `rate` records/s.
    fn latency(&self, ds: &Dataset, rate: u64, secs: u64) -> anyhow::Result<(f64, f64)> {
        let LatencyRun {
            app,
            input,
            output,
            state,
            producer: p,
        } = self.latency_run()?;
        let send = |i: usize| -> anyhow::Result<()> {
            let (k, v) = value_for(ds.value_bytes, i, 1_000);
            p.send(
                BaseRecord::to(&input)
                    .key(&k)
                    .payload(&v)
                    .timestamp(now_ms() as i64),
            )
            .map_err(|(e, _)| e)?;
            Ok(())
        };
        // Warm-up: the contender is running and has its partitions once these come out.
        let warmup = 100;
        let total = warmup + (rate * secs) as usize;
        let reader = Reader::start(
            self.kafka.bootstrap_servers(),
            &output,
            self.partitions,
            Some(total),
            Latency::Timestamp,
        );
        let mut child = ChildProcess::spawn(
            self.contender.name(),
            self.command(&app, &input, &output, &state, None),
        );
        for i in 0..warmup {
            send(i)?;
        }
        p.flush(Duration::from_secs(30))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while reader.count() < warmup {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the warm-up records did not come out in 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        for i in warmup..total {
            let due = started + Duration::from_secs_f64((i - warmup) as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(i)?;
        }
        p.flush(Duration::from_secs(30))?;
        let seen = reader.wait(Duration::from_secs(120), || child.is_running());
        let _ = child.terminate(Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&state);
        let _ = self
            .kafka
            .admin()
            .delete_topics(&[input.as_str(), output.as_str()]);
        let Some(seen) = seen else {
            bail!("not every latency record came out within 120 s");
        };
        let lat: Vec<f64> = seen.latencies_ms[warmup.min(seen.latencies_ms.len())..].to_vec();
        anyhow::ensure!(!lat.is_empty(), "no latency samples");
        Ok(p50_p99(lat))
    }

    /// Window-close latency, p50 and p99 in ms: records stamped with their send time at `rate`
    /// per second for `secs`, tumbling windows of `window_ms` without grace, so that a window
    /// can close as soon as a record past its end arrives (within a ms at these rates); each
    /// result's latency is `time seen committed − window end`. Windows that closed during the
    /// start-up, and those the closing records close at the end, are left out. The output is
    /// verified exactly-once against the input. For weir, also the live rows of its stores at
    /// each tenth of the run (see [`live_rows`]).
    fn window_latency(
        &self,
        rate: u64,
        secs: u64,
        window_ms: i64,
    ) -> anyhow::Result<(f64, f64, Option<Vec<usize>>)> {
        let this = Launcher {
            window: (window_ms, 0),
            ..*self
        };
        let LatencyRun {
            app,
            input,
            output,
            state,
            producer: p,
        } = self.latency_run()?;
        let mut i = 0;
        let mut send = |ts: i64| -> anyhow::Result<()> {
            let (k, v) = value_for(0, i, 1_000);
            i += 1;
            p.send(BaseRecord::to(&input).key(&k).payload(&v).timestamp(ts))
                .map_err(|(e, _)| e)?;
            Ok(())
        };
        let reader = Reader::start(
            self.kafka.bootstrap_servers(),
            &output,
            self.partitions,
            None,
            Latency::WindowClose,
        );
        let mut child = ChildProcess::spawn(
            self.contender.name(),
            this.command(&app, &input, &output, &state, None),
        );
        // Produces at `rate` until `until` says stop.
        let started = Instant::now();
        let mut sent = 0u64;
        let mut pace = |send: &mut dyn FnMut(i64) -> anyhow::Result<()>,
                        until: &mut dyn FnMut() -> bool|
         -> anyhow::Result<()> {
            while !until() {
                sent += 1;
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                send(now_ms() as i64)?;
            }
            Ok(())
        };
        // Warm-up: until the first window result is seen (the contender is up and has its
        // partitions).
        let deadline = Instant::now() + Duration::from_secs(120);
        pace(&mut send, &mut || {
            reader.count() > 0 || Instant::now() > deadline || !child.is_running()
        })?;
        anyhow::ensure!(
            reader.count() > 0,
            "no window result within 120 s of the start"
        );
        let measure_from = now_ms();
        let stop_at = Instant::now() + Duration::from_secs(secs);
        pace(&mut send, &mut || Instant::now() >= stop_at)?;
        let last_ms = now_ms() as i64;
        // Close every window: one record per partition a window and a second ahead.
        let closer_ts = last_ms + window_ms + 1_000;
        for partition in 0..self.partitions {
            let key = format!("closer-{partition}");
            p.send(
                BaseRecord::to(&input)
                    .partition(partition)
                    .key(&key)
                    .payload("0")
                    .timestamp(closer_ts),
            )
            .map_err(|(e, _)| e)?;
        }
        p.flush(Duration::from_secs(30))?;
        let sent_input = self.kafka.read_to_end(&input, Isolation::ReadCommitted);
        reader.expect(expected_windows(&sent_input, window_ms, 0).0.len());
        let seen = reader.wait(Duration::from_secs(120), || child.is_running());
        let status = child.terminate(Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&state);
        let Some(seen) = seen else {
            bail!("not every window result came out within 120 s (exit: {status})");
        };
        let out = self.kafka.read_to_end(&output, Isolation::ReadCommitted);
        let report = verify_windows(&sent_input, &out, window_ms, 0);
        anyhow::ensure!(
            report.is_exactly_once(),
            "the latency run's windows are not exactly-once: {}",
            report.to_string().lines().next().unwrap_or_default()
        );
        let lat: Vec<f64> = seen
            .latencies_ms
            .iter()
            .zip(&seen.window_ends)
            .filter(|(_, &end)| end >= measure_from as i64 + window_ms && end <= last_ms)
            .map(|(l, _)| *l)
            .collect();
        let rows = self.contender.weir().then(|| {
            let changelogs = [
                format!("{app}-windows-changelog"),
                format!("{app}-{}-changelog", weir::time::TIMER_STORE),
            ];
            let span = last_ms as u64 - measure_from;
            let at: Vec<u64> = (1..=10).map(|k| measure_from + span * k / 10).collect();
            live_rows(self.kafka, &changelogs, &at)
        });
        let _ = self
            .kafka
            .admin()
            .delete_topics(&[input.as_str(), output.as_str()]);
        anyhow::ensure!(!lat.is_empty(), "no latency samples");
        let (p50, p99) = p50_p99(lat);
        Ok((p50, p99, rows))
    }
}

/// Live rows of a weir application's stores over time, replayed from their changelogs: at each
/// of `at` (wall-clock ms), the number of (partition, key) whose last change by then was a put.
fn live_rows(kafka: &Kafka, changelogs: &[String], at: &[u64]) -> Vec<usize> {
    let mut changes: Vec<(i64, i32, Vec<u8>, bool)> = Vec::new();
    for (i, topic) in changelogs.iter().enumerate() {
        for r in kafka.read_to_end(topic, Isolation::ReadCommitted) {
            // Keys of different stores never meet: tag them with the store.
            let mut key = vec![i as u8];
            key.extend(r.key.unwrap_or_default());
            changes.push((
                r.timestamp.unwrap_or_default(),
                r.partition,
                key,
                r.value.is_some(),
            ));
        }
    }
    changes.sort_by_key(|c| c.0);
    let mut live = std::collections::HashSet::new();
    let mut changes = changes.into_iter().peekable();
    at.iter()
        .map(|&t| {
            while let Some((_, partition, key, put)) = changes.next_if(|c| c.0 <= t as i64) {
                if put {
                    live.insert((partition, key));
                } else {
                    live.remove(&(partition, key));
                }
            }
            live.len()
        })
        .collect()
}

/// What the output reader saw.
struct Seen {
    /// The earliest broker append time among the outputs (topics with LogAppendTime only).
    first_append_ms: Option<u64>,
    /// Wall-clock time the last output was seen.
    last_ms: u64,
    latencies_ms: Vec<f64>,
    /// With [`Latency::WindowClose`]: the window end of each latency, in the same order.
    window_ends: Vec<i64>,
}

/// What the reader's latencies measure from.
#[derive(Clone, Copy)]
enum Latency {
    /// The output's timestamp (CreateTime: the input's send time, carried through).
    Timestamp,
    /// The window end in the output's JSON value (`"end"`): the moment the window could close
    /// (no grace).
    WindowClose,
}

/// A read_committed reader of an output topic, on its own thread, from the beginning.
struct Reader {
    stop: Arc<AtomicBool>,
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// How many outputs to wait for (`usize::MAX`: not known yet; see [`Reader::expect`]).
    target: Arc<std::sync::atomic::AtomicUsize>,
    handle: std::thread::JoinHandle<Option<Seen>>,
}

impl Reader {
    fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        target: Option<usize>,
        latency: Latency,
    ) -> Self {
        let consumer: BaseConsumer = base_config(bootstrap)
            .set("group.id", unique("bench-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            // The end of a run is when this reader sees the last output: with librdkafka's
            // default (1 s) it stops fetching for a second whenever its local queue was full —
            // as it is when a fast contender outruns it — and the run would last up to a
            // second longer than the contender took. (Until 2026-11-27 14:20 it did.)
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&tpl).expect("assign");
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let target = Arc::new(std::sync::atomic::AtomicUsize::new(
            target.unwrap_or(usize::MAX),
        ));
        let (s, c, goal) = (Arc::clone(&stop), Arc::clone(&count), Arc::clone(&target));
        let handle = std::thread::spawn(move || {
            let mut first_append_ms: Option<u64> = None;
            let mut latencies = Vec::new();
            let mut window_ends = Vec::new();
            let mut n = 0usize;
            let mut last_ms = 0;
            while !s.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    if n >= goal.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                };
                let now = now_ms();
                last_ms = now;
                n += 1;
                c.store(n, Ordering::Relaxed);
                match (m.timestamp(), latency) {
                    (Timestamp::LogAppendTime(ts), _) => {
                        let ts = ts.max(0) as u64;
                        first_append_ms = Some(first_append_ms.map_or(ts, |f| f.min(ts)));
                    }
                    (t, Latency::Timestamp) => {
                        if let Some(ts) = t.to_millis() {
                            latencies.push(now as f64 - ts as f64);
                        }
                    }
                    (_, Latency::WindowClose) => {
                        let end = m
                            .payload()
                            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                            .and_then(|v| v.get("end")?.as_i64());
                        if let Some(end) = end {
                            latencies.push(now as f64 - end as f64);
                            window_ends.push(end);
                        }
                    }
                }
                if n >= goal.load(Ordering::Relaxed) {
                    break;
                }
            }
            (n >= goal.load(Ordering::Relaxed)).then_some(Seen {
                first_append_ms,
                last_ms,
                latencies_ms: latencies,
                window_ends,
            })
        });
        Self {
            stop,
            count,
            target,
            handle,
        }
    }

    /// Sets how many outputs to wait for (when it was not known at the start).
    fn expect(&self, n: usize) {
        self.target.store(n, Ordering::Relaxed);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the reader has seen everything, `timeout` has passed, or `alive` says the
    /// contender is gone (then after a last second: a contender that exits early failed, and a
    /// bench that waited out the timeout for it would hang for fifteen minutes).
    fn wait(self, timeout: Duration, mut alive: impl FnMut() -> bool) -> Option<Seen> {
        let mut deadline = Instant::now() + timeout;
        let mut gone = false;
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if !gone && !alive() {
                gone = true;
                deadline = deadline.min(Instant::now() + Duration::from_secs(1));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().ok().flatten()
    }
}

/// The median and the 99th percentile.
fn p50_p99(mut lat: Vec<f64>) -> (f64, f64) {
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
    (q(0.50), q(0.99))
}

/// CPU seconds (user + system) and peak RSS (MiB) of a live process, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    proc_usage_at(Path::new(&format!("/proc/{pid}")))
}

/// [`proc_usage`] of a process or thread directory (`/proc/<pid>`, `/proc/<pid>/task/<tid>`).
fn proc_usage_at(dir: &Path) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(dir.join("stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split(' ').collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(f64::NAN);
    let rss = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb / 1024.0)
        })
        .unwrap_or(f64::NAN);
    (cpu, rss)
}

/// A local address nobody listens on.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    format!(
        "127.0.0.1:{}",
        listener.local_addr().expect("its address").port()
    )
}

fn median(runs: &[Run]) -> Run {
    let valid: Vec<&Run> = runs.iter().filter(|r| r.exactly_once).collect();
    let med = |f: &dyn Fn(&Run) -> Option<f64>| -> Option<f64> {
        let mut v: Vec<f64> = valid
            .iter()
            .filter_map(|r| f(r))
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    };
    Run {
        records_per_s: med(&|r| Some(r.records_per_s)).unwrap_or(0.0),
        seconds: med(&|r| Some(r.seconds)).unwrap_or(0.0),
        cpu_seconds: med(&|r| Some(r.cpu_seconds)).unwrap_or(f64::NAN),
        broker_cpu_seconds: med(&|r| r.broker_cpu_seconds),
        peak_rss_mib: med(&|r| Some(r.peak_rss_mib)).unwrap_or(f64::NAN),
        latency_p50_ms: med(&|r| r.latency_p50_ms),
        latency_p99_ms: med(&|r| r.latency_p99_ms),
        state_rows: None,
        exactly_once: !valid.is_empty() && valid.len() == runs.len(),
        problem: (valid.len() != runs.len()).then(|| {
            format!(
                "{} of {} runs invalid",
                runs.len() - valid.len(),
                runs.len()
            )
        }),
        host: None,
        weir_waited: None,
    }
}

/// A ratio of two contenders' figures: of their medians, and round by round (run i of one
/// against run i of the other, which ran minutes apart in the same round).
#[derive(Clone, Debug, Serialize)]
struct Ratio {
    median: f64,
    per_round: Vec<f64>,
}

fn ratios(rows: &[Row], interval: u64) -> BTreeMap<String, Ratio> {
    let get = |c: Contender, ds: &str| {
        rows.iter()
            .find(|r| r.contender == c && r.dataset == ds && r.commit_interval_ms == interval)
    };
    let throughput = |a: &Row, b: &Row| Ratio {
        median: a.median.records_per_s / b.median.records_per_s,
        per_round: a
            .runs
            .iter()
            .zip(&b.runs)
            .filter(|(x, y)| x.exactly_once && y.exactly_once)
            .map(|(x, y)| x.records_per_s / y.records_per_s)
            .collect(),
    };
    let mut pairs = Vec::new();
    for ds in ["100B", "1KB"] {
        for weir in [
            Contender::WeirEos,
            Contender::WeirEosInline,
            Contender::WeirAlo,
            Contender::WeirEosX,
            Contender::CeilingX,
        ] {
            pairs.push((weir, Contender::Ceiling, ds));
        }
        pairs.push((Contender::WeirEos, Contender::KstreamsEos, ds));
    }
    pairs.push((Contender::WeirTotals, Contender::KstreamsTotals, "totals"));
    pairs.push((
        Contender::WeirTotalsInline,
        Contender::KstreamsTotals,
        "totals",
    ));
    pairs.push((Contender::WeirTotals, Contender::WeirTotalsInline, "totals"));
    pairs.push((
        Contender::WeirWindows,
        Contender::KstreamsWindows,
        "windows",
    ));
    let mut out = BTreeMap::new();
    for (a, b, ds) in pairs {
        if let (Some(a_row), Some(b_row)) = (get(a, ds), get(b, ds)) {
            let name = if ds == "totals" || ds == "windows" {
                format!("{}/{}", a.name(), b.name())
            } else {
                format!("{}/{} {ds}", a.name(), b.name())
            };
            out.insert(name, throughput(a_row, b_row));
        }
    }
    if let Some(p99) = get(Contender::WeirWindows, "windows").and_then(|w| w.median.latency_p99_ms)
    {
        out.insert(
            "weir-windows close p99 / commit interval".into(),
            Ratio {
                median: p99 / interval as f64,
                per_round: Vec::new(),
            },
        );
    }
    if let Some(p99) = get(Contender::WeirEos, "100B").and_then(|w| w.median.latency_p99_ms) {
        out.insert(
            "weir-eos p99 / commit interval".into(),
            Ratio {
                median: p99 / interval as f64,
                per_round: Vec::new(),
            },
        );
    }
    out
}

fn print_table(rows: &[Row], ratios: &BTreeMap<String, Ratio>) {
    println!();
    println!(
        "{:<16} {:<7} {:>9} {:>12} {:>9} {:>9} {:>9} {:>12} {:>9}  verified",
        "contender",
        "data",
        "commit ms",
        "records/s",
        "p50 ms",
        "p99 ms",
        "cpu s",
        "broker cpu s",
        "rss MiB",
    );
    for r in rows {
        let m = &r.median;
        println!(
            "{:<16} {:<7} {:>9} {:>12.0} {:>9} {:>9} {:>9.1} {:>12} {:>9.0}  {}",
            r.contender.name(),
            r.dataset,
            r.commit_interval_ms,
            m.records_per_s,
            fmt_opt(m.latency_p50_ms),
            fmt_opt(m.latency_p99_ms),
            m.cpu_seconds,
            fmt_secs(m.broker_cpu_seconds),
            m.peak_rss_mib,
            if m.exactly_once {
                "exactly-once".to_string()
            } else {
                m.problem.clone().unwrap_or_default()
            }
        );
    }
    println!();
    for (k, v) in ratios {
        let rounds: Vec<String> = v.per_round.iter().map(|r| format!("{r:.2}")).collect();
        if rounds.is_empty() {
            println!("{k:<34} {:.2}", v.median);
        } else {
            println!("{k:<34} {:.2}  (per round {})", v.median, rounds.join(", "));
        }
    }
}

/// The ceiling: consume, produce (acks=all, idempotent), commit offsets asynchronously every
/// interval — the same work as mirror without transactions. Runs until SIGTERM.
fn raw_copy(copy: &RawCopy) -> anyhow::Result<()> {
    use rdkafka::consumer::CommitMode;
    let RawCopy {
        bootstrap,
        group,
        input,
        output,
        commit_interval_ms: interval_ms,
        set,
        drop_headers,
    } = copy;
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "50")
        // The same as weir's consumer: librdkafka's default (1 s) pauses fetching whenever the
        // local queue was full, which idles a fast consumer once it drains the queue.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut config = base_config(bootstrap);
    // The producer settings of weir-eos (a long linger, a small window: see
    // `weir_kafka::clients::producer_config`), which spare librdkafka's producer thread its
    // spinning; the ceiling with weir's at_least_once settings (linger 5 ms, a 1 GiB window)
    // used 2–3 times the CPU (docs/benchmarks.md). It flushes when idle instead of at commits.
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", weir_kafka::clients::EOS_LINGER_MS.to_string())
        .set("queue.buffering.max.messages", "500000")
        .set(
            "queue.buffering.max.kbytes",
            weir_kafka::clients::EOS_WINDOW_KBYTES.to_string(),
        );
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected key=value"))?;
        config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    consumer.subscribe(&[input])?;
    let term = Arc::new(AtomicBool::new(false));
    signal_hook_flag(&term);
    let mut last_commit = Instant::now();
    while !term.load(Ordering::Relaxed) {
        let next = consumer.poll(Duration::from_millis(10));
        if next.is_none() {
            // Idle: send what lingers (a ceiling with a long `linger.ms`, as weir-eos has,
            // would otherwise hold its last outputs for that long).
            weir_kafka::clients::flush_now(producer.client(), Duration::from_millis(10));
        }
        if let Some(Ok(m)) = next {
            let mut r = BaseRecord::<[u8], [u8]>::to(output).partition(m.partition());
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(v) = m.payload() {
                r = r.payload(v);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                r = r.timestamp(ts);
            }
            // A copy carries the headers too, as weir's `mirror` (`Record::forward`) and Kafka
            // Streams do; for a record without headers this is librdkafka's parse that finds
            // none, which every contender pays.
            if !*drop_headers {
                if let Some(h) = m.headers() {
                    r = r.headers(h.detach());
                }
            }
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        // The queue is full: wait for room. (rdkafka's `poll` on a
                        // `ThreadedProducer` does not sleep: it spins reading the clock.)
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            consumer.store_offset_from_message(&m)?;
        }
        if last_commit.elapsed() >= Duration::from_millis(*interval_ms) {
            // Offsets of records handed to the producer (a crash may lose in-flight outputs:
            // the ceiling gives no guarantee beyond at-most/at-least-once).
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    Ok(())
}

/// `--set k=v` for every `k=v` in the environment variable `var` (whitespace-separated).
fn set_from_env(cmd: &mut Command, var: &str) {
    for kv in std::env::var(var).unwrap_or_default().split_whitespace() {
        cmd.args(["--set", kv]);
    }
}

/// Sets `flag` on SIGTERM or SIGINT.
fn signal_hook_flag(flag: &Arc<AtomicBool>) {
    let flag = Arc::clone(flag);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        });
        flag.store(true, Ordering::Relaxed);
    });
}
