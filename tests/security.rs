//! TLS and SASL/SCRAM: a broker of this test binary's own with a TLS listener and a
//! SASL/SCRAM-SHA-256 listener besides PLAINTEXT. weir reaches them through the `kafka.*`
//! passthrough alone, and every client it makes uses it: `totals` bootstrapped on a secured
//! listener only (a client without the settings could not even read metadata there) runs, is
//! stopped, loses its state directory and restores it from the changelog — start-up admin,
//! consumer, transactional producer and restore consumer, all through the listener. Wrong
//! credentials are a clear error at start-up, not a hang.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use weir_testkit::local::Secured;
use weir_testkit::{
    example_command, unique, verify_totals, ChildProcess, Isolation, Kafka, OutputWithin,
};

/// The `totals` example on `bootstrap` with `settings` (`--set KEY=VALUE`); logs to `log`.
fn totals(
    bootstrap: &str,
    app: &str,
    topics: (&str, &str),
    state: &std::path::Path,
    settings: &[String],
) -> std::process::Command {
    let mut cmd = example_command("totals");
    cmd.args(["--bootstrap-servers", bootstrap])
        .args(["--application-id", app])
        .args(["--input-topic", topics.0, "--output-topic", topics.1])
        .arg("--state-dir")
        .arg(state)
        .args(["--commit-interval-ms", "200"])
        .args(settings.iter().flat_map(|s| ["--set", s.as_str()]))
        .env("RUST_LOG", "info,rdkafka=warn");
    cmd
}

fn tls(s: &Secured) -> (String, Vec<String>) {
    (
        s.tls_bootstrap.clone(),
        vec![
            "kafka.security.protocol=SSL".into(),
            format!("kafka.ssl.ca.location={}", s.ca_pem.display()),
        ],
    )
}

fn scram(s: &Secured, password: &str) -> (String, Vec<String>) {
    (
        s.scram_bootstrap.clone(),
        vec![
            "kafka.security.protocol=SASL_PLAINTEXT".into(),
            "kafka.sasl.mechanism=SCRAM-SHA-256".into(),
            format!("kafka.sasl.username={}", s.user),
            format!("kafka.sasl.password={password}"),
        ],
    )
}

/// Runs `totals` through a secured listener to the end of its input, twice — the second time
/// on an empty state directory, so that it restores from the changelog — and checks every
/// aggregate.
fn exactly_once_through(kafka: &Kafka, name: &str, (bootstrap, settings): (String, Vec<String>)) {
    let (input, output, app) = topics(kafka, name, 2);
    let records = payments(4_000, 300, 2, 17);
    kafka.produce(&input, records[..2_000].to_vec());
    let state = state_dir();
    let log = state.with_extension("log");
    let run = |log_name: &str| {
        let mut cmd = totals(&bootstrap, &app, (&input, &output), &state, &settings);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(log.with_extension(log_name)).unwrap());
        ChildProcess::spawn("totals", cmd)
    };
    let done = |what: &str| {
        let ends = kafka.end_offsets(&input, Isolation::ReadCommitted);
        wait_for(what, Duration::from_secs(90), || {
            kafka.committed_offsets(&app, &input)
                == ends.iter().map(|(p, e)| (*p, Some(*e))).collect()
        });
    };
    let first = run("run1.log");
    done(&format!("{name}: the first run to finish"));
    assert!(first.terminate(Duration::from_secs(30)).success(), "{name}");
    std::fs::remove_dir_all(&state).unwrap();
    kafka.produce(&input, records[2_000..].to_vec());
    let second = run("run2.log");
    done(&format!(
        "{name}: the second run (restored from the changelog) to finish"
    ));
    assert!(
        second.terminate(Duration::from_secs(30)).success(),
        "{name}"
    );
    let log2 = std::fs::read_to_string(log.with_extension("run2.log")).unwrap();
    assert_eq!(
        log2.matches("restore finished").count(),
        2,
        "{name}: both tasks restored through the listener:\n{log2}"
    );
    let report = verify_totals(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{name}: {report}");
    eprintln!("{name}: {report}");
}

#[test]
fn tls_and_scram_listeners_carry_every_client_and_wrong_credentials_fail_at_start() {
    let kafka = Kafka::start_local_secured(1).unwrap_or_else(|e| panic!("{e}"));
    let secured = kafka
        .local()
        .and_then(|l| l.secured())
        .cloned()
        .expect("secured");
    exactly_once_through(&kafka, "tls", tls(&secured));
    exactly_once_through(&kafka, "scram", scram(&secured, &secured.password));

    // Wrong credentials: refused at start-up, quickly, saying what failed.
    let (input, output, app) = topics(&kafka, "badpass", 1);
    let (bootstrap, settings) = scram(&secured, "not-the-password");
    let started = Instant::now();
    let out = totals(&bootstrap, &app, (&input, &output), &state_dir(), &settings)
        .output_within(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("SASL authentication error") || stderr.contains("Authentication failed"),
        "says authentication failed: {stderr}"
    );
    // The start-up check gives the cluster 10 s; the rest is the process starting.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refusal took {:?} (the start-up check waits 10 s)",
        started.elapsed()
    );
    eprintln!(
        "wrong password, after {:?}: {}",
        started.elapsed(),
        stderr
            .lines()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_default()
    );
    // TLS without the CA: the broker's certificate is not trusted.
    let (bootstrap, _) = tls(&secured);
    let started = Instant::now();
    let out = totals(
        &bootstrap,
        &unique("untrusted"),
        (&input, &output),
        &state_dir(),
        &["kafka.security.protocol=SSL".to_string()],
    )
    .output_within(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refusal took {:?} (the start-up check waits 10 s)",
        started.elapsed()
    );
    eprintln!(
        "untrusted certificate: {}",
        stderr
            .lines()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_default()
    );
}
