//! The runtime against a real broker: commit cycle, aborts, fencing, reset policies,
//! at_least_once, poison policies, and start-up errors.

mod common;

use std::time::Duration;

use common::*;
use weir::{async_trait, Context, ProcessError, Processor, Record};
use weir_testkit::{shared, unique, verify_copy, Isolation, TestRecord};

#[test]
fn mirror_in_process_copies_every_record_once_and_commits_offsets() {
    let kafka = shared();
    let (input, output, app) = (unique("in"), unique("out"), unique("app"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    kafka.produce(&input, numbered(3, 1000));

    let started = std::time::Instant::now();
    let running = InProcess::start(
        config(kafka, &app, &input, &output).build().unwrap(),
        Mirror,
    );
    wait_for("3000 committed outputs", Duration::from_secs(60), || {
        committed_count(kafka, &output) >= 3000
    });
    let summary = running.stop().expect("clean stop");
    let lived = started.elapsed();

    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert_eq!(summary.records_in, 3000);
    assert_eq!(summary.records_out, 3000);
    let committed = kafka.committed_offsets(&app, &input);
    assert_eq!(
        committed.values().copied().collect::<Vec<_>>(),
        vec![Some(1000); 3]
    );
    assert!(kafka.open_transactions(&output).is_empty());
    // The loop waited for input (at least while the group formed and after the last record)
    // and for commits; the waits are parts of the run, not more than it.
    let waited = summary.waited;
    assert!(waited.input > Duration::ZERO, "{waited:?}");
    assert!(waited.commit > Duration::ZERO, "{waited:?}");
    assert!(waited.total() < lived, "{waited:?} in a run of {lived:?}");
}

/// A producer queue too small for a batch: the loop waits for room (back-pressure), shows it in
/// the summary, and still copies every record exactly once.
#[test]
fn a_full_producer_queue_is_waited_out_and_counted_as_output_waits() {
    let kafka = shared();
    let (input, output, app) = (unique("in"), unique("out"), unique("app"));
    kafka.create_topic(&input, 2);
    kafka.create_topic(&output, 2);
    kafka.produce(&input, numbered(2, 1000));

    let running = InProcess::start(
        config(kafka, &app, &input, &output)
            .set("producer.queue.buffering.max.messages", "10")
            .set("producer.linger.ms", "5")
            .build()
            .unwrap(),
        Mirror,
    );
    wait_for("2000 committed outputs", Duration::from_secs(60), || {
        committed_count(kafka, &output) >= 2000
    });
    let summary = running.stop().expect("clean stop");

    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert_eq!(summary.records_out, 2000);
    assert!(
        summary.waited.output > Duration::ZERO,
        "a 10-record queue never full for 2000 outputs: {:?}",
        summary.waited
    );
}

/// Mirrors, and keeps every record it sees (key and value shared with the input, not copied).
struct Keeper(std::sync::Arc<std::sync::Mutex<Vec<Record>>>);

#[async_trait]
impl Processor for Keeper {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        Mirror.process(batch, ctx).await?;
        self.0.lock().unwrap().extend(batch.iter().cloned());
        Ok(())
    }
}

/// Record values share librdkafka's fetch buffers instead of copying them: values an operator
/// keeps must stay intact after the application (and its consumer) stopped, and dropping the
/// last of them must release the consumer without hanging.
#[test]
fn values_kept_past_the_run_stay_intact_and_release_the_consumer_when_dropped() {
    let kafka = shared();
    let (input, output, app) = (unique("in"), unique("out"), unique("app"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    let value_of = |key: &str| key.repeat(1024 / key.len() + 1);
    let records = numbered(3, 500)
        .into_iter()
        .map(|mut r| {
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            r.value = Some(value_of(&key).into_bytes());
            r
        })
        .collect::<Vec<_>>();
    kafka.produce(&input, records);

    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = InProcess::start(
        config(kafka, &app, &input, &output).build().unwrap(),
        Keeper(std::sync::Arc::clone(&kept)),
    );
    wait_for("1500 committed outputs", Duration::from_secs(60), || {
        committed_count(kafka, &output) >= 1500
    });
    // Were the consumer destroyed under values still in use, the stop could hang in
    // librdkafka instead of returning: this test must fail, not hang.
    on_thread_within(
        "the application's stop",
        Duration::from_secs(90),
        move || running.stop(),
    )
    .expect("clean stop");

    let kept = std::mem::take(&mut *kept.lock().unwrap());
    assert!(kept.len() >= 1500, "kept {} records", kept.len());
    for r in &kept {
        let key = r.key_str().expect("a text key");
        assert_eq!(
            r.value.as_deref(),
            Some(value_of(key).as_bytes()),
            "the value kept of {} changed after the run",
            r.coordinates()
        );
    }
    on_thread_within(
        "dropping the last kept values (and with them the consumer)",
        Duration::from_secs(30),
        move || drop(kept),
    );
}

/// Mirrors, but fails once (retriably) when it meets `fail_at` (partition, offset), after
/// emitting the outputs of the records before it and giving the producer time to send them.
struct FailOnce {
    fail_at: (i32, i64),
    failed: bool,
    aborts: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[async_trait]
impl Processor for FailOnce {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            if !self.failed && (r.partition, r.offset) == self.fail_at {
                self.failed = true;
                // Let the transaction's records reach the broker, so the abort has something
                // to hide.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Err(ProcessError::retriable(format!(
                    "injected failure at {}",
                    r.coordinates()
                )));
            }
            ctx.emit(r.forward());
        }
        Ok(())
    }

    async fn on_abort(&mut self) -> Result<(), ProcessError> {
        self.aborts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn an_operator_error_aborts_and_nothing_of_it_is_visible() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "abort", 2);
    kafka.produce(&input, numbered(2, 2000));

    let aborts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let processor = FailOnce {
        fail_at: (1, 1500),
        failed: false,
        aborts: aborts.clone(),
    };
    // One long transaction, so the failure aborts outputs already written to the log.
    let config = config(kafka, &app, &input, &output)
        .commit_interval(Duration::from_secs(20))
        .set("transaction.timeout.ms", 60_000)
        .set("max.batch.records", 200)
        .build()
        .unwrap();
    let running = InProcess::start(config, processor);
    wait_committed(
        "the group's offsets to reach the end",
        Duration::from_secs(90),
        kafka,
        &app,
        &input,
        2000,
    );
    let summary = running.stop().expect("clean stop");

    assert_eq!(
        aborts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "on_abort once"
    );
    assert_eq!(summary.aborts, 1);
    let committed = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let everything = kafka.read_to_end(&output, Isolation::ReadUncommitted);
    let report = verify_copy(&kafka.read_acknowledged(&input), &committed);
    assert!(report.is_exactly_once(), "{report}");
    assert!(
        everything.len() > committed.len(),
        "the aborted attempt's records are in the log ({}) but hidden from read_committed ({})",
        everything.len(),
        committed.len()
    );
    assert!(kafka.open_transactions(&output).is_empty());
}

