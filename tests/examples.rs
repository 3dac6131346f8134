//! The example binaries as a user runs them: flags, config files, exit codes and messages.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use weir_testkit::metrics::{free_address, sample, scrape, try_scrape};
use weir_testkit::{
    example_command, shared, unique, ChildProcess, Isolation, Kafka, OutputWithin, TestRecord,
};

fn run_to_exit(example: &str, args: &[&str]) -> Output {
    example_command(example)
        .args(args)
        .env("RUST_LOG", "error")
        .output_within(Duration::from_secs(120))
}

fn etl_cmd(kafka: &Kafka, app: &str, input: &str, output: &str, extra: &[&str]) -> Command {
    example_cmd("etl", kafka, app, input, output, extra)
}

fn mirror_cmd(kafka: &Kafka, app: &str, input: &str, output: &str, extra: &[&str]) -> Command {
    example_cmd("mirror", kafka, app, input, output, extra)
}

/// An example on the shared broker with a fresh state directory; stdout discarded, stderr piped.
fn example_cmd(
    example: &str,
    kafka: &Kafka,
    app: &str,
    input: &str,
    output: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = example_command(example);
    cmd.args([
        "--bootstrap-servers",
        kafka.bootstrap_servers(),
        "--application-id",
        app,
    ])
    .args(["--input-topic", input, "--output-topic", output])
    .arg("--state-dir")
    .arg(state_dir())
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    cmd
}

fn orders(input: &str, kafka: &Kafka) {
    kafka.produce(
        input,
        [
            r#"{"order_id":"o-1","customer":"ada","amount_cents":1250,"country":"DE"}"#,
            r#"{"order_id":"o-2","customer":"bob","amount_cents":0,"country":"US"}"#,
            r#"{"order_id":"o-3","customer":"cy","amount_cents":99,"country":"JP"}"#,
            r#"not json at all"#,
            r#"{"order_id":"o-5","customer":"dee","amount_cents":100005,"country":"BR"}"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| TestRecord::new(0, format!("in-{i}"), *v)),
    );
}

#[test]
fn etl_filters_enriches_and_dead_letters_unparseable_records() {
    let kafka = shared();
    let (input, output, dlq, app) = (
        unique("etl-in"),
        unique("etl-out"),
        unique("etl-dlq"),
        unique("etl"),
    );
    for t in [&input, &output, &dlq] {
        kafka.create_topic(t, 1);
    }
    orders(&input, kafka);
    let etl = ChildProcess::spawn(
        "etl",
        etl_cmd(kafka, &app, &input, &output, &["--dead-letter-topic", &dlq]),
    );
    wait_for("offsets at the end", Duration::from_secs(60), || {
        kafka.committed_offsets(&app, &input)[&0] == Some(5)
    });
    let status = etl.terminate(Duration::from_secs(30));
    assert!(status.success(), "etl exited with {status} on SIGTERM");

    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let values: Vec<serde_json::Value> = out
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        out.iter().map(|r| r.key_text()).collect::<Vec<_>>(),
        ["o-1", "o-3", "o-5"],
        "o-2 (0 cents) filtered out"
    );
    assert_eq!(values[0]["region"], "EU");
    assert_eq!(values[0]["amount"], "12.50");
    assert_eq!(values[1]["region"], "APAC");
    assert_eq!(values[2]["region"], "OTHER");
    assert_eq!(values[2]["amount"], "1000.05");

    let dead = kafka.read_to_end(&dlq, Isolation::ReadCommitted);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value_text(), "not json at all");
    assert_eq!(dead[0].header("weir.error.offset").as_deref(), Some("3"));
    assert!(dead[0]
        .header("weir.error.message")
        .unwrap()
        .contains("not an order"));
}

#[test]
fn etl_with_poison_policy_fail_exits_non_zero_naming_the_record() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "etl-fail", 1);
    orders(&input, kafka);
    let out = etl_cmd(kafka, &app, &input, &output, &[]).output_within(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "etl must fail on the poison record");
    assert!(
        stderr.contains(&format!(
            "poison record at topic {input} partition 0 offset 3"
        )),
        "{stderr}"
    );
    assert!(kafka.committed_offsets(&app, &input)[&0].is_none_or(|o| o <= 3));
}

#[test]
fn bad_configuration_is_refused_with_the_key_and_what_to_do() {
    let kafka = shared();
    let base = [
        "--bootstrap-servers",
        kafka.bootstrap_servers(),
        "--application-id",
        "cfg",
        "--input-topic",
        "in",
        "--output-topic",
        "out",
    ];

    let mut args = base.to_vec();
    args.extend([
        "--commit-interval-ms",
        "5000",
        "--set",
        "transaction.timeout.ms=3000",
    ]);
    let out = run_to_exit("mirror", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "`transaction.timeout.ms`: 3000 ms is not above commit.interval.ms (5000 ms)"
        ),
        "{stderr}"
    );

    let file = state_dir().with_extension("toml");
    std::fs::write(
        &file,
        "application.id = \"cfg\"\ncommit.intervall.ms = 10\n",
    )
    .unwrap();
    let out = run_to_exit(
        "mirror",
        &[
            "--config",
            file.to_str().unwrap(),
            "--bootstrap-servers",
            kafka.bootstrap_servers(),
            "--input-topic",
            "in",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown field `commit.intervall.ms`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("key in {} (--config)", file.display())),
        "{stderr}"
    );

    let out = run_to_exit("mirror", &["--input-topic", "in"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing field `application.id`") && stderr.contains("WEIR_"),
        "{stderr}"
    );
}

