//! Bad input and misconfiguration: each refused with an error that says what, where and what
//! to do, with nothing committed past it — missing output and dead-letter topics, an output
//! topic with too few partitions, changelogs with the wrong partition count or not compacted,
//! two processes on one state directory, and operators that panic, fail fatally or keep
//! failing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use weir::{async_trait, Context, PoisonPolicy, ProcessError, Processor, Record};
use weir_testkit::{
    example_command, shared, unique, verify_copy, ChildProcess, Isolation, Kafka, OutputWithin,
    TestRecord,
};

/// The error an application returned, within 60 s.
fn start_error(config: weir::Config, processor: impl Processor + 'static) -> String {
    InProcess::start(config, processor)
        .join()
        .expect_err("the application must refuse to run")
        .to_string()
}

#[test]
fn a_missing_output_or_dead_letter_topic_is_refused_at_start_naming_it() {
    let kafka = shared();
    let (input, output, app) = (unique("no-out-in"), unique("no-out"), unique("no-out-app"));
    kafka.create_topic(&input, 1);
    kafka.produce(&input, numbered(1, 10));
    let message = start_error(
        config(kafka, &app, &input, &output).build().unwrap(),
        Mirror,
    );
    assert!(
        message.contains(&format!("topic {output:?} does not exist"))
            && message.contains("create it"),
        "{message}"
    );

    kafka.create_topic(&output, 1);
    let dlq = unique("no-dlq");
    let message = start_error(
        config(kafka, &app, &input, &output)
            .poison_policy(PoisonPolicy::DeadLetter, Some(&dlq))
            .build()
            .unwrap(),
        Mirror,
    );
    assert!(
        message.contains(&format!("topic {dlq:?} does not exist")),
        "{message}"
    );
    // Refused before anything ran: nothing committed, nothing written.
    assert_eq!(kafka.committed_offsets(&app, &input)[&0], None);
    assert_eq!(committed_count(kafka, &output), 0);
}