/// Values of 512 bytes and more go to librdkafka without a copy (it points at the fetch
/// buffer they share, held until the delivery report); smaller ones are copied; values above
/// 64 KiB are not even copied into the produce request. Every size, with and without headers,
/// arrives intact — also after an abort purged the producer's queue and the batch was replayed.
#[test]
fn values_of_every_size_and_their_headers_arrive_intact_across_an_abort() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "sizes", 2);
    let sizes = [0usize, 1, 100, 511, 512, 513, 1024, 70_000, 300_000];
    let records = (0..400usize)
        .map(|i| {
            let p = (i % 2) as i32;
            let size = sizes[i % sizes.len()];
            let mut r = TestRecord::new(p, format!("k{i}"), String::new());
            // A pattern that differs per record, so a value read from the wrong buffer shows.
            r.value = (i % 37 != 36).then(|| (0..size).map(|b| (b * 31 + i) as u8).collect());
            if i % 3 == 0 {
                r.headers = vec![
                    ("trace".into(), Some(format!("t{i}").into_bytes())),
                    ("empty".into(), None),
                ];
            }
            r
        })
        .collect::<Vec<_>>();
    kafka.produce(&input, records.clone());

    let aborts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let processor = FailOnce {
        fail_at: (1, 150),
        failed: false,
        aborts: std::sync::Arc::clone(&aborts),
    };
    let config = config(kafka, &app, &input, &output)
        .set("max.batch.records", 50)
        .build()
        .unwrap();
    let running = InProcess::start(config, processor);
    wait_committed(
        "the group's offsets to reach the end",
        Duration::from_secs(90),
        kafka,
        &app,
        &input,
        200,
    );
    let summary = running.stop().expect("clean stop");
    assert_eq!(summary.aborts, 1, "the injected failure aborted once");
    assert_eq!(aborts.load(std::sync::atomic::Ordering::SeqCst), 1);

    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let report = verify_copy(&kafka.read_acknowledged(&input), &out);
    assert!(report.is_exactly_once(), "{report}");
    for r in &out {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let i: usize = key[1..].parse().unwrap();
        assert_eq!(r.value, records[i].value, "the value of {key}");
        assert_eq!(r.headers, records[i].headers, "the headers of {key}");
    }
}

