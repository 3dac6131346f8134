//! # demo — exactly-once, seen with your own eyes
//!
//! The README's first command. With nothing but the README's prerequisites installed it:
//!
//! 1. starts a local Apache Kafka broker (KRaft, from Maven Central; or uses
//!    `--bootstrap-servers` / `WEIR_KAFKA_BOOTSTRAP`),
//! 2. creates an input and an output topic (3 partitions each),
//! 3. runs the `mirror` pipeline (exactly_once, 100 ms commit interval) as a child process,
//!    feeds it `--records` records in chunks, and kills it with SIGKILL `--kills` times at
//!    random moments while it is busy with a chunk — mid-transaction — restarting it each time,
//!    while a progress bar follows the group's committed offsets,
//! 4. stops it with SIGTERM, reads the output back with `read_committed`, and checks every
//!    record: present once, in its partition, in input order;
//! 5. then state: runs `totals` (a running count/sum/min/max per account in RocksDB, with a
//!    changelog topic) over `--records` payments of `--accounts` accounts, kills it half-way
//!    with SIGKILL **and deletes its state directory**, restarts it on an empty one — it restores
//!    every account from the changelog (a progress bar per task on a terminal) — and checks
//!    every output aggregate against the one recomputed from the input.
//!
//! ```text
//! cargo run --example demo                         # 100,000 records, 2 kills
//! cargo run --example demo -- --records 500000 --kills 5
//! ```

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use common::totals::Totals;
use indicatif::ProgressDrawTarget;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use weir::progress::RestoreBars;
use weir::{async_trait, App, Config, Context, ProcessError, Processor, Record};
use weir_testkit::{
    unique, verify_copy, verify_totals, ChildProcess, Isolation, Kafka, TestRecord,
};

#[derive(Parser, Debug)]
#[command(
    about = "weir's exactly-once demo: a copy pipeline, killed with SIGKILL, verified record by record"
)]
struct Args {
    /// Records to copy.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// How many times to SIGKILL the pipeline.
    #[arg(long, default_value_t = 2)]
    kills: usize,
    /// Distinct accounts (keys of state) in the stateful part.
    #[arg(long, default_value_t = 20_000)]
    accounts: usize,
    /// Use this cluster instead of starting a local broker.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP")]
    bootstrap_servers: Option<String>,
    #[command(subcommand)]
    worker: Option<Worker>,
}

#[derive(Subcommand, Debug)]
enum Worker {
    /// (internal) The pipeline process the demo starts and kills.
    #[command(hide = true)]
    Pipeline {
        #[arg(long)]
        bootstrap_servers: String,
        #[arg(long)]
        application_id: String,
        #[arg(long)]
        input_topic: String,
        #[arg(long)]
        output_topic: String,
        #[arg(long)]
        state_dir: PathBuf,
        /// Run `totals` instead of the mirror.
        #[arg(long)]
        totals: bool,
    },
}

struct Mirror;

#[async_trait]
impl Processor for Mirror {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for record in batch {
            ctx.emit(record.forward());
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Worker::Pipeline {
        bootstrap_servers,
        application_id,
        input_topic,
        output_topic,
        state_dir,
        totals,
    }) = args.worker
    {
        common::init_tracing();
        let config = Config::builder(application_id, bootstrap_servers)
            .input_topic(input_topic)
            .output_topic(output_topic)
            .state_dir(state_dir)
            .build()?;
        let rt = tokio::runtime::Runtime::new()?;
        if totals {
            let bars = RestoreBars::new(ProgressDrawTarget::stderr());
            let app = App::new(config).on_restore_progress(move |p| {
                bars.observe(p);
                if p.finished {
                    bars.suspend(|| {
                        println!(
                            "  ⟳ restored store {:?} of task {} from {}: {} records",
                            p.store, p.task, p.changelog_topic, p.restored
                        )
                    });
                }
            });
            rt.block_on(app.run(Totals { local_only: false }))?;
        } else {
            rt.block_on(App::new(config).run(Mirror))?;
        }
        return Ok(());
    }
    let bootstrap = start_broker(&args)?;
    let kafka = Kafka::start_with_bootstrap(bootstrap.address());
    copy_act(&args, &kafka)?;
    state_act(&args, &kafka)
}

/// The broker the demo uses: `--bootstrap-servers`, or a local one it starts (and stops).
enum Broker {
    Given(String),
    Local(Kafka),
}