/// `mirror` writes each record to the same partition number: an output topic with fewer
/// partitions than the input cannot take it. The application stops naming the topic and the
/// partition, and commits nothing of the partitions it could not copy.
#[test]
fn an_output_topic_with_fewer_partitions_than_the_input_stops_naming_the_partition() {
    let kafka = shared();
    let (input, output, app) = (unique("few-in"), unique("few-out"), unique("few-app"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 1);
    kafka.produce(&input, numbered(3, 100));
    let message = start_error(
        config(kafka, &app, &input, &output).build().unwrap(),
        Mirror,
    );
    assert!(
        message.contains(&format!("topic {output:?}")) && message.contains("partition"),
        "{message}"
    );
    assert!(
        message.contains("partition count"),
        "says what to check: {message}"
    );
    let committed = kafka.committed_offsets(&app, &input);
    assert_eq!(
        (committed[&1], committed[&2]),
        (None, None),
        "offsets committed past records that were never copied"
    );
    // What did commit (partition 0, if a batch held it alone) is an exact copy.
    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let p0: Vec<_> = kafka
        .read_acknowledged(&input)
        .into_iter()
        .filter(|r| r.partition == 0)
        .take(committed[&0].unwrap_or(0) as usize)
        .collect();
    let report = verify_copy(&p0, &out);
    assert!(report.is_exactly_once(), "{report}");
}

/// The `totals` example's command on the shared broker.
fn totals(kafka: &Kafka, app: &str, input: &str, output: &str) -> std::process::Command {
    let mut cmd = example_command("totals");
    cmd.args(["--bootstrap-servers", kafka.bootstrap_servers()])
        .args(["--application-id", app])
        .args(["--input-topic", input, "--output-topic", output])
        .arg("--state-dir")
        .arg(state_dir())
        .env("RUST_LOG", "error");
    cmd
}

#[test]
fn a_changelog_with_the_wrong_partition_count_or_not_compacted_is_refused() {
    let kafka = shared();
    for (partitions, policy, expect) in [
        (1, "compact", "has 1 partitions but the input has 2 tasks"),
        (2, "delete", "has cleanup.policy=delete"),
    ] {
        let (input, output, app) = topics(kafka, "bad-changelog", 2);
        kafka.produce(&input, numbered(2, 10));
        let changelog = format!("{app}-totals-changelog");
        let mut spec = weir_testkit::TopicSpec::new(&changelog, partitions);
        spec.configs.push(("cleanup.policy".into(), policy.into()));
        kafka.create_topic_with(spec);
        let out = totals(kafka, &app, &input, &output).output_within(Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{policy}: must refuse: {stderr}");
        assert!(
            stderr.contains(&format!("changelog topic {changelog:?} {expect}")),
            "{stderr}"
        );
        assert_eq!(kafka.committed_offsets(&app, &input)[&0], None, "{stderr}");
    }
}

/// A second process on a state directory in use would share its instance id, so its
/// transactional id: the two would fence each other. The second refuses at once, naming the
/// process that holds the directory; the first goes on undisturbed.
#[test]
fn a_second_process_on_one_state_directory_is_refused_naming_the_first() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "two-dirs", 2);
    let state = state_dir();
    let mirror = || {
        let mut cmd = example_command("mirror");
        cmd.args(["--bootstrap-servers", kafka.bootstrap_servers()])
            .args(["--application-id", &app])
            .args(["--input-topic", &input, "--output-topic", &output])
            .arg("--state-dir")
            .arg(&state)
            .args(["--commit-interval-ms", "100"])
            .env("RUST_LOG", "warn");
        cmd
    };
    kafka.produce(&input, numbered(2, 500));
    let mut first_cmd = mirror();
    first_cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = ChildProcess::spawn("mirror (first)", first_cmd);
    wait_committed(
        "the first to copy",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        500,
    );

    let started = std::time::Instant::now();
    let out = mirror().output_within(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("another weir process (pid {} on", first.id()))
            && stderr.contains("is using this state directory"),
        "names the first: {stderr}"
    );
    assert!(
        stderr.contains("give each instance its own state.dir"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "at once: {:?}",
        started.elapsed()
    );

    assert!(first.is_running(), "the first process stopped");
    kafka.produce(
        &input,
        numbered(2, 500).into_iter().map(|mut r| {
            r.value = Some(b"second".to_vec());
            r.key = r.key.map(|k| [k, b"-2".to_vec()].concat());
            r
        }),
    );
    wait_committed(
        "the first to go on",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        1_000,
    );
    assert!(first.terminate(Duration::from_secs(30)).success());
    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
}

/// How an operator fails on a chosen record.
#[derive(Clone, Copy, Debug)]
enum Failure {
    Panic,
    Fatal,
    /// `ProcessError::Retriable` every time: past `processing.retries`.
    AlwaysRetriable,
}

struct FailingAt {
    at: (i32, i64),
    how: Failure,
}

#[async_trait]
impl Processor for FailingAt {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            if (r.partition, r.offset) == self.at {
                match self.how {
                    Failure::Panic => panic!("boom at {}", r.coordinates()),
                    Failure::Fatal => {
                        return Err(ProcessError::fatal(format!(
                            "cannot go on at {}",
                            r.coordinates()
                        )))
                    }
                    Failure::AlwaysRetriable => {
                        return Err(ProcessError::retriable(format!(
                            "downstream unavailable at {}",
                            r.coordinates()
                        )))
                    }
                }
            }
            ctx.emit(r.forward());
        }
        Ok(())
    }
}