#[test]
fn a_second_incarnation_fences_the_first() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "fence", 2);
    let records = numbered(2, 3000);
    kafka.produce(&input, records[..1000].to_vec());

    // Same application id and instance id (so the same transactional id), two state dirs: a
    // copy of an instance started by mistake, or a zombie that comes back.
    let same_instance = |k| {
        config(kafka, &app, &input, &output)
            .instance_id("twin")
            .kafka("linger.ms", k)
            .build()
            .unwrap()
    };
    let first = InProcess::start(same_instance("5"), Mirror);
    wait_for(
        "the first incarnation to commit",
        Duration::from_secs(60),
        || committed_count(kafka, &output) > 0,
    );

    let second = InProcess::start(same_instance("5"), Mirror);
    // Keep input flowing so the first incarnation attempts another transactional call.
    for chunk in records[1000..].chunks(500) {
        kafka.produce(&input, chunk.to_vec());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        "the first incarnation to stop",
        Duration::from_secs(60),
        || first.finished(),
    );
    let err = first
        .join()
        .expect_err("the fenced incarnation must stop with an error");
    assert!(
        matches!(err, weir::RuntimeError::Fenced { .. }),
        "not the fenced error path: {err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("fenced") && message.contains(&format!("{app}-twin")),
        "{message}"
    );

    wait_committed(
        "the second incarnation to finish the input",
        Duration::from_secs(90),
        kafka,
        &app,
        &input,
        3000,
    );
    second.stop().expect("clean stop");
    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert!(kafka.open_transactions(&output).is_empty());
}

/// Mirrors and tells the test when partitions are assigned.
struct SignalAssigned(std::sync::mpsc::Sender<Vec<weir::AssignedPartition>>);

#[async_trait]
impl Processor for SignalAssigned {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        Mirror.process(batch, ctx).await
    }

    async fn on_partitions_assigned(
        &mut self,
        partitions: &[weir::AssignedPartition],
    ) -> Result<(), ProcessError> {
        let _ = self.0.send(partitions.to_vec());
        Ok(())
    }
}

#[test]
fn auto_offset_reset_earliest_latest_and_none() {
    let kafka = shared();
    let input = unique("reset-in");
    kafka.create_topic(&input, 2);
    kafka.produce(&input, numbered(2, 50)); // 100 records before any application starts

    // earliest: everything already in the topic.
    let out_earliest = unique("reset-out-earliest");
    kafka.create_topic(&out_earliest, 2);
    let app_earliest = unique("reset-earliest");
    let running = InProcess::start(
        config(kafka, &app_earliest, &input, &out_earliest)
            .auto_offset_reset(weir::OffsetReset::Earliest)
            .build()
            .unwrap(),
        Mirror,
    );
    wait_for("100 outputs", Duration::from_secs(60), || {
        committed_count(kafka, &out_earliest) == 100
    });
    running.stop().unwrap();

    // latest: only what arrives after the assignment.
    let out_latest = unique("reset-out-latest");
    kafka.create_topic(&out_latest, 2);
    let app_latest = unique("reset-latest");
    let (tx, rx) = std::sync::mpsc::channel();
    let running = InProcess::start(
        config(kafka, &app_latest, &input, &out_latest)
            .auto_offset_reset(weir::OffsetReset::Latest)
            .build()
            .unwrap(),
        SignalAssigned(tx),
    );
    let assigned = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("assignment");
    assert_eq!(assigned.len(), 2);
    for a in &assigned {
        assert_eq!(
            (a.start, a.start_offset),
            (weir::StartFrom::Latest, 50),
            "{a:?}"
        );
    }
    let new: Vec<_> = (0..2)
        .map(|p| weir_testkit::TestRecord::new(p, format!("new{p}"), format!("new-v{p}")))
        .collect();
    kafka.produce(&input, new);
    wait_for("the 2 new records", Duration::from_secs(60), || {
        committed_count(kafka, &out_latest) == 2
    });
    running.stop().unwrap();
    let seen: Vec<String> = kafka
        .read_to_end(&out_latest, Isolation::ReadCommitted)
        .iter()
        .map(|r| r.key_text())
        .collect();
    assert_eq!(seen, vec!["new0", "new1"]);

    // none: refuses without a committed offset, naming the partitions...
    let out_none = unique("reset-out-none");
    kafka.create_topic(&out_none, 2);
    let app_none = unique("reset-none");
    let err = InProcess::start(
        config(kafka, &app_none, &input, &out_none)
            .auto_offset_reset(weir::OffsetReset::None)
            .build()
            .unwrap(),
        Mirror,
    )
    .join()
    .expect_err("auto.offset.reset = none without committed offsets must fail");
    let message = err.to_string();
    assert!(
        matches!(err, weir::RuntimeError::NoCommittedOffset { .. }),
        "{message}"
    );
    assert!(
        message.contains(&format!("{input}/0")) && message.contains(&format!("{input}/1")),
        "{message}"
    );
    assert_eq!(committed_count(kafka, &out_none), 0);

    // ...and resumes from the committed offsets when there are some.
    let running = InProcess::start(
        config(kafka, &app_earliest, &input, &out_earliest)
            .auto_offset_reset(weir::OffsetReset::None)
            .build()
            .unwrap(),
        Mirror,
    );
    wait_for(
        "the 2 new records after the committed offsets",
        Duration::from_secs(60),
        || committed_count(kafka, &out_earliest) == 102,
    );
    running.stop().unwrap();
}

