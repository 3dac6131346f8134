//! # throughput — records/s of the `mirror` pipeline under both guarantees
//!
//! A benchmark program (not a test): starts a local broker (or uses `--bootstrap-servers`),
//! preloads `--records` records of `--value-bytes` bytes over `--partitions` partitions, then
//! copies them with the mirror operator, in-process, under `exactly_once` and `at_least_once`,
//! `--runs` times each, on the same input. It prints, per guarantee, the median throughput from
//! the first record processed to the commit that covers the last one, and checks every run's
//! output record by record (a fast wrong run does not count).
//!
//! ```text
//! cargo run --release --example throughput -- --records 1000000 --value-bytes 100
//! ```
//! Results and the machine they came from are in `docs/benchmarks.md`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use weir::{
    async_trait, App, CommitInfo, Config, Context, Guarantee, ProcessError, Processor, Record,
};
use weir_testkit::{unique, verify_copy, Isolation, Kafka, TestRecord};

#[derive(Parser, Debug)]
#[command(about = "Throughput of the mirror pipeline under exactly_once and at_least_once")]
struct Args {
    /// Records to copy per run.
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Commit interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// Runs per guarantee (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Use this cluster instead of starting a local broker.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP")]
    bootstrap_servers: Option<String>,
}

#[derive(Default)]
struct Clock {
    first: Option<Instant>,
    last_commit: Option<Instant>,
    committed: u64,
}

/// The mirror operator, timing the first batch and the commits.
struct TimedMirror {
    clock: Arc<Mutex<Clock>>,
    target: u64,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

#[async_trait]
impl Processor for TimedMirror {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        self.clock
            .lock()
            .unwrap()
            .first
            .get_or_insert_with(Instant::now);
        for record in batch {
            ctx.emit(record.forward());
        }
        Ok(())
    }

    async fn on_commit(&mut self, info: &CommitInfo) -> Result<(), ProcessError> {
        let mut clock = self.clock.lock().unwrap();
        clock.committed += info.records_in;
        if clock.committed >= self.target {
            clock.last_commit = Some(Instant::now());
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    common::init_tracing_with("warn,librdkafka=error");
    let args = Args::parse();
    let _guard;
    let kafka = match &args.bootstrap_servers {
        Some(b) => Kafka::start_with_bootstrap(b),
        None => {
            let k = Kafka::start()?;
            let handle = Kafka::start_with_bootstrap(k.bootstrap_servers());
            _guard = k;
            handle
        }
    };
    let input = unique("bench-in");
    kafka.create_topic(&input, args.partitions);
    let value = "x".repeat(args.value_bytes);
    println!(
        "preloading {} records of {} B on {} partitions at {}",
        args.records,
        args.value_bytes,
        args.partitions,
        kafka.bootstrap_servers()
    );
    kafka.produce(
        &input,
        (0..args.records).map(|i| {
            TestRecord::new(
                (i % args.partitions as usize) as i32,
                format!("k{i:09}"),
                value.clone(),
            )
        }),
    );
    let input_records = kafka.read_to_end(&input, Isolation::ReadCommitted);

    let rt = tokio::runtime::Runtime::new()?;
    for guarantee in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        let mut rates = Vec::new();
        for run in 0..args.runs {
            let output = unique("bench-out");
            kafka.create_topic(&output, args.partitions);
            let config = Config::builder(unique("bench"), kafka.bootstrap_servers())
                .input_topic(&input)
                .output_topic(&output)
                .guarantee(guarantee)
                .commit_interval(Duration::from_millis(args.commit_interval_ms))
                .state_dir(std::env::temp_dir().join(unique("weir-bench-state")))
                .build()?;
            let clock = Arc::new(Mutex::new(Clock::default()));
            let (done, finished) = tokio::sync::oneshot::channel();
            let mirror = TimedMirror {
                clock: Arc::clone(&clock),
                target: args.records as u64,
                done: Some(done),
            };
            rt.block_on(App::new(config).run_until(mirror, async {
                let _ = finished.await;
            }))?;
            let clock = clock.lock().unwrap();
            let took = clock
                .last_commit
                .unwrap()
                .duration_since(clock.first.unwrap());
            let rate = args.records as f64 / took.as_secs_f64();
            let report = verify_copy(
                &input_records,
                &kafka.read_to_end(&output, Isolation::ReadCommitted),
            );
            anyhow::ensure!(
                report.is_exactly_once(),
                "run {run} of {guarantee} is not a correct copy: {report}"
            );
            println!(
                "  {guarantee:<13} run {run}: {:>9.0} records/s  {:>7.1} MB/s  ({:.2} s, verified)",
                rate,
                rate * args.value_bytes as f64 / 1e6,
                took.as_secs_f64()
            );
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{guarantee:<13} median: {median:.0} records/s ({:.1} MB/s of values), commit interval {} ms",
            median * args.value_bytes as f64 / 1e6,
            args.commit_interval_ms
        );
    }
    Ok(())
}