/// An operator that panics, returns `ProcessError::fatal`, or keeps returning retriable errors
/// past `processing.retries`: the application stops with an error naming what happened and
/// where, aborts the open transaction, and commits nothing past the committed work — a
/// restart with a healthy operator then completes the copy exactly once.
#[test]
fn an_operator_that_panics_fails_fatally_or_exhausts_its_retries_stops_exactly_once() {
    let kafka = shared();
    for how in [Failure::Panic, Failure::Fatal, Failure::AlwaysRetriable] {
        let (input, output, app) = topics(kafka, "op-fails", 2);
        kafka.produce(&input, numbered(2, 1_000));
        let config = || {
            config(kafka, &app, &input, &output)
                .set("max.batch.records", 100)
                .set("processing.retries", 2)
                .build()
                .unwrap()
        };
        let message = start_error(config(), FailingAt { at: (1, 600), how });
        let expect = match how {
            Failure::Panic => "the operator panicked on the batch starting at",
            Failure::Fatal => "operator failed in process: cannot go on at",
            Failure::AlwaysRetriable => "downstream unavailable at",
        };
        assert!(message.contains(expect), "{how:?}: {message}");
        if matches!(how, Failure::Panic) {
            assert!(
                message.contains(&format!("boom at {input}/1@600")),
                "{message}"
            );
        }
        if matches!(how, Failure::AlwaysRetriable) {
            assert!(
                message.contains("operator failed 3 times in a row (processing.retries = 2)"),
                "{message}"
            );
        }
        let committed = kafka.committed_offsets(&app, &input);
        assert!(
            committed[&1].is_none_or(|o| o <= 600),
            "{how:?}: committed past the failing record: {committed:?}"
        );
        assert_eq!(kafka.open_transactions(&output), vec![], "{how:?}");
        // A healthy operator finishes the job: every record once.
        let running = InProcess::start(config(), Mirror);
        wait_committed(
            "the healthy restart",
            Duration::from_secs(60),
            kafka,
            &app,
            &input,
            1_000,
        );
        running.stop().expect("clean stop");
        let report = verify_copy(
            &kafka.read_acknowledged(&input),
            &kafka.read_to_end(&output, Isolation::ReadCommitted),
        );
        assert!(report.is_exactly_once(), "{how:?}: {report}");
        eprintln!("{how:?}: stopped with \"{message}\"; restarted, exactly once");
    }
}

/// Null keys and empty values are records like any other: copied as they are.
#[test]
fn null_keys_and_empty_values_are_copied_as_they_are() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "nulls", 1);
    let records = vec![
        TestRecord {
            partition: Some(0),
            key: None,
            value: Some(b"no key".to_vec()),
            headers: vec![],
            timestamp: None,
        },
        TestRecord {
            partition: Some(0),
            key: Some(b"empty".to_vec()),
            value: Some(Vec::new()),
            headers: vec![],
            timestamp: None,
        },
        TestRecord {
            partition: Some(0),
            key: Some(b"null".to_vec()),
            value: None,
            headers: vec![("h".into(), None)],
            timestamp: None,
        },
        TestRecord {
            partition: Some(0),
            key: None,
            value: None,
            headers: vec![],
            timestamp: None,
        },
    ];
    kafka.produce(&input, records);
    let running = InProcess::start(
        config(kafka, &app, &input, &output).build().unwrap(),
        Mirror,
    );
    wait_committed("the copy", Duration::from_secs(60), kafka, &app, &input, 4);
    running.stop().expect("clean stop");
    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let want = kafka.read_acknowledged(&input);
    let shape = |r: &weir_testkit::ReadRecord| (r.key.clone(), r.value.clone(), r.headers.clone());
    assert_eq!(
        out.iter().map(shape).collect::<Vec<_>>(),
        want.iter().map(shape).collect::<Vec<_>>()
    );
}

/// Sleeps once, at a chosen record, inside `process`: an operator blocked on a slow call.
struct BlocksOnce {
    at: (i32, i64),
    sleep: Duration,
    blocked: bool,
}

#[async_trait]
impl Processor for BlocksOnce {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            if (r.partition, r.offset) == self.at && !self.blocked {
                self.blocked = true;
                tokio::time::sleep(self.sleep).await;
            }
            ctx.emit(r.forward());
        }
        Ok(())
    }
}

