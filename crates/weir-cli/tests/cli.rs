//! Every `weir` verb against a real broker, with live pipelines (the `mirror` and `totals`
//! examples), including the refusals and error messages.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_testkit::{
    command, example_command, shared, unique, verify_totals, ChildProcess, Isolation, Kafka,
    OutputWithin, TestRecord,
};

/// Runs `weir` against the shared broker.
fn weir(args: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_weir"))
        .args(["--bootstrap-servers", shared().bootstrap_servers()])
        .args(args)
        .output_within(Duration::from_secs(120))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `weir`, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = weir(args);
    assert!(
        o.status.success(),
        "weir {args:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs `weir`, expects exit code `code`, returns stderr.
fn fails(args: &[&str], code: i32) -> String {
    let o = weir(args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "weir {args:?}\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

/// `offsets reset --group GROUP` and `rest`.
fn reset<'a>(group: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["offsets", "reset", "--group", group];
    args.extend_from_slice(rest);
    args
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&[
        if args[0] == "verify" {
            "--format"
        } else {
            "--output"
        },
        "json",
    ]);
    let out = ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("weir {args:?}: not JSON ({e}):\n{out}"))
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipeline (an example binary) on its own topics.
struct Pipeline {
    example: &'static str,
    app: String,
    input: String,
    output: String,
    state_dir: PathBuf,
}

impl Pipeline {
    fn new(kafka: &Kafka, example: &'static str, partitions: i32) -> Self {
        let p = Self {
            example,
            app: unique(&format!("cli-{example}")),
            input: unique("cli-in"),
            output: unique("cli-out"),
            state_dir: std::env::temp_dir().join(unique("weir-cli-state")),
        };
        kafka.create_topic(&p.input, partitions);
        kafka.create_topic(&p.output, partitions);
        p
    }

    fn start(&self) -> ChildProcess {
        let mut cmd = example_command(self.example);
        cmd.args(["--bootstrap-servers", shared().bootstrap_servers()])
            .args(["--application-id", &self.app])
            .args(["--input-topic", &self.input, "--output-topic", &self.output])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--commit-interval-ms", "100"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        ChildProcess::spawn(self.example, cmd)
    }

    /// Waits until the group has committed the input's end offsets.
    fn wait_caught_up(&self, kafka: &Kafka) {
        let ends = kafka.end_offsets(&self.input, Isolation::ReadCommitted);
        wait_for(
            "the pipeline to commit the input's end",
            Duration::from_secs(120),
            || {
                let c = kafka.committed_offsets(&self.app, &self.input);
                ends.iter()
                    .all(|(p, e)| c.get(p).copied().flatten() == Some(*e))
            },
        );
    }
}

fn payments(n: usize, keys: usize, partitions: i32) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let k = (i * 7) % keys;
            TestRecord::new(
                (k % partitions as usize) as i32,
                format!("acct-{k}"),
                ((i as i64 % 201) - 100).to_string(),
            )
        })
        .collect()
}

fn numbered(partitions: i32, per_partition: usize) -> Vec<TestRecord> {
    (0..per_partition)
        .flat_map(|i| {
            (0..partitions).map(move |p| TestRecord::new(p, format!("k{p}-{i}"), format!("v{i}")))
        })
        .collect()
}

