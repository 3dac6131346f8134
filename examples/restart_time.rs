//! # restart_time — how long a stateful pipeline takes to come back after `kill -9`
//!
//! A benchmark program (not a test). For each state size (`--keys`, default 10,000 and
//! 1,000,000) it loads one record per key into `totals` (3 partitions), waits until everything
//! is committed, kills it with SIGKILL, restarts it, and measures the time from the restart to
//! the first committed output of a new record, in three set-ups:
//!
//! - `changelog`: the default store, local state directory intact (`R == K`: no replay);
//! - `local-only`: a store without changelog, directory intact;
//! - `dir lost`: the default store with the state directory deleted before the restart (a full
//!   restore from the changelog — what a task that moves to a new machine costs).
//!
//! ```text
//! cargo build --release --examples && target/release/examples/restart_time
//! ```
//! It also prints the load rate (`totals` throughput under exactly_once, one record per key,
//! start-up included). It uses the `totals` binary next to it. Results are in `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use weir_testkit::{unique, ChildProcess, Isolation, Kafka, TestRecord};

#[derive(Parser, Debug)]
#[command(about = "Restart time of the totals pipeline after SIGKILL, by state size")]
struct Args {
    /// State sizes (distinct keys) to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    keys: Vec<usize>,
    /// Run `totals` with `static.membership = true` (a restarted instance reclaims its
    /// partitions without waiting for its old session to expire).
    #[arg(long)]
    static_membership: bool,
    /// Use this cluster instead of starting a local broker.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP")]
    bootstrap_servers: Option<String>,
}

fn totals_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.with_file_name("totals")
}

struct Run<'a> {
    kafka: &'a Kafka,
    app: String,
    input: String,
    output: String,
    state: PathBuf,
    local_only: bool,
    static_membership: bool,
}

impl Run<'_> {
    fn start(&self) -> ChildProcess {
        let mut cmd = Command::new(totals_bin());
        cmd.args([
            "--bootstrap-servers",
            self.kafka.bootstrap_servers(),
            "--application-id",
            &self.app,
        ])
        .args(["--input-topic", &self.input, "--output-topic", &self.output])
        .arg("--state-dir")
        .arg(&self.state)
        .env("RUST_LOG", "warn,librdkafka=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.local_only {
            cmd.arg("--local-only");
        }
        if self.static_membership {
            cmd.args(["--set", "static.membership=true"]);
        }
        ChildProcess::spawn("totals (build it with --examples)", cmd)
    }

    fn committed_to_end(&self) -> bool {
        let ends = self
            .kafka
            .end_offsets(&self.input, Isolation::ReadCommitted);
        let committed = self.kafka.committed_offsets(&self.app, &self.input);
        ends.iter()
            .all(|(p, e)| committed.get(p).copied().flatten() == Some(*e))
    }
}

fn measure(
    kafka: &Kafka,
    keys: usize,
    local_only: bool,
    lose_dir: bool,
    static_membership: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let run = Run {
        kafka,
        app: unique("restart"),
        input: unique("restart-in"),
        output: unique("restart-out"),
        state: std::env::temp_dir().join(unique("weir-restart-state")),
        local_only,
        static_membership,
    };
    kafka.create_topic(&run.input, 3);
    kafka.create_topic(&run.output, 3);
    kafka.produce(
        &run.input,
        (0..keys).map(|k| TestRecord::new((k % 3) as i32, format!("acct-{k}"), "1")),
    );
    let loading = Instant::now();
    let child = run.start();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !run.committed_to_end() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "loading {keys} keys took over 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let load = loading.elapsed();
    child.kill(); // SIGKILL
    if lose_dir {
        std::fs::remove_dir_all(&run.state)?;
    }
    let before = kafka.end_offsets(&run.output, Isolation::ReadCommitted);
    let started = Instant::now();
    let child = run.start();
    kafka.produce(
        &run.input,
        (0..3).map(|p| TestRecord::new(p, format!("acct-{p}"), "1")),
    );
    loop {
        let now = kafka.end_offsets(&run.output, Isolation::ReadCommitted);
        if now.iter().any(|(p, e)| *e > before[p]) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "no output 30 minutes after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    child.kill(); // SIGKILL
    let _ = std::fs::remove_dir_all(Path::new(&run.state));
    Ok((load, took))
}

fn main() -> anyhow::Result<()> {
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
    println!(
        "restart after SIGKILL → first committed output (3 partitions, one record per key{})",
        if args.static_membership {
            ", static membership"
        } else {
            ""
        }
    );
    println!("(load: the first run over one record per key, start-up included, exactly_once)");
    println!(
        "{:>10}  {:>12}  {:>12}  {:>14}  {:>18}  {:>18}",
        "keys", "changelog", "local-only", "dir lost", "load (changelog)", "load (local-only)"
    );
    for &keys in &args.keys {
        let (load, changelog) = measure(&kafka, keys, false, false, args.static_membership)?;
        let (load_local, local) = measure(&kafka, keys, true, false, args.static_membership)?;
        let (_, lost) = measure(&kafka, keys, false, true, args.static_membership)?;
        let rate = |d: Duration| keys as f64 / d.as_secs_f64();
        println!(
            "{keys:>10}  {:>10.2} s  {:>10.2} s  {:>12.2} s  {:>12.0} rec/s  {:>12.0} rec/s",
            changelog.as_secs_f64(),
            local.as_secs_f64(),
            lost.as_secs_f64(),
            rate(load),
            rate(load_local)
        );
    }
    Ok(())
}