/// An operator that blocks (inside a live process, not a SIGSTOP) longer than
/// `transaction.timeout.ms`: the coordinator aborts the open transaction and bumps the
/// producer epoch; weir's next transactional call fails as fenced, weir sees the transaction
/// was older than its timeout, replaces the producer and replays from the committed offsets.
/// Longer than `max.poll.interval.ms`: the consumer leaves the group, the partitions are lost
/// (the open transaction aborted), and it rejoins. Both times the application goes on, and the
/// output is an exact copy.
#[test]
fn an_operator_blocking_past_the_transaction_timeout_or_the_poll_interval_stays_exactly_once() {
    let kafka = shared();
    for (what, settings) in [
        (
            "transaction.timeout.ms",
            vec![
                ("transaction.timeout.ms", "8000"),
                ("consumer.max.poll.interval.ms", "60000"),
            ],
        ),
        (
            "max.poll.interval.ms",
            vec![
                ("transaction.timeout.ms", "60000"),
                ("consumer.session.timeout.ms", "6000"),
                ("consumer.max.poll.interval.ms", "7000"),
            ],
        ),
    ] {
        let (input, output, app) = topics(kafka, "blocks", 2);
        kafka.produce(&input, numbered(2, 2_000));
        let mut builder = config(kafka, &app, &input, &output).set("max.batch.records", 100);
        for (k, v) in settings {
            builder = match k.strip_prefix("consumer.") {
                Some(_) => builder.set(k, v),
                None => builder.set(k, v.parse::<i64>().unwrap()),
            };
        }
        let running = InProcess::start(
            builder.build().unwrap(),
            BlocksOnce {
                at: (1, 700),
                // Past the timeout plus the broker's check for timed-out transactions (every
                // 5 s on the test kit's brokers).
                sleep: Duration::from_secs(18),
                blocked: false,
            },
        );
        wait_committed(
            &format!("the copy after blocking past {what}"),
            Duration::from_secs(120),
            kafka,
            &app,
            &input,
            2_000,
        );
        assert!(!running.finished(), "{what}: the application stopped");
        let summary = running.stop().expect("clean stop");
        let report = verify_copy(
            &kafka.read_acknowledged(&input),
            &kafka.read_to_end(&output, Isolation::ReadCommitted),
        );
        assert!(report.is_exactly_once(), "{what}: {report}");
        assert_eq!(kafka.open_transactions(&output), vec![], "{what}");
        assert!(
            summary.aborts >= 1,
            "{what}: the blocked transaction was not aborted: {summary:?}"
        );
        // And by the path the doc comment above gives, not another one.
        if what == "transaction.timeout.ms" {
            assert!(
                summary.producer_replacements >= 1 && summary.assignments_lost == 0,
                "{what}: expected the producer replaced (its transaction timed out), with the \
                 assignment kept: {summary:?}"
            );
        } else {
            assert!(
                summary.assignments_lost >= 1,
                "{what}: expected the assignment lost (the poll interval passed): {summary:?}"
            );
        }
        eprintln!("blocked past {what}: {summary:?}");
    }
}

/// The input topic deleted under a running application: it stops with an error naming the
/// topic, and what it had committed stays an exact copy.
#[test]
fn the_input_topic_deleted_while_running_stops_the_application_naming_it() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "deleted", 2);
    kafka.produce(&input, numbered(2, 500));
    let before = kafka.read_acknowledged(&input);
    let running = InProcess::start(
        config(kafka, &app, &input, &output)
            .set("consumer.topic.metadata.refresh.interval.ms", "1000")
            .build()
            .unwrap(),
        Mirror,
    );
    wait_committed(
        "the copy",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        500,
    );
    kafka.admin().delete_topics(&[&input]).unwrap();
    wait_for("the application to stop", Duration::from_secs(60), || {
        running.finished()
    });
    let message = running.join().expect_err("must stop").to_string();
    assert!(message.contains(&input), "names the topic: {message}");
    let report = verify_copy(
        &before,
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    eprintln!("input deleted: {message}");
}