#[test]
fn groups_describe_and_lag_show_a_live_pipeline_and_reset_is_refused_while_it_runs() {
    let kafka = shared();
    let p = Pipeline::new(kafka, "mirror", 3);
    kafka.produce(&p.input, numbered(3, 1_000));
    let pipeline = p.start();
    p.wait_caught_up(kafka);

    let groups = json(&["groups", "list"]);
    let g = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == p.app.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {groups}", p.app));
    assert_eq!(g["state"], "Stable");
    assert_eq!(g["members"].as_array().unwrap().len(), 1);

    let d = json(&["offsets", "describe", "--group", &p.app]);
    assert_eq!(d["members"], 1, "{d}");
    assert_eq!(d["total_lag"], 0, "{d}");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{d}");
    for row in parts {
        assert_eq!(row["topic"], p.input.as_str());
        assert_eq!(row["committed"], 1_000, "{row}");
        assert_eq!(row["log_end"], 1_000, "{row}");
        assert_eq!(row["last_stable"], 1_000, "{row}");
        assert_eq!(row["lag"], 0, "{row}");
        assert!(row["client_id"].as_str().unwrap().contains(&p.app), "{row}");
    }
    let table = ok(&["offsets", "describe", "--group", &p.app]);
    assert!(
        table.contains("LAST-STABLE") && table.contains("STATE Stable"),
        "{table}"
    );

    // A running member would overwrite new offsets: refused, naming it.
    let err = fails(
        &reset(&p.app, &["--all-topics", "--to-earliest", "--execute"]),
        2,
    );
    assert!(
        err.contains("1 active member(s)") && err.contains(&p.app),
        "{err}"
    );
    assert!(err.contains("Stop every instance"), "{err}");

    // Lag moves when records arrive faster than they are processed: stop it, add records.
    assert!(pipeline.terminate(Duration::from_secs(30)).success());
    kafka.produce(&p.input, numbered(3, 100));
    let out = ok(&[
        "lag",
        "--group",
        &p.app,
        "--watch",
        "--interval",
        "0.2",
        "--count",
        "3",
        "--output",
        "json",
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        assert_eq!(l["total_lag"], 300, "{l}");
    }
    let text = ok(&["lag", "--group", &p.app]);
    assert!(text.contains("total lag 300"), "{text}");
}

/// Input written in transactions (an exactly-once upstream) ends with a transaction marker
/// after its last record, and here with an aborted transaction: once the pipeline has
/// processed everything, `weir offsets describe`, `weir lag` and the `weir_consumer_lag` gauge
/// all say 0 — the committed offsets stepped over the markers (KAFKA-6607).
#[test]
fn lag_reaches_zero_on_input_written_in_transactions() {
    use weir_testkit::metrics::{free_address, sample, try_scrape};
    let kafka = shared();
    let p = Pipeline::new(kafka, "mirror", 2);
    let txn = |t: usize| -> Vec<TestRecord> {
        (0..2)
            .flat_map(|part| (0..100).map(move |i| TestRecord::new(part, format!("k{t}-{i}"), "v")))
            .collect()
    };
    let (committed, _) =
        kafka.produce_transactions(&p.input, (0..4).map(txn).collect(), |t| t == 3);
    let address = free_address();
    let mut cmd = example_command(p.example);
    cmd.args(["--bootstrap-servers", shared().bootstrap_servers()])
        .args(["--application-id", &p.app])
        .args(["--input-topic", &p.input, "--output-topic", &p.output])
        .arg("--state-dir")
        .arg(&p.state_dir)
        .args(["--commit-interval-ms", "100"])
        .args(["--set", &format!("metrics.address={address}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let pipeline = ChildProcess::spawn(p.example, cmd);
    let log_end = kafka.end_offsets(&p.input, Isolation::ReadUncommitted);
    wait_for(
        "the committed offsets to reach the log end",
        Duration::from_secs(60),
        || {
            let c = kafka.committed_offsets(&p.app, &p.input);
            log_end
                .iter()
                .all(|(part, e)| c.get(part).copied().flatten() == Some(*e))
        },
    );
    let d = json(&["offsets", "describe", "--group", &p.app]);
    assert_eq!(d["total_lag"], 0, "{d}");
    for row in d["partitions"].as_array().unwrap() {
        let part = row["partition"].as_i64().unwrap() as i32;
        assert_eq!(row["committed"], log_end[&part], "{row}");
        assert_eq!(row["lag"], 0, "{row}");
    }
    let text = ok(&["lag", "--group", &p.app]);
    assert!(text.contains("total lag 0"), "{text}");
    // The gauge: the partition's last stable offset minus the committed offset, from the
    // consumer's statistics (every statistics.interval.ms).
    wait_for(
        "the lag gauge to say 0 on both partitions",
        Duration::from_secs(30),
        || {
            let Some(text) = try_scrape(&address) else {
                return false;
            };
            (0..2).all(|part| {
                sample(
                    &text,
                    "weir_consumer_lag",
                    &format!("partition=\"{part}\",topic=\"{}\"", p.input),
                ) == Some(0.0)
            })
        },
    );
    assert!(pipeline.terminate(Duration::from_secs(30)).success());
    let out = kafka.read_to_end(&p.output, Isolation::ReadCommitted);
    assert_eq!(
        out.len(),
        committed.len(),
        "the aborted transaction's records are not copied"
    );
}

#[test]
fn every_reset_mode_plans_dry_runs_exports_and_executes() {
    let kafka = shared();
    let (topic, group) = (unique("cli-reset"), unique("cli-reset-group"));
    kafka.create_topic(&topic, 2);
    kafka.produce(&topic, numbered(2, 50));
    std::thread::sleep(Duration::from_millis(1_500));
    let between = chrono_now_rfc3339();
    std::thread::sleep(Duration::from_millis(1_500));
    kafka.produce(&topic, numbered(2, 30));
    kafka.set_committed_offsets(&group, &topic, &[(0, 60), (1, 70)]);
    let plan = |mode: &[&str]| -> Vec<i64> {
        let mut args = reset(&group, &["--all-topics"]);
        args.extend_from_slice(mode);
        let v = json(&args);
        v["moves"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["new"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(plan(&["--to-earliest"]), [0, 0]);
    assert_eq!(plan(&["--to-latest"]), [80, 80]);
    assert_eq!(plan(&["--to-current"]), [60, 70]);
    assert_eq!(plan(&["--shift-by", "-15"]), [45, 55]);
    assert_eq!(plan(&["--to-offset", "25"]), [25, 25]);
    assert_eq!(plan(&["--to-datetime", &between]), [50, 50]);
    assert_eq!(plan(&["--by-duration", "PT1H"]), [0, 0]);
    // Out of range: clamped, with a warning.
    let o = weir(&reset(&group, &["--all-topics", "--shift-by", "30"]));
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("offset 90 is out of range [0, 80]"),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("dry run: nothing changed"),
        "{}",
        stdout(&o)
    );
    // Nothing changed by the dry runs.
    assert_eq!(
        kafka.committed_offsets(&group, &topic),
        [(0, Some(60)), (1, Some(70))].into()
    );

    // Scope: one partition only.
    let one = json(&reset(
        &group,
        &["--topic", &format!("{topic}:1"), "--to-earliest"],
    ));
    assert_eq!(one["moves"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["moves"][0]["partition"], 1);

    // Export, edit, apply from the file.
    let csv = ok(&reset(
        &group,
        &["--all-topics", "--shift-by", "-10", "--export"],
    ));
    assert_eq!(csv, format!("{topic},0,50\n{topic},1,60\n"));
    let file = std::env::temp_dir()
        .join(unique("weir-plan"))
        .with_extension("csv");
    std::fs::write(&file, csv.replace(",60\n", ",33\n")).unwrap();
    let done = ok(&reset(
        &group,
        &["--from-file", file.to_str().unwrap(), "--execute"],
    ));
    assert!(done.contains("done: group"), "{done}");
    assert_eq!(
        kafka.committed_offsets(&group, &topic),
        [(0, Some(50)), (1, Some(33))].into()
    );
    ok(&reset(
        &group,
        &["--topic", &topic, "--to-latest", "--execute"],
    ));
    assert_eq!(
        kafka.committed_offsets(&group, &topic),
        [(0, Some(80)), (1, Some(80))].into()
    );
    let _ = std::fs::remove_file(file);
}

fn chrono_now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    // Format as UTC without a dependency: seconds since the epoch → civil date.
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn bad_input_gets_a_clear_error() {
    let kafka = shared();
    let (topic, group) = (unique("cli-bad"), unique("cli-bad-group"));
    kafka.create_topic(&topic, 1);
    kafka.produce(&topic, numbered(1, 5));
    kafka.set_committed_offsets(&group, &topic, &[(0, 2)]);

    let e = fails(&["offsets", "describe", "--group", "no-such-group-ever"], 2);
    assert!(e.contains("group \"no-such-group-ever\" not found"), "{e}");
    let e = fails(
        &reset(&group, &["--topic", "no-such-topic", "--to-earliest"]),
        2,
    );
    assert!(e.contains("\"no-such-topic\" does not exist"), "{e}");
    let e = fails(
        &reset(&group, &["--topic", &format!("{topic}:4"), "--to-earliest"]),
        2,
    );
    assert!(e.contains("there is no partition 4"), "{e}");
    let e = fails(
        &reset(&group, &["--all-topics", "--to-datetime", "last tuesday"]),
        2,
    );
    assert!(e.contains("invalid --to-datetime \"last tuesday\""), "{e}");
    let e = fails(&reset(&group, &["--all-topics", "--by-duration", "15m"]), 2);
    assert!(e.contains("invalid --by-duration"), "{e}");
    let e = fails(&reset(&group, &["--to-earliest"]), 2);
    assert!(e.contains("--all-topics, or --topic"), "{e}");
    let e = fails(&reset(&group, &["--all-topics"]), 2);
    assert!(e.contains("required"), "clap names the missing mode: {e}");
    let bad_file = std::env::temp_dir()
        .join(unique("weir-bad"))
        .with_extension("csv");
    std::fs::write(&bad_file, format!("{topic},0,1\n{topic},zero,1\n")).unwrap();
    let e = fails(
        &reset(&group, &["--from-file", bad_file.to_str().unwrap()]),
        2,
    );
    assert!(e.contains(":2: expected `topic,partition,offset`"), "{e}");
    let e = fails(
        &[
            "state",
            "inspect",
            "--state-dir",
            "/nonexistent/weir",
            "--offline",
        ],
        2,
    );
    assert!(
        e.contains("reading the state directory /nonexistent/weir"),
        "{e}"
    );

    let o = command(env!("CARGO_BIN_EXE_weir"))
        .args([
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--timeout",
            "2",
            "groups",
            "list",
        ])
        .output_within(Duration::from_secs(120));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot reach the Kafka cluster at 127.0.0.1:1"),
        "{}",
        stderr(&o)
    );
    // Nothing moved by any of it.
    assert_eq!(
        kafka.committed_offsets(&group, &topic),
        [(0, Some(2))].into()
    );
    let _ = std::fs::remove_file(bad_file);
}

#[test]
fn verify_passes_a_mirror_and_names_a_duplicate() {
    let kafka = shared();
    let p = Pipeline::new(kafka, "mirror", 2);
    kafka.produce(&p.input, numbered(2, 500));
    let pipeline = p.start();
    p.wait_caught_up(kafka);
    let out = ok(&[
        "verify", "--input", &p.input, "--output", &p.output, "--live", "1",
    ]);
    assert!(out.contains("exactly once"), "{out}");
    assert!(pipeline.terminate(Duration::from_secs(30)).success());
    let v = json(&["verify", "--input", &p.input, "--output", &p.output]);
    assert_eq!(v["exactly_once"], true, "{v}");
    assert_eq!(
        (v["input"].as_u64(), v["output"].as_u64()),
        (Some(1_000), Some(1_000))
    );

    // A record written twice is caught and named; the exit code says so.
    kafka.produce(&p.output, [TestRecord::new(1, "k1-7", "v7")]);
    let o = weir(&["verify", "--input", &p.input, "--output", &p.output]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 duplicated"), "{}", stdout(&o));
    assert!(stdout(&o).contains("NOT exactly once"), "{}", stdout(&o));
}

/// The `totals` output per partition from `from` (offsets) on.
fn after(
    records: &[weir_testkit::ReadRecord],
    from: &std::collections::BTreeMap<i32, i64>,
) -> Vec<weir_testkit::ReadRecord> {
    records
        .iter()
        .filter(|r| r.offset >= from.get(&r.partition).copied().unwrap_or(0))
        .cloned()
        .collect()
}

#[test]
fn a_stateful_reset_needs_reset_state_and_then_totals_restart_from_the_new_position() {
    let kafka = shared();
    let p = Pipeline::new(kafka, "totals", 3);
    kafka.produce(&p.input, payments(3_000, 300, 3));
    let totals = p.start();
    p.wait_caught_up(kafka);
    assert!(totals.terminate(Duration::from_secs(30)).success());

    let inspect = json(&[
        "state",
        "inspect",
        "--state-dir",
        p.state_dir.to_str().unwrap(),
    ]);
    let rows = inspect.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{inspect}");
    for r in rows {
        assert_eq!(r["status"], "in step", "{r}");
        assert_eq!(r["stored"], r["committed"], "{r}");
        assert!(r["changelog"]["totals"][0].as_i64().unwrap() > 0, "{r}");
    }

    // Moving a stateful application's offsets alone is refused, with the reason.
    let e = fails(
        &reset(&p.app, &["--all-topics", "--to-offset", "400", "--execute"]),
        2,
    );
    assert!(e.contains("is a stateful weir application"), "{e}");
    assert!(e.contains("Add --reset-state"), "{e}");
    let changelog = format!("{}-totals-changelog", p.app);
    assert!(e.contains(&changelog), "{e}");

    let out = ok(&reset(
        &p.app,
        &[
            "--all-topics",
            "--to-offset",
            "400",
            "--reset-state",
            "--execute",
        ],
    ));
    assert!(out.contains("deleted") && out.contains(&changelog), "{out}");
    let inspect = json(&[
        "state",
        "inspect",
        "--state-dir",
        p.state_dir.to_str().unwrap(),
    ]);
    for r in inspect.as_array().unwrap() {
        assert_eq!(r["committed"], 400, "{r}");
        assert!(r["status"].as_str().unwrap().starts_with("reset:"), "{r}");
    }

    // The restart wipes every task and aggregates from offset 400 on, exactly once.
    let out_ends = kafka.end_offsets(&p.output, Isolation::ReadUncommitted);
    kafka.produce(&p.input, payments(600, 300, 3));
    let totals = p.start();
    p.wait_caught_up(kafka);
    assert!(totals.terminate(Duration::from_secs(30)).success());
    let input = kafka.read_acknowledged(&p.input);
    let output = kafka.read_to_end(&p.output, Isolation::ReadCommitted);
    let from_400 = after(&input, &[(0, 400), (1, 400), (2, 400)].into());
    let new_output = after(&output, &out_ends);
    assert!(!from_400.is_empty());
    let report = verify_totals(&from_400, &new_output);
    assert!(report.is_exactly_once(), "{report}");
    assert_eq!(report.output, from_400.len());
    // And state and offsets are back in step, on a new changelog.
    let inspect = json(&[
        "state",
        "inspect",
        "--state-dir",
        p.state_dir.to_str().unwrap(),
    ]);
    for r in inspect.as_array().unwrap() {
        assert_eq!(r["status"], "in step", "{r}");
    }
    assert!(kafka.admin().partition_count(&changelog).is_ok());
    cleanup(&p.state_dir);
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