#[test]
fn at_least_once_commits_offsets_after_the_outputs_without_transactions() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "alo", 3);
    kafka.produce(&input, numbered(3, 500));
    let config = config(kafka, &app, &input, &output)
        .guarantee(weir::Guarantee::AtLeastOnce)
        .build()
        .unwrap();
    let running = InProcess::start(config, Mirror);
    wait_committed(
        "offsets at the end",
        Duration::from_secs(60),
        kafka,
        &app,
        &input,
        500,
    );
    let summary = running.stop().unwrap();
    assert_eq!(summary.records_in, 1500);
    let committed = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let everything = kafka.read_to_end(&output, Isolation::ReadUncommitted);
    // No transactions: no markers, nothing hidden; and a clean run copies each record once.
    assert_eq!(committed, everything);
    let report = verify_copy(&kafka.read_acknowledged(&input), &committed);
    assert!(report.is_exactly_once(), "{report}");
}

/// Values must be decimal integers; anything else is poison.
struct Parse;

#[async_trait]
impl Processor for Parse {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            match r.value_str().unwrap_or_default().parse::<i64>() {
                Ok(n) => ctx.emit(
                    weir::Output::new(r.key.clone(), (n * 2).to_string()).to_partition(r.partition),
                ),
                Err(e) => ctx.poison(
                    r,
                    format!(
                        "value {:?} is not an integer: {e}",
                        r.value_str().unwrap_or_default()
                    ),
                )?,
            }
        }
        Ok(())
    }
}

/// 10 records on partition 0, values 0..10 except offset 5, which is "five".
fn poison_input(kafka: &weir_testkit::Kafka, input: &str) {
    let records = (0..10).map(|i| {
        let mut r = weir_testkit::TestRecord::new(
            0,
            format!("k{i}"),
            if i == 5 {
                "five".to_string()
            } else {
                i.to_string()
            },
        );
        r.headers
            .push(("trace".into(), Some(format!("t{i}").into_bytes())));
        r
    });
    kafka.produce(input, records);
}

#[test]
fn poison_fail_stops_without_committing_past_the_record() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "poison-fail", 1);
    poison_input(kafka, &input);
    let err = InProcess::start(config(kafka, &app, &input, &output).build().unwrap(), Parse)
        .join()
        .expect_err("poison.policy = fail must stop");
    let message = err.to_string();
    assert!(matches!(err, weir::RuntimeError::Poison(_)), "{message}");
    assert!(
        message.contains(&format!("topic {input} partition 0 offset 5"))
            && message.contains("\"five\""),
        "{message}"
    );
    assert!(
        message.contains("poison.policy"),
        "the error says what to do: {message}"
    );
    let committed = kafka.committed_offsets(&app, &input)[&0];
    assert!(
        committed.is_none_or(|o| o <= 5),
        "committed past the poison record: {committed:?}"
    );
    let outputs = kafka.read_to_end(&output, Isolation::ReadCommitted);
    assert!(
        outputs.iter().all(|r| r.key_text().as_str() < "k5"),
        "outputs past the poison record: {outputs:?}"
    );
}