/// Partitions added to the input (and output) of a running stateless application are picked up
/// — by the consumer at its next metadata refresh, by the producer when it first meets a
/// partition it did not know — and copied exactly once, like the others.
#[test]
fn partitions_added_to_the_input_while_running_are_picked_up() {
    let kafka = shared();
    let (input, output, app) = (unique("grow-in"), unique("grow-out"), unique("grow-app"));
    kafka.create_topic(&input, 2);
    kafka.create_topic(&output, 2);
    kafka.produce(&input, numbered(2, 300));
    let running = InProcess::start(
        config(kafka, &app, &input, &output)
            .set("consumer.topic.metadata.refresh.interval.ms", "1000")
            .build()
            .unwrap(),
        Mirror,
    );
    wait_committed(
        "the first copy",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        300,
    );
    kafka.admin().add_partitions(&output, 4).unwrap();
    kafka.admin().add_partitions(&input, 4).unwrap();
    kafka.produce(
        &input,
        numbered(4, 300).into_iter().map(|mut r| {
            r.value = Some([r.value.unwrap(), b"-grown".to_vec()].concat());
            r.key = Some([r.key.unwrap(), b"-grown".to_vec()].concat());
            r
        }),
    );
    wait_for(
        "all four partitions copied",
        Duration::from_secs(90),
        || {
            let c = kafka.committed_offsets(&app, &input);
            c.len() == 4
                && c[&0] == Some(600)
                && c[&1] == Some(600)
                && c[&2] == Some(300)
                && c[&3] == Some(300)
        },
    );
    assert!(!running.finished());
    running.stop().expect("clean stop");
    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
}

/// An input topic of 200 records (one partition), record 150's value 20,000 bytes, and an
/// output topic that accepts records up to 4,096 bytes (`max.message.bytes`).
fn too_large_topics(kafka: &Kafka, name: &str) -> (String, String, String) {
    let (input, output, app) = (
        unique(&format!("{name}-in")),
        unique(&format!("{name}-out")),
        unique(&format!("{name}-app")),
    );
    kafka.create_topic(&input, 1);
    let mut spec = weir_testkit::TopicSpec::new(&output, 1);
    spec.configs
        .push(("max.message.bytes".into(), "4096".into()));
    kafka.create_topic_with(spec);
    let mut records = numbered(1, 200);
    records[150].value = Some(vec![b'x'; 20_000]);
    kafka.produce(&input, records);
    (input, output, app)
}

/// Runs `processor` on [`too_large_topics`] in batches of 50 until it stops; checks nothing was
/// committed past record 150 and no transaction was left open. Returns the error.
fn too_large_stop(
    kafka: &Kafka,
    name: &str,
    processor: impl Processor + 'static,
) -> (String, String, String) {
    let (input, output, app) = too_large_topics(kafka, name);
    let message = start_error(
        config(kafka, &app, &input, &output)
            .set("max.batch.records", 50)
            .build()
            .unwrap(),
        processor,
    );
    let committed = kafka.committed_offsets(&app, &input)[&0];
    assert!(
        committed.is_none_or(|o| o <= 150),
        "committed past it: {committed:?}"
    );
    assert_eq!(kafka.open_transactions(&output), vec![]);
    (message, input, output)
}

/// An output record larger than its topic's `max.message.bytes`, made from an input record
/// (`Record::forward`): no replay can make it fit, so it is that input record's poison. Under
/// `fail` (the default) the application stops naming the input record and the output's size
/// and limit, with nothing committed past the batch that produced it.
#[test]
fn an_output_larger_than_the_topic_accepts_is_its_input_records_poison_under_fail() {
    let kafka = shared();
    let (message, input, output) = too_large_stop(kafka, "big", Mirror);
    assert!(
        message.contains(&format!(
            "poison record at topic {input} partition 0 offset 150"
        )),
        "names the input record: {message}"
    );
    // k0-150 (6 bytes) and its 20,000-byte value, plus batch framing.
    assert!(
        message.contains(&format!(
            "its output to topic {output:?} is larger than the broker accepts"
        )) && message
            .contains("(key 6, value 20000, 0 headers), over the topic's max.message.bytes = 4096"),
        "names the output and the limit: {message}"
    );
    eprintln!("too large, fail: {message}");
}

