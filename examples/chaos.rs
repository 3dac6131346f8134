//! # chaos — long kill -9 runs, outside CI
//!
//! Runs the `mirror` and `totals` examples (as child processes) over many seeds, each seed a
//! reproducible run: input fed in chunks of random size and pace, the pipeline SIGKILLed at
//! random moments inside open transactions and restarted (`totals` also loses its state
//! directory once per seed and restores it from the changelog), a `read_committed` reader
//! running throughout. Every run ends with the verifier: duplicates, losses, order, wrong
//! aggregates, aborted reads, nonmonotonic and skipped live reads, open transactions. Then,
//! unless `--skip-brokers`, the broker-bounce scenario: `mirror` on a 3-broker cluster of its
//! own while each broker in turn is SIGKILLed and restarted.
//!
//! ```text
//! just chaos                       # seeds 1..=20, then the broker bounces
//! just chaos --seed 7              # one seed again
//! just chaos --seeds 50 --kills 5
//! ```
//!
//! It prints one line per run and a table at the end (docs/operations.md keeps the last one),
//! and exits non-zero if any run found an anomaly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_testkit::{
    example_command, unique, verify_copy, verify_totals, ChildProcess, Isolation, Kafka, Report,
    TestRecord,
};

#[derive(Parser, Debug)]
#[command(about = "Long kill -9 runs of mirror and totals over many seeds, and broker bounces")]
struct Args {
    /// Seeds 1..=N.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// Run this one seed only (reproduces a printed run).
    #[arg(long)]
    seed: Option<u64>,
    /// SIGKILLs per run.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Records per run.
    #[arg(long, default_value_t = 30_000)]
    records: usize,
    /// Skip the 3-broker bounce scenario.
    #[arg(long)]
    skip_brokers: bool,
}

/// What one run found.
struct Outcome {
    name: String,
    records: usize,
    kills: usize,
    /// Kills that landed with a transaction open on the output.
    in_txn: usize,
    anomalies: usize,
    secs: f64,
    report: Report,
}

fn anomalies(r: &Report) -> usize {
    r.duplicated.len()
        + r.lost.len()
        + r.unexpected.len()
        + r.misplaced.len()
        + r.reordered.len()
        + r.wrong.len()
        + r.altered.len()
        + r.aborted_reads.len()
        + r.nonmonotonic.len()
        + r.skipped.len()
        + usize::from(r.input != r.output)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (1..=args.seeds).collect(),
    };
    let kafka = Kafka::start()?;
    println!(
        "chaos: Kafka at {} ({})",
        kafka.bootstrap_servers(),
        kafka.backend_name()
    );
    let mut outcomes = Vec::new();
    for &seed in &seeds {
        for example in ["mirror", "totals"] {
            let o = run(&kafka, example, seed, &args)?;
            println!(
                "seed {seed:>3} {:<7} {} records, {} SIGKILLs ({} in an open transaction), {} anomalies, {:.0} s",
                o.name, o.records, o.kills, o.in_txn, o.anomalies, o.secs
            );
            if o.anomalies > 0 {
                println!("{}", o.report);
            }
            outcomes.push((seed, o));
        }
    }
    if !args.skip_brokers && args.seed.is_none() {
        let o = bounces(args.records)?;
        println!(
            "brokers: {} records, 3 brokers SIGKILLed in turn, {} anomalies, {:.0} s",
            o.records, o.anomalies, o.secs
        );
        outcomes.push((0, o));
    }
    println!("\n| seed | run | records | SIGKILLs (in open txn) | anomalies | s |");
    println!("|---|---|---|---|---|---|");
    for (seed, o) in &outcomes {
        println!(
            "| {} | {} | {} | {} ({}) | {} | {:.0} |",
            if *seed == 0 {
                "-".to_string()
            } else {
                seed.to_string()
            },
            o.name,
            o.records,
            o.kills,
            o.in_txn,
            o.anomalies,
            o.secs
        );
    }
    let total: usize = outcomes.iter().map(|(_, o)| o.anomalies).sum();
    let kills: usize = outcomes.iter().map(|(_, o)| o.kills).sum();
    println!(
        "\n{} runs, {kills} SIGKILLs, {total} anomalies",
        outcomes.len()
    );
    anyhow::ensure!(total == 0, "{total} anomalies");
    Ok(())
}

/// Input of one run: `mirror` gets unique records, `totals` payments over fewer accounts.
fn records_for(example: &str, n: usize, rng: &mut StdRng) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let p = (i % 3) as i32;
            if example == "totals" {
                let account = rng.random_range(0..2_000) * 3 + p as usize;
                let v: i64 = rng.random_range(-1_000..1_000);
                TestRecord::new(p, format!("acct-{account}"), v.to_string())
            } else {
                TestRecord::new(p, format!("k{i}"), format!("v{i}"))
            }
        })
        .collect()
}

fn start(
    kafka: &Kafka,
    example: &str,
    app: &str,
    topics: (&str, &str),
    state: &Path,
    log: &Path,
) -> ChildProcess {
    let mut cmd: Command = example_command(example);
    cmd.args(["--bootstrap-servers", kafka.bootstrap_servers()])
        .args(["--application-id", app])
        .args(["--input-topic", topics.0, "--output-topic", topics.1])
        .arg("--state-dir")
        .arg(state)
        .args(["--commit-interval-ms", "1000"])
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    ChildProcess::spawn(example, cmd)
}