#[test]
fn poison_skip_counts_and_goes_on() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "poison-skip", 1);
    poison_input(kafka, &input);
    let config = config(kafka, &app, &input, &output)
        .poison_policy(weir::PoisonPolicy::Skip, None)
        .build()
        .unwrap();
    let running = InProcess::start(config, Parse);
    wait_for("offsets at the end", Duration::from_secs(60), || {
        kafka.committed_offsets(&app, &input)[&0] == Some(10)
    });
    let summary = running.stop().unwrap();
    assert_eq!(summary.skipped, 1);
    let values: Vec<String> = kafka
        .read_to_end(&output, Isolation::ReadCommitted)
        .iter()
        .map(|r| r.value_text())
        .collect();
    assert_eq!(values, ["0", "2", "4", "6", "8", "12", "14", "16", "18"]);
}

#[test]
fn poison_dead_letter_sends_the_original_record_with_error_headers_in_the_transaction() {
    let kafka = shared();
    let (input, output, dlq, app) = (
        unique("poison-in"),
        unique("poison-out"),
        unique("poison-dlq"),
        unique("poison-dlq-app"),
    );
    kafka.create_topic(&input, 1);
    kafka.create_topic(&output, 1);
    kafka.create_topic(&dlq, 1);
    poison_input(kafka, &input);
    let config = config(kafka, &app, &input, &output)
        .poison_policy(weir::PoisonPolicy::DeadLetter, Some(&dlq))
        .build()
        .unwrap();
    let running = InProcess::start(config, Parse);
    wait_for("offsets at the end", Duration::from_secs(60), || {
        kafka.committed_offsets(&app, &input)[&0] == Some(10)
    });
    let summary = running.stop().unwrap();
    assert_eq!(summary.dead_lettered, 1);
    assert_eq!(
        kafka.read_to_end(&output, Isolation::ReadCommitted).len(),
        9
    );
    let dead = kafka.read_to_end(&dlq, Isolation::ReadCommitted);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.key_text(), d.value_text()),
        ("k5".to_string(), "five".to_string())
    );
    assert_eq!(
        d.header("trace").as_deref(),
        Some("t5"),
        "original headers kept"
    );
    assert_eq!(d.header(weir::dlq_headers::TOPIC), Some(input));
    assert_eq!(d.header(weir::dlq_headers::PARTITION).as_deref(), Some("0"));
    assert_eq!(d.header(weir::dlq_headers::OFFSET).as_deref(), Some("5"));
    assert_eq!(d.header(weir::dlq_headers::APPLICATION), Some(app));
    assert!(d
        .header(weir::dlq_headers::ERROR)
        .unwrap()
        .contains("not an integer"));
    // Transactional: the dead letter is hidden until its transaction commits, like the outputs.
    assert!(kafka.open_transactions(&dlq).is_empty());
    let end = kafka.end_offsets(&dlq, Isolation::ReadUncommitted)[&0];
    assert!(
        end > dead.len() as i64,
        "a commit marker follows the dead letter (log end {end}): it was written in a transaction"
    );
}

#[test]
fn a_missing_input_topic_is_a_clear_error() {
    let kafka = shared();
    let (input, output) = (unique("missing-in"), unique("missing-out"));
    kafka.create_topic(&output, 1);
    let err = InProcess::start(
        config(kafka, &unique("missing"), &input, &output)
            .build()
            .unwrap(),
        Mirror,
    )
    .join()
    .expect_err("a missing input topic must fail");
    let message = err.to_string();
    assert!(
        message.contains(&format!("topic {input:?} does not exist")),
        "{message}"
    );
    assert!(message.contains("create it"), "{message}");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    let config = weir::Config::builder(unique("unreachable"), "127.0.0.1:1")
        .input_topic("in")
        .output_topic("out")
        .state_dir(state_dir())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = InProcess::start(config, Mirror)
        .join()
        .expect_err("no broker there");
    let message = err.to_string();
    assert!(
        message.contains("cannot reach the Kafka cluster at 127.0.0.1:1"),
        "{message}"
    );
    assert!(
        message.contains("bootstrap.servers"),
        "says what to check: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails fast: {:?}",
        started.elapsed()
    );
}