/// The same under `dead_letter`: record 150 goes to the dead-letter topic (with the reason),
/// its output nowhere, every other record is copied exactly once, and the application goes on
/// to the end of its input. Under `skip`: the same without the dead letter.
#[test]
fn an_output_larger_than_the_topic_accepts_sends_its_input_to_the_dead_letters_or_is_skipped() {
    let kafka = shared();
    for policy in [PoisonPolicy::DeadLetter, PoisonPolicy::Skip] {
        let (input, output, app) = too_large_topics(kafka, "big-dlq");
        let dlq = unique("big-dlq");
        kafka.create_topic(&dlq, 1);
        let running = InProcess::start(
            config(kafka, &app, &input, &output)
                .set("max.batch.records", 50)
                .poison_policy(
                    policy,
                    (policy == PoisonPolicy::DeadLetter).then_some(dlq.as_str()),
                )
                .build()
                .unwrap(),
            Mirror,
        );
        wait_for(
            "the group's offset at the end of the input",
            Duration::from_secs(60),
            || running.finished() || kafka.committed_offsets(&app, &input)[&0] == Some(200),
        );
        let summary = running.stop().unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        let input_records = kafka.read_acknowledged(&input);
        let copied = kafka.read_to_end(&output, Isolation::ReadCommitted);
        let expected: Vec<_> = input_records
            .iter()
            .filter(|r| r.offset != 150)
            .cloned()
            .collect();
        let report = verify_copy(&expected, &copied);
        assert!(report.is_exactly_once(), "{policy:?}: {report}");
        let dead = kafka.read_to_end(&dlq, Isolation::ReadCommitted);
        if policy == PoisonPolicy::DeadLetter {
            assert_eq!(summary.dead_lettered, 1);
            assert_eq!(dead.len(), 1, "one dead letter");
            assert_eq!(dead[0].key_text(), "k0-150");
            assert_eq!(dead[0].value.as_ref().map(Vec::len), Some(20_000));
            assert_eq!(
                dead[0].header(weir::dlq_headers::OFFSET).as_deref(),
                Some("150")
            );
            let reason = dead[0].header(weir::dlq_headers::ERROR).unwrap_or_default();
            assert!(reason.contains("max.message.bytes = 4096"), "{reason}");
        } else {
            assert_eq!(summary.skipped, 1);
            assert!(dead.is_empty());
        }
        assert_eq!(kafka.open_transactions(&output), vec![]);
    }
}

/// An output too large for its topic that names no input record (`Output::new` without
/// `for_input`): the policy cannot apply, so the application stops naming the topic, the
/// partition, the size and the limit, and saying how to attribute outputs.
#[test]
fn an_output_too_large_that_names_no_input_stops_the_application_naming_it() {
    struct Unattributed;
    #[async_trait]
    impl Processor for Unattributed {
        async fn process(
            &mut self,
            batch: &[Record],
            ctx: &mut Context<'_>,
        ) -> Result<(), ProcessError> {
            for r in batch {
                ctx.emit(
                    weir::Output::new(r.key.clone(), r.value.clone().unwrap_or_default())
                        .to_partition(0),
                );
            }
            Ok(())
        }
    }
    let kafka = shared();
    let (message, _, output) = too_large_stop(kafka, "big-anon", Unattributed);
    assert!(
        message.contains(&format!(
            "an output record for topic {output:?} is larger than the broker accepts"
        )) && message.contains("partition 0: a record of about")
            && message.contains("over the topic's max.message.bytes = 4096")
            && message.contains("Output::for_input"),
        "{message}"
    );
    eprintln!("too large, no input: {message}");
}