impl Broker {
    fn address(&self) -> &str {
        match self {
            Broker::Given(b) => b,
            Broker::Local(k) => k.bootstrap_servers(),
        }
    }
}

fn start_broker(args: &Args) -> anyhow::Result<Broker> {
    if let Some(b) = &args.bootstrap_servers {
        return Ok(Broker::Given(b.clone()));
    }
    println!(
        "▶ starting a local Apache Kafka broker (the first run fetches it from Maven Central)…"
    );
    let kafka = Kafka::start().context("starting a Kafka broker for the demo")?;
    println!(
        "  Kafka is up at {} ({})",
        kafka.bootstrap_servers(),
        kafka.backend_name()
    );
    Ok(Broker::Local(kafka))
}

/// A pipeline child process of this demo (the hidden `pipeline` subcommand).
struct Pipeline<'a> {
    bootstrap: &'a str,
    app: String,
    input: String,
    output: String,
    state_dir: PathBuf,
    totals: bool,
}

impl Pipeline<'_> {
    fn start(&self) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "pipeline",
            "--bootstrap-servers",
            self.bootstrap,
            "--application-id",
            &self.app,
        ])
        .args(["--input-topic", &self.input, "--output-topic", &self.output])
        .arg("--state-dir")
        .arg(&self.state_dir)
        .args(self.totals.then_some("--totals"))
        .env("RUST_LOG", "warn,librdkafka=error")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
        ChildProcess::spawn("pipeline", cmd)
    }

    /// Committed input records (the sum of the group's committed offsets).
    fn committed(&self, kafka: &Kafka) -> u64 {
        kafka
            .committed_offsets(&self.app, &self.input)
            .values()
            .map(|o| o.unwrap_or(0) as u64)
            .sum()
    }
}

fn committed_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40.cyan/blue} {pos}/{len} records committed {msg}")
            .expect("template"),
    );
    bar
}