/// The `kafka.*` passthrough reaches the start-up admin client too: an application set up for
/// TLS against the plaintext broker fails the start-up check at once, naming the cluster —
/// before, the check connected without TLS and passed, and the application failed later.
#[test]
fn the_kafka_passthrough_reaches_the_start_up_check() {
    let kafka = shared();
    let (input, output) = (unique("tls-in"), unique("tls-out"));
    kafka.create_topic(&input, 1);
    kafka.create_topic(&output, 1);
    let started = std::time::Instant::now();
    let err = InProcess::start(
        config(kafka, &unique("tls"), &input, &output)
            .kafka("security.protocol", "ssl")
            .build()
            .unwrap(),
        Mirror,
    )
    .join()
    .expect_err("TLS against a plaintext listener must fail");
    let message = err.to_string();
    assert!(
        message.contains("cannot reach the Kafka cluster"),
        "the start-up check failed: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "fails fast: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_second_instance_joining_makes_the_first_commit_on_revoke_and_both_stay_exactly_once() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "rebal", 4);
    let records = numbered(4, 2_000);
    kafka.produce(&input, records[..4_000].to_vec());

    // A commit interval far longer than the test: anything committed before the end was
    // committed by a revoke (or the shutdown).
    let long = |_: ()| {
        config(kafka, &app, &input, &output)
            .commit_interval(Duration::from_secs(50))
            .set("transaction.timeout.ms", 120_000)
            .build()
            .unwrap()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let first = InProcess::start(long(()), SignalAssigned(tx));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(60))
            .expect("first assignment")
            .len(),
        4
    );
    wait_for(
        "the first instance to process the first half",
        Duration::from_secs(60),
        || {
            // Nothing is visible yet: one open transaction.
            kafka.read_to_end(&output, Isolation::ReadUncommitted).len() >= 4_000
        },
    );
    assert_eq!(
        committed_count(kafka, &output),
        0,
        "no commit point reached yet"
    );

    let second = InProcess::start(long(()), Mirror);
    wait_for(
        "the revoke to commit the first instance's transaction",
        Duration::from_secs(60),
        || committed_count(kafka, &output) >= 4_000,
    );
    kafka.produce(&input, records[4_000..].to_vec());
    std::thread::sleep(Duration::from_secs(3));
    let a = first.stop().expect("first stops cleanly");
    let b = second.stop().expect("second stops cleanly");
    assert_eq!(a.records_in + b.records_in, 8_000, "{a:?} {b:?}");
    assert!(
        b.records_in > 0,
        "the second instance got partitions: {b:?}"
    );
    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert!(kafka.open_transactions(&output).is_empty());
}