#[test]
fn at_least_once_mirror_loses_nothing_across_sigkills() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "alo-kill", 3);
    // Input keeps arriving, so every incarnation has work when it is killed.
    let feeder = {
        let input = input.clone();
        std::thread::spawn(move || {
            for chunk in numbered(3, 10_000).chunks(1_500) {
                shared().produce(&input, chunk.to_vec());
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let state = state_dir();
    let start = || {
        let mut cmd = example_command("mirror");
        cmd.args([
            "--bootstrap-servers",
            kafka.bootstrap_servers(),
            "--application-id",
            &app,
        ])
        .args([
            "--input-topic",
            &input,
            "--output-topic",
            &output,
            "--guarantee",
            "at_least_once",
            // Copies wait up to 3 s for their offset commit: the window the kills aim at.
            "--commit-interval-ms",
            "3000",
        ])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null());
        ChildProcess::spawn("mirror", cmd)
    };
    // A kill lands mid-work when the output holds copies whose input offsets are not yet
    // committed: those are the copies a restart repeats. The repeats stay in the output, so
    // after a restart the gap starts at what it was at the kill: the new incarnation is
    // mid-work once the gap is larger than that.
    let uncommitted_copies = || {
        let copied: i64 = kafka
            .end_offsets(&output, Isolation::ReadUncommitted)
            .values()
            .sum();
        let committed: i64 = kafka
            .committed_offsets(&app, &input)
            .values()
            .map(|o| o.unwrap_or(0))
            .sum();
        copied - committed
    };
    let mut mirror = start();
    let mut ahead_at_kills = Vec::new();
    for _ in 0..3 {
        let repeated_before = ahead_at_kills.last().copied().unwrap_or(0);
        wait_for(
            "copies of this incarnation ahead of the committed offsets",
            Duration::from_secs(60),
            || uncommitted_copies() > repeated_before,
        );
        mirror.kill();
        let ahead = uncommitted_copies();
        assert!(
            ahead > repeated_before,
            "the kill did not land mid-work: {ahead} uncommitted copies, {repeated_before} of them repeats from before"
        );
        ahead_at_kills.push(ahead);
        mirror = start();
    }
    feeder.join().expect("feeder");
    wait_committed(
        "offsets at the end",
        Duration::from_secs(90),
        kafka,
        &app,
        &input,
        10_000,
    );
    assert!(mirror.terminate(Duration::from_secs(30)).success());
    let report = weir_testkit::verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    // at_least_once: duplicates are allowed after a crash, losses are not.
    assert!(
        report.lost.is_empty() && report.unexpected.is_empty() && report.misplaced.is_empty(),
        "{report}"
    );
    // The kills landed mid-work, so the restarts repeated what was copied but not committed.
    assert!(
        !report.duplicated.is_empty(),
        "3 SIGKILLs with {ahead_at_kills:?} uncommitted copies repeated nothing: {report}"
    );
    eprintln!(
        "at_least_once after 3 SIGKILLs ({ahead_at_kills:?} copies uncommitted at each): {} duplicated records (allowed), 0 lost",
        report.duplicated.len()
    );
}

#[test]
fn demo_survives_its_kills_and_restores_lost_state_from_the_changelog() {
    let kafka = shared();
    let out = example_command("demo")
        .args(["--bootstrap-servers", kafka.bootstrap_servers()])
        .args(["--records", "20000", "--kills", "1", "--accounts", "5000"])
        .env("RUST_LOG", "error")
        .output_within(Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo exited with {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SIGKILL #1"), "{stdout}");
    assert!(
        stdout.contains("✔ exactly once: every record copied once"),
        "{stdout}"
    );
    // The restarted `totals` restored every task (3 partitions) from the changelog, with
    // records in each, and every aggregate checked out.
    let restored: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("⟳ restored store \"totals\""))
        .map(|l| {
            l.rsplit(": ")
                .next()
                .unwrap()
                .trim_end_matches(" records")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(restored.len(), 3, "{stdout}");
    assert!(restored.iter().all(|&n| n > 0), "{stdout}");
    assert!(stdout.contains("✔ exactly once with state"), "{stdout}");
}

#[test]
fn a_partition_that_moves_away_reports_no_lag_on_its_former_owner() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "lagmove", 4);
    // A commit interval of a minute: what the first instance consumes stays uncommitted, lag.
    let instance = |address: &str| {
        mirror_cmd(
            kafka,
            &app,
            &input,
            &output,
            &[
                "--set",
                &format!("metrics.address={address}"),
                "--set",
                "processing.guarantee=at_least_once",
                "--set",
                "commit.interval.ms=60000",
            ],
        )
    };
    let (a_address, b_address) = (free_address(), free_address());
    let a = ChildProcess::spawn("mirror-a", instance(&a_address));
    kafka.produce(&input, numbered(4, 200));
    let lag = |address: &str, p: i32| {
        sample(
            &try_scrape(address)?,
            "weir_consumer_lag",
            &format!("partition=\"{p}\",topic=\"{input}\""),
        )
    };
    wait_for(
        "200 records of lag on each partition",
        Duration::from_secs(60),
        || (0..4).all(|p| lag(&a_address, p) == Some(200.0)),
    );
    let b = ChildProcess::spawn("mirror-b", instance(&b_address));
    let mut moved = Vec::new();
    wait_for(
        "the second instance to report its partitions",
        Duration::from_secs(60),
        || {
            moved = (0..4).filter(|&p| lag(&b_address, p).is_some()).collect();
            !moved.is_empty()
        },
    );
    // The first instance committed the partitions it gave up (at_least_once revoke), and their
    // lag is the new owner's to report: the old owner must not keep showing 200.
    wait_for(
        "the moved partitions' lag at 0 on the first instance",
        Duration::from_secs(20),
        || moved.iter().all(|&p| lag(&a_address, p) == Some(0.0)),
    );
    assert!(
        moved.len() < 4,
        "the first instance kept no partition: {moved:?}"
    );
    assert!(b.terminate(Duration::from_secs(30)).success());
    assert!(a.terminate(Duration::from_secs(30)).success());
}

#[test]
fn metrics_are_served_for_prometheus_and_move_with_the_pipeline() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "metrics", 2);
    let address = free_address();
    let mirror = ChildProcess::spawn(
        "mirror",
        mirror_cmd(
            kafka,
            &app,
            &input,
            &output,
            &["--set", &format!("metrics.address={address}")],
        ),
    );
    kafka.produce(&input, numbered(2, 500));
    wait_committed(
        "1000 records committed",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        500,
    );
    // A commit is counted when weir has taken up its outcome — with `commit.overlap` that is
    // the loop turn after the background commit returned, a moment after Kafka shows it.
    let mut first = String::new();
    wait_for("the commit counted", Duration::from_secs(10), || {
        first = scrape(&address);
        sample(&first, "weir_commits_total", "reason=\"interval\"").is_some()
    });
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(
        sample(&first, "weir_records_in_total", ""),
        Some(1000.0),
        "{first}"
    );
    assert_eq!(
        sample(&first, "weir_records_out_total", ""),
        Some(1000.0),
        "{first}"
    );
    assert!(
        sample(&first, "weir_commits_total", "reason=\"interval\"").unwrap() >= 1.0,
        "{first}"
    );
    assert!(
        sample(&first, "weir_commit_seconds_count", "").unwrap() >= 1.0,
        "{first}"
    );
    assert!(
        first.contains("weir_commit_seconds_bucket{le=\"0.1\"}"),
        "a real histogram: {first}"
    );
    assert!(
        sample(&first, "weir_rebalances_total", "kind=\"assign\"").unwrap() >= 1.0,
        "{first}"
    );
    // Where the loop waited: for input (at least for the first batch) and on commits.
    for on in ["input", "commit"] {
        assert!(
            sample(&first, "weir_wait_seconds_count", &format!("on=\"{on}\"")).unwrap_or(0.0)
                >= 1.0,
            "no {on} waits: {first}"
        );
    }
    assert!(
        first.contains("weir_wait_seconds_bucket{on=\"input\",le=\"0.001\"}"),
        "a real histogram: {first}"
    );
    // Lag per partition arrives with librdkafka's statistics (every 5 s).
    wait_for("consumer lag samples", Duration::from_secs(20), || {
        let text = scrape(&address);
        (0..2).all(|p| {
            sample(
                &text,
                "weir_consumer_lag",
                &format!("partition=\"{p}\",topic=\"{input}\""),
            ) == Some(0.0)
        })
    });

    kafka.produce(&input, numbered(2, 250));
    wait_for("the counters to move", Duration::from_secs(60), || {
        sample(&scrape(&address), "weir_records_in_total", "") == Some(1500.0)
    });
    assert!(mirror.terminate(Duration::from_secs(30)).success());

    // A port already taken is a configuration error that names the key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = mirror_cmd(
        kafka,
        &unique("metrics"),
        &input,
        &output,
        &["--set", &format!("metrics.address={addr}")],
    )
    .output_within(Duration::from_secs(120));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`metrics.address`") && err.contains(&addr),
        "{err}"
    );
}
