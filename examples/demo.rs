//! # demo — exactly-once, seen with your own eyes
//!
//! The README's first command. With nothing but the README's prerequisites installed it:
//!
//! 1. starts a local Apache Kafka broker (KRaft, from Maven Central; or uses
//!    `--bootstrap-servers` / `WEIR_KAFKA_BOOTSTRAP`),
//! 2. creates an input and an output topic (3 partitions each) and produces `--records` records,
//! 3. runs the `mirror` pipeline (exactly_once, 100 ms commit interval) as a child process and
//!    kills it with SIGKILL `--kills` times at random moments — mid-transaction — restarting it
//!    each time, while a progress bar follows the group's committed offsets,
//! 4. stops it with SIGTERM, reads the output back with `read_committed`, and checks every
//!    record: present once, in its partition, in input order.
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
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use weir::{async_trait, App, Config, Context, ProcessError, Processor, Record};
use weir_testkit::{unique, verify_copy, ChildProcess, Isolation, Kafka, TestRecord};

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
    }) = args.worker
    {
        common::init_tracing();
        let config = Config::builder(application_id, bootstrap_servers)
            .input_topic(input_topic)
            .output_topic(output_topic)
            .state_dir(state_dir)
            .build()?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(App::new(config).run(Mirror))?;
        return Ok(());
    }
    run_demo(&args)
}

fn run_demo(args: &Args) -> anyhow::Result<()> {
    let _kafka_guard;
    let bootstrap = match &args.bootstrap_servers {
        Some(b) => b.clone(),
        None => {
            println!("▶ starting a local Apache Kafka broker (the first run fetches it from Maven Central)…");
            let kafka = Kafka::start().context("starting a Kafka broker for the demo")?;
            println!(
                "  Kafka is up at {} ({})",
                kafka.bootstrap_servers(),
                kafka.backend_name()
            );
            let b = kafka.bootstrap_servers().to_string();
            _kafka_guard = kafka;
            b
        }
    };
    let kafka = Kafka::start_with_bootstrap(&bootstrap);
    let (input, output, app) = (
        unique("demo-orders"),
        unique("demo-orders-copy"),
        unique("demo-mirror"),
    );
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);

    println!("▶ producing {} records to {input}", args.records);
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
    kafka.produce(&input, records);

    let state_dir = std::env::temp_dir().join(unique("weir-demo-state"));
    let start_pipeline = || {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "pipeline",
            "--bootstrap-servers",
            &bootstrap,
            "--application-id",
            &app,
        ])
        .args(["--input-topic", &input, "--output-topic", &output])
        .arg("--state-dir")
        .arg(&state_dir)
        .env("RUST_LOG", "warn,librdkafka=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        ChildProcess::spawn("pipeline", cmd)
    };

    println!(
        "▶ running the exactly-once mirror pipeline, and killing it {} times with SIGKILL",
        args.kills
    );
    let bar = ProgressBar::new(args.records as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40.cyan/blue} {pos}/{len} records committed {msg}")
            .expect("template"),
    );
    let committed = |kafka: &Kafka| -> u64 {
        kafka
            .committed_offsets(&app, &input)
            .values()
            .map(|o| o.unwrap_or(0) as u64)
            .sum()
    };
    let started = Instant::now();
    let mut pipeline = start_pipeline();
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(800..2_000));
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let done = committed(&kafka);
        bar.set_position(done);
        if done >= args.records as u64 {
            break;
        }
        if kills < args.kills && Instant::now() >= next_kill {
            pipeline.kill();
            kills += 1;
            bar.suspend(|| {
                println!("  💥 SIGKILL #{kills} with {done} records committed — restarting")
            });
            pipeline = start_pipeline();
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(800..2_000));
        }
    }
    bar.finish_with_message("✔");
    let elapsed = started.elapsed();
    let status = pipeline.terminate(Duration::from_secs(30));
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
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}