#[test]
fn the_kip848_consumer_protocol_shares_partitions_and_stays_exactly_once() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "k848", 4);
    let records = numbered(4, 2_000);
    kafka.produce(&input, records[..4_000].to_vec());
    let cfg = || {
        config(kafka, &app, &input, &output)
            .set("group.protocol", "consumer")
            .build()
            .unwrap()
    };
    let first = InProcess::start(cfg(), Mirror);
    wait_for(
        "the first instance to copy the first half",
        Duration::from_secs(60),
        || committed_count(kafka, &output) >= 4_000,
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let second = InProcess::start(cfg(), SignalAssigned(tx));
    let got = loop {
        let parts = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the broker assigns the second instance partitions");
        if !parts.is_empty() {
            break parts;
        }
    };
    assert!(
        got.len() < 4,
        "the second instance took every partition: {got:?}"
    );
    kafka.produce(&input, records[4_000..].to_vec());
    wait_for(
        "the copy of the second half",
        Duration::from_secs(60),
        || committed_count(kafka, &output) >= 8_000,
    );
    let a = first.stop().expect("first stops cleanly");
    let b = second.stop().expect("second stops cleanly");
    assert_eq!(a.records_in + b.records_in, 8_000, "{a:?} {b:?}");
    assert!(
        b.records_in > 0,
        "the broker gave the second instance partitions: {b:?}"
    );
    let report = verify_copy(
        &kafka.read_acknowledged(&input),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert!(kafka.open_transactions(&output).is_empty());
}

/// A hand-written copier on the raw clients: reads partition 0 of `input` from the group's
/// committed offset, and "crashes" (drops everything) after producing `crash_after` records of
/// its first batch — committing the batch's offsets *before* producing when `commit_first`,
/// never reaching the commit otherwise. `crash_after: None` runs to the end and commits after.
fn raw_copy(
    input: &str,
    output: &str,
    group: &str,
    commit_first: bool,
    crash_after: Option<usize>,
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let kafka = shared();
    let consumer: BaseConsumer = weir_kafka::clients::base_config(kafka.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> =
        weir_kafka::clients::base_config(kafka.bootstrap_servers())
            .set("acks", "all")
            .create()
            .unwrap();
    // Where the group's committed offset says (the bookmark), else the beginning.
    let start = kafka.committed_offsets(group, input)[&0].unwrap_or(0);
    let end = kafka.end_offsets(input, Isolation::ReadCommitted)[&0];
    if start >= end {
        return; // nothing left to read
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(input, 0, Offset::Offset(start))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut batch = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "reading {input}");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            batch.push((
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            ));
            if m.offset() + 1 >= end {
                break;
            }
        }
    }
    let commit = |next: i64| kafka.set_committed_offsets(group, input, &[(0, next)]);
    let next = batch.last().unwrap().0 + 1;
    if commit_first {
        commit(next);
    }
    let process = crash_after.unwrap_or(batch.len());
    for (_, key, value) in &batch[..process] {
        let mut r = BaseRecord::<Vec<u8>, Vec<u8>>::to(output).partition(0);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    if crash_after.is_some() {
        return; // the crash: the rest of the batch is never processed
    }
    if !commit_first {
        commit(next);
    }
}

/// docs/offset-management.md, "commit only after processing": the same crash, two commit
/// orders. Committing first (at-most-once) loses the records the crash interrupted; committing
/// after processing (at-least-once, weir's order) loses nothing and repeats them instead.
#[test]
fn committing_offsets_before_processing_loses_records_and_after_does_not() {
    let kafka = shared();
    for commit_first in [true, false] {
        let (input, output, group) = (unique("order-in"), unique("order-out"), unique("order"));
        kafka.create_topic(&input, 1);
        kafka.create_topic(&output, 1);
        kafka.produce(&input, numbered(1, 100));
        raw_copy(&input, &output, &group, commit_first, Some(40)); // crash after 40 of 100
        raw_copy(&input, &output, &group, commit_first, None); // restart, run to the end
        let report = verify_copy(
            &kafka.read_acknowledged(&input),
            &kafka.read_to_end(&output, Isolation::ReadCommitted),
        );
        if commit_first {
            assert_eq!(
                report.lost.len(),
                60,
                "commit first: 60 records lost\n{report}"
            );
            assert!(report.duplicated.is_empty(), "{report}");
        } else {
            assert!(
                report.lost.is_empty(),
                "commit after: nothing lost\n{report}"
            );
            assert_eq!(report.duplicated.len(), 40, "{report}");
        }
    }
}

/// `commit.overlap` uses a second transactional id per instance (`…#2`). A transaction it left
/// open — a crash with both producers' transactions open — is aborted at start-up, also when
/// the restart turned `commit.overlap` off; otherwise it would hold every read_committed reader
/// of the output back until its timeout.
#[test]
fn a_transaction_the_second_producer_left_open_is_aborted_at_start_up() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let kafka = shared();
    for overlap in [false, true] {
        let (input, output, app) = (unique("in"), unique("out"), unique("app"));
        kafka.create_topic(&input, 3);
        kafka.create_topic(&output, 3);
        kafka.produce(&input, numbered(3, 100));
        let config = config(kafka, &app, &input, &output)
            .instance_id("i1")
            .set("commit.overlap", overlap)
            .build()
            .unwrap();

        // The leftover: an open transaction of the second id, with records on the output,
        // and a timeout far beyond this test.
        let leftover: BaseProducer = weir_kafka::clients::base_config(kafka.bootstrap_servers())
            .set("transactional.id", config.second_transactional_id("i1"))
            .set("transaction.timeout.ms", "300000")
            .create()
            .unwrap();
        leftover.init_transactions(Duration::from_secs(30)).unwrap();
        leftover.begin_transaction().unwrap();
        for p in 0..3 {
            leftover
                .send(
                    BaseRecord::to(&output)
                        .partition(p)
                        .key("stale")
                        .payload("x"),
                )
                .unwrap();
        }
        leftover.flush(Duration::from_secs(30)).unwrap();
        assert_eq!(
            kafka.open_transactions(&output).len(),
            3,
            "the leftover transaction is open before the start (overlap = {overlap})"
        );

        let running = InProcess::start(config, Mirror);
        wait_for(
            "300 committed outputs behind the leftover transaction",
            Duration::from_secs(60),
            || committed_count(kafka, &output) >= 300,
        );
        running.stop().expect("clean stop");
        let report = verify_copy(
            &kafka.read_acknowledged(&input),
            &kafka.read_to_end(&output, Isolation::ReadCommitted),
        );
        assert!(report.is_exactly_once(), "overlap = {overlap}: {report}");
        assert!(
            kafka.open_transactions(&output).is_empty(),
            "overlap = {overlap}: {:?}",
            kafka.open_transactions(&output)
        );
        drop(leftover);
    }
}