fn run(kafka: &Kafka, example: &str, seed: u64, args: &Args) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let (app, input, output) = (unique(example), unique("chaos-in"), unique("chaos-out"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    let state: PathBuf = std::env::temp_dir().join(unique("weir-chaos"));
    let log = state.with_extension("log");
    let records = records_for(example, args.records, &mut rng);
    let live = kafka.live_reader(&output);
    // The feeder's chunks and pauses come from the seed too.
    let chunks: Vec<(Vec<TestRecord>, u64)> = {
        let mut rest = &records[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = rng.random_range(200..2_000).min(rest.len());
            out.push((rest[..n].to_vec(), rng.random_range(50..400)));
            rest = &rest[n..];
        }
        out
    };
    let feeder = {
        let (bootstrap, topic) = (kafka.bootstrap_servers().to_string(), input.clone());
        std::thread::spawn(move || {
            let kafka = Kafka::start_with_bootstrap(&bootstrap);
            for (chunk, pause) in chunks {
                kafka.produce(&topic, chunk);
                std::thread::sleep(Duration::from_millis(pause));
            }
        })
    };
    let lose_state_at = rng.random_range(0..args.kills.max(1));
    let mut pipeline = start(kafka, example, &app, (&input, &output), &state, &log);
    let (mut kills, mut in_txn) = (0, 0);
    for k in 0..args.kills {
        let deadline = Instant::now() + Duration::from_secs(60);
        while kafka.open_transactions(&output).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        pipeline.kill();
        // Dead now: a transaction still open on the output is the one the kill landed in
        // (the next incarnation's start aborts it).
        let open = !kafka.open_transactions(&output).is_empty();
        kills += 1;
        in_txn += usize::from(open);
        if example == "totals" && k == lose_state_at {
            let _ = std::fs::remove_dir_all(&state);
        }
        pipeline = start(kafka, example, &app, (&input, &output), &state, &log);
    }
    feeder.join().expect("feeder");
    let ends = kafka.end_offsets(&input, Isolation::ReadCommitted);
    let deadline = Instant::now() + Duration::from_secs(180);
    while kafka.committed_offsets(&app, &input)
        != ends.iter().map(|(p, e)| (*p, Some(*e))).collect()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "seed {seed} {example}: the offsets did not reach the end of the input; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = pipeline.terminate(Duration::from_secs(60));
    anyhow::ensure!(
        status.success(),
        "seed {seed} {example}: exit {status}; log {}",
        log.display()
    );
    let mut topics = vec![output.clone()];
    if example == "totals" {
        topics.push(format!("{app}-totals-changelog"));
    }
    // An instance killed *and* stripped of its state directory comes back with a new instance
    // id, so a new transactional id: its last transaction stays open (holding back
    // read_committed readers) until the broker aborts it after transaction.timeout.ms (10 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while topics
        .iter()
        .any(|t| !kafka.open_transactions(t).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let input_read = kafka.read_acknowledged(&input);
    let live = live.finish(kafka);
    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let mut report = if example == "totals" {
        verify_totals(&input_read, &out)
    } else {
        verify_copy(&input_read, &out)
    };
    report.check_live_read(&live, &out);
    let mut bad = anomalies(&report);
    for t in &topics {
        bad += kafka.open_transactions(t).len();
    }
    Ok(Outcome {
        name: example.to_string(),
        records: records.len(),
        kills,
        in_txn,
        anomalies: bad,
        secs: started.elapsed().as_secs_f64(),
        report,
    })
}

/// `mirror` on a 3-broker cluster of its own while each broker in turn is SIGKILLed and
/// restarted.
fn bounces(records: usize) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut kafka = Kafka::start_local(3)?;
    let (app, input, output) = (unique("mirror"), unique("chaos-in"), unique("chaos-out"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    let state = std::env::temp_dir().join(unique("weir-chaos"));
    let log = state.with_extension("log");
    let live = kafka.live_reader(&output);
    let mut rng = StdRng::seed_from_u64(0);
    let all = records_for("mirror", records, &mut rng);
    let feeder = {
        let (bootstrap, topic) = (kafka.bootstrap_servers().to_string(), input.clone());
        std::thread::spawn(move || {
            let kafka = Kafka::start_with_bootstrap(&bootstrap);
            for chunk in all.chunks(1_000) {
                kafka.produce(&topic, chunk.to_vec());
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let pipeline = start(&kafka, "mirror", &app, (&input, &output), &state, &log);
    for broker in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        let cluster = kafka.local_mut().expect("a local cluster");
        cluster.kill(broker);
        cluster.wait_gone(broker, Duration::from_secs(60))?;
        cluster.restart(broker)?;
    }
    feeder.join().expect("feeder");
    let ends = kafka.end_offsets(&input, Isolation::ReadCommitted);
    let deadline = Instant::now() + Duration::from_secs(240);
    while kafka.committed_offsets(&app, &input)
        != ends.iter().map(|(p, e)| (*p, Some(*e))).collect()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "broker bounces: the offsets did not reach the end; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::ensure!(
        pipeline.terminate(Duration::from_secs(60)).success(),
        "broker bounces: log {}",
        log.display()
    );
    let live = live.finish(&kafka);
    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let mut report = verify_copy(&kafka.read_acknowledged(&input), &out);
    report.check_live_read(&live, &out);
    let bad = anomalies(&report) + kafka.open_transactions(&output).len();
    Ok(Outcome {
        name: "mirror, 3 brokers bounced".into(),
        records,
        kills: 0,
        in_txn: 0,
        anomalies: bad,
        secs: started.elapsed().as_secs_f64(),
        report,
    })
}