fn copy_act(args: &Args, kafka: &Kafka) -> anyhow::Result<()> {
    let (input, output) = (unique("demo-orders"), unique("demo-orders-copy"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);

    let records: Vec<TestRecord> = (0..args.records)
        .map(|i| {
            let p = (i % 3) as i32;
            TestRecord::new(
                p,
                format!("order-{i}"),
                format!("{{\"order\":{i},\"amount_cents\":{}}}", (i * 37) % 10_000),
            )
        })
        .collect();
    let pipeline = Pipeline {
        bootstrap: kafka.bootstrap_servers(),
        app: unique("demo-mirror"),
        input: input.clone(),
        output: output.clone(),
        state_dir: std::env::temp_dir().join(unique("weir-demo-state")),
        totals: false,
    };

    println!(
        "▶ running the exactly-once mirror pipeline, and killing it {} times with SIGKILL",
        args.kills
    );
    println!(
        "▶ feeding {} records to {input} in chunks while the mirror runs",
        args.records
    );
    let bar = committed_bar(args.records as u64);
    let started = Instant::now();
    let mut child = pipeline.start();
    // The input arrives in chunks while the pipeline runs; a kill comes a random moment after
    // a chunk, while the pipeline is busy with it (mid-transaction), so every kill happens
    // however fast the machine is.
    let mut rng = rand::rng();
    let chunks = 10.max(args.kills + 1);
    let kill_after: Vec<usize> = (1..=args.kills)
        .map(|k| k * chunks / (args.kills + 1) - 1)
        .collect();
    let mut kills = 0;
    for (i, chunk) in records
        .chunks(args.records.div_ceil(chunks).max(1))
        .enumerate()
    {
        kafka.produce(&input, chunk.to_vec());
        for _ in kill_after.iter().filter(|&&c| c == i) {
            std::thread::sleep(Duration::from_millis(rng.random_range(50..300)));
            let done = pipeline.committed(kafka);
            bar.set_position(done);
            child.kill();
            kills += 1;
            bar.suspend(|| {
                println!("  💥 SIGKILL #{kills} with {done} records committed — restarting")
            });
            child = pipeline.start();
        }
        bar.set_position(pipeline.committed(kafka));
    }
    wait_committed_with(kafka, &pipeline, args.records as u64, &bar)?;
    let elapsed = started.elapsed();
    let status = child.terminate(Duration::from_secs(30));
    anyhow::ensure!(
        status.success(),
        "the pipeline exited with {status} after SIGTERM"
    );

    println!("▶ reading both topics back with read_committed and checking every record");
    let input_records = kafka.read_to_end(&input, Isolation::ReadCommitted);
    let visible = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let in_log = kafka.read_to_end(&output, Isolation::ReadUncommitted).len();
    let report = verify_copy(&input_records, &visible);
    print!("  {report}");
    println!(
        "  {} records of aborted transactions are in the output log, invisible to read_committed readers",
        in_log.saturating_sub(visible.len())
    );
    println!(
        "  {} records in {:.1} s including {kills} crashes and restarts ({:.0} records/s)",
        args.records,
        elapsed.as_secs_f64(),
        args.records as f64 / elapsed.as_secs_f64()
    );
    anyhow::ensure!(
        report.is_exactly_once(),
        "NOT exactly once — this is a bug, please report it"
    );
    println!("✔ exactly once: every record copied once, in order, across {kills} SIGKILLs");
    let _ = std::fs::remove_dir_all(&pipeline.state_dir);
    Ok(())
}

/// Payments `from..to` of `accounts` accounts, spread over 3 partitions by account.
fn payments(from: usize, to: usize, accounts: usize) -> Vec<TestRecord> {
    (from..to)
        .map(|i| {
            let account = (i * 7_919) % accounts;
            let amount = ((i * 37) % 20_001) as i64 - 10_000;
            TestRecord::new(
                (account % 3) as i32,
                format!("account-{account}"),
                amount.to_string(),
            )
        })
        .collect()
}

/// Waits until `pipeline` has committed `target` input records, with a bar.
fn wait_committed(kafka: &Kafka, pipeline: &Pipeline<'_>, target: u64) -> anyhow::Result<()> {
    wait_committed_with(kafka, pipeline, target, &committed_bar(target))
}

fn wait_committed_with(
    kafka: &Kafka,
    pipeline: &Pipeline<'_>,
    target: u64,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = pipeline.committed(kafka);
        bar.set_position(done);
        if done >= target {
            bar.finish_with_message("✔");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline committed only {done} of {target} records in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_act(args: &Args, kafka: &Kafka) -> anyhow::Result<()> {
    let (input, output) = (unique("demo-payments"), unique("demo-totals"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    let half = args.records / 2;
    let mut pipeline = Pipeline {
        bootstrap: kafka.bootstrap_servers(),
        app: unique("demo-totals"),
        input: input.clone(),
        output: output.clone(),
        state_dir: std::env::temp_dir().join(unique("weir-demo-state")),
        totals: true,
    };
    println!(
        "▶ state: `totals` keeps a running count/sum/min/max for each of {} accounts in RocksDB, \
         with a changelog topic; {half} payments first",
        args.accounts
    );
    kafka.produce(&input, payments(0, half, args.accounts));
    let child = pipeline.start();
    wait_committed(kafka, &pipeline, half as u64)?;
    child.kill();
    std::fs::remove_dir_all(&pipeline.state_dir)
        .with_context(|| format!("deleting {}", pipeline.state_dir.display()))?;
    println!(
        "  💥 SIGKILL, and its state directory deleted: a new machine. {} more payments, and a \
         restart on an empty state directory — every account comes back from the changelog",
        args.records - half
    );
    pipeline.state_dir = std::env::temp_dir().join(unique("weir-demo-state"));
    kafka.produce(&input, payments(half, args.records, args.accounts));
    let child = pipeline.start();
    wait_committed(kafka, &pipeline, args.records as u64)?;
    let status = child.terminate(Duration::from_secs(30));
    anyhow::ensure!(
        status.success(),
        "the pipeline exited with {status} after SIGTERM"
    );

    println!(
        "▶ recomputing every account's running aggregate from the input and checking each output"
    );
    let input_records = kafka.read_to_end(&input, Isolation::ReadCommitted);
    let visible = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let report = verify_totals(&input_records, &visible);
    print!("  {report}");
    anyhow::ensure!(
        report.is_exactly_once(),
        "NOT exactly once — this is a bug, please report it"
    );
    println!(
        "✔ exactly once with state: {} aggregates exact, across a SIGKILL and a lost state directory",
        visible.len()
    );
    let _ = std::fs::remove_dir_all(&pipeline.state_dir);
    Ok(())
}