/// Records, at each commit, how many records it had processed below each committed offset, so
/// that the test can check afterwards, knowing every input record's offset, that the committed
/// offsets stepped over transaction markers and aborted records only, never over a record not
/// yet processed.
struct Recording {
    processed: std::collections::BTreeSet<(i32, i64)>,
    /// `(partition, committed offset, records processed below it)` per commit.
    commits: std::sync::Arc<std::sync::Mutex<Vec<(i32, i64, usize)>>>,
}

#[async_trait]
impl Processor for Recording {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            self.processed.insert((r.partition, r.offset));
            ctx.emit(r.forward());
        }
        Ok(())
    }

    async fn on_commit(&mut self, info: &weir::CommitInfo) -> Result<(), ProcessError> {
        let mut commits = self.commits.lock().unwrap();
        for (tp, committed) in &info.offsets {
            let below = self
                .processed
                .range((tp.partition, 0)..(tp.partition, *committed))
                .count();
            commits.push((tp.partition, *committed, below));
        }
        Ok(())
    }
}

/// On input written in transactions (any exactly-once producer, weir included) every
/// transaction ends with a marker the application never sees. When all input is processed the
/// committed offsets step over the trailing markers, so the group's lag is 0 — also when a
/// marker arrives in a later fetch than its transaction's records (here: fetches of one record
/// batch, and batches that end at a transaction's last record) — and they never pass a record
/// not yet processed. Records of aborted upstream transactions never reach the output.
#[test]
fn committed_offsets_step_over_transaction_markers_so_lag_reaches_zero() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "markers", 2);
    let transaction = |t: usize| -> Vec<TestRecord> {
        (0..2)
            .flat_map(|p| (0..200).map(move |i| TestRecord::new(p, format!("k{p}-{t}-{i}"), "v")))
            .collect()
    };
    // Round 1 before the start: 4 transactions, the third aborted.
    let (mut committed, mut aborted) =
        kafka.produce_transactions(&input, (0..4).map(transaction).collect(), |t| t == 2);
    let commits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = InProcess::start(
        config(kafka, &app, &input, &output)
            .set("max.batch.records", 200)
            .set("consumer.max.partition.fetch.bytes", "64")
            .build()
            .unwrap(),
        Recording {
            processed: Default::default(),
            commits: std::sync::Arc::clone(&commits),
        },
    );
    let at_log_end = |what: &str| {
        let ends = kafka.end_offsets(&input, Isolation::ReadUncommitted);
        let want: std::collections::BTreeMap<i32, Option<i64>> =
            ends.iter().map(|(p, e)| (*p, Some(*e))).collect();
        wait_for(what, Duration::from_secs(60), || {
            kafka.committed_offsets(&app, &input) == want
        });
        ends
    };
    let ends = at_log_end("the committed offsets to reach the log end, past the last marker");
    // The last data record of each partition is followed by its transaction's marker.
    for (p, end) in &ends {
        let last = committed
            .iter()
            .filter(|r| r.partition == *p)
            .map(|r| r.offset)
            .max();
        assert_eq!(
            last,
            Some(end - 2),
            "partition {p}: a marker after the last record"
        );
    }
    // Round 2, into the running application: 3 more transactions, the last one aborted, so
    // the log ends with an abort marker over records the application never sees.
    let (c2, a2) =
        kafka.produce_transactions(&input, (4..7).map(transaction).collect(), |t| t == 6);
    committed.extend(c2);
    aborted.extend(a2);
    at_log_end("the committed offsets to reach the log end again, past an aborted transaction");
    let summary = running.stop().expect("clean stop");

    // Never past a record not yet processed: at each commit, every committed upstream record
    // below the committed offset had been processed.
    let commits = commits.lock().unwrap().clone();
    assert!(!commits.is_empty());
    for (p, offset, processed_below) in &commits {
        let records_below = committed
            .iter()
            .filter(|r| r.partition == *p && r.offset < *offset)
            .count();
        assert_eq!(
            records_below, *processed_below,
            "partition {p}: committed offset {offset} with {records_below} records before it, of which {processed_below} were processed"
        );
    }
    let out = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let report = verify_copy(&kafka.read_acknowledged(&input), &out);
    assert!(report.is_exactly_once(), "{report}");
    assert_eq!(out.len(), committed.len());
    let aborted_keys: std::collections::HashSet<_> = aborted.iter().map(|r| &r.key).collect();
    assert!(
        out.iter().all(|r| !aborted_keys.contains(&r.key)),
        "a record of an aborted upstream transaction reached the output"
    );
    assert_eq!(summary.records_in as usize, committed.len());
    eprintln!(
        "{} commits; committed offsets at the log end {ends:?} (past the markers); {} aborted upstream records never output",
        commits.len(),
        aborted.len()
    );
}
