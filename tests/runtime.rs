//! The runtime against a real broker: commit cycle, aborts, fencing, reset policies,
//! at_least_once, poison policies, and start-up errors.

mod common;

use std::time::Duration;

use common::*;
use weir::{async_trait, Context, ProcessError, Processor, Record};
use weir_testkit::{shared, unique, verify_copy, Isolation};

struct Mirror;

#[async_trait]
impl Processor for Mirror {
    async fn process(&mut self, batch: &[Record], ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        for r in batch {
            ctx.emit(r.forward());
        }
        Ok(())
    }
}

#[test]
fn mirror_in_process_copies_every_record_once_and_commits_offsets() {
    let kafka = shared();
    let (input, output, app) = (unique("in"), unique("out"), unique("app"));
    kafka.create_topic(&input, 3);
    kafka.create_topic(&output, 3);
    kafka.produce(&input, numbered(3, 1000));

    let running = InProcess::start(config(kafka, &app, &input, &output).build().unwrap(), Mirror);
    wait_for("3000 committed outputs", Duration::from_secs(60), || committed_count(kafka, &output) >= 3000);
    let summary = running.stop().expect("clean stop");

    let report = verify_copy(
        &kafka.read_to_end(&input, Isolation::ReadCommitted),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert_eq!(summary.records_in, 3000);
    assert_eq!(summary.records_out, 3000);
    let committed = kafka.committed_offsets(&app, &input);
    assert_eq!(committed.values().copied().collect::<Vec<_>>(), vec![Some(1000); 3]);
    assert!(kafka.open_transactions(&output).is_empty());
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
    async fn process(&mut self, batch: &[Record], ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        for r in batch {
            if !self.failed && (r.partition, r.offset) == self.fail_at {
                self.failed = true;
                // Let the transaction's records reach the broker, so the abort has something
                // to hide.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Err(ProcessError::retriable(format!("injected failure at {}", r.coordinates())));
            }
            ctx.emit(r.forward());
        }
        Ok(())
    }

    async fn on_abort(&mut self) -> Result<(), ProcessError> {
        self.aborts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn an_operator_error_aborts_and_nothing_of_it_is_visible() {
    let kafka = shared();
    let (input, output, app) = (unique("abort-in"), unique("abort-out"), unique("abort-app"));
    kafka.create_topic(&input, 2);
    kafka.create_topic(&output, 2);
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
        .set("max.batch.records", 200)
        .build()
        .unwrap();
    let running = InProcess::start(config, processor);
    wait_for("the group's offsets to reach the end", Duration::from_secs(90), || {
        kafka.committed_offsets(&app, &input).values().all(|o| *o == Some(2000))
    });
    let summary = running.stop().expect("clean stop");

    assert_eq!(aborts.load(std::sync::atomic::Ordering::SeqCst), 1, "on_abort once");
    assert_eq!(summary.aborts, 1);
    let committed = kafka.read_to_end(&output, Isolation::ReadCommitted);
    let everything = kafka.read_to_end(&output, Isolation::ReadUncommitted);
    let report = verify_copy(&kafka.read_to_end(&input, Isolation::ReadCommitted), &committed);
    assert!(report.is_exactly_once(), "{report}");
    assert!(
        everything.len() > committed.len(),
        "the aborted attempt's records are in the log ({}) but hidden from read_committed ({})",
        everything.len(),
        committed.len()
    );
    assert!(kafka.open_transactions(&output).is_empty());
}

#[test]
fn a_second_incarnation_fences_the_first() {
    let kafka = shared();
    let (input, output, app) = (unique("fence-in"), unique("fence-out"), unique("fence-app"));
    kafka.create_topic(&input, 2);
    kafka.create_topic(&output, 2);
    let records = numbered(2, 3000);
    kafka.produce(&input, records[..1000].to_vec());

    // Same application id and instance id (so the same transactional id), two state dirs: a
    // copy of an instance started by mistake, or a zombie that comes back.
    let same_instance = |k| config(kafka, &app, &input, &output).instance_id("twin").kafka("linger.ms", k).build().unwrap();
    let first = InProcess::start(same_instance("5"), Mirror);
    wait_for("the first incarnation to commit", Duration::from_secs(60), || committed_count(kafka, &output) > 0);

    let second = InProcess::start(same_instance("5"), Mirror);
    // Keep input flowing so the first incarnation attempts another transactional call.
    for chunk in records[1000..].chunks(500) {
        kafka.produce(&input, chunk.to_vec());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for("the first incarnation to stop", Duration::from_secs(60), || first.finished());
    let err = first.join().expect_err("the fenced incarnation must stop with an error");
    assert!(matches!(err, weir::RuntimeError::Fenced { .. }), "not the fenced error path: {err}");
    let message = err.to_string();
    assert!(message.contains("fenced") && message.contains(&format!("{app}-twin")), "{message}");

    wait_for("the second incarnation to finish the input", Duration::from_secs(90), || {
        kafka.committed_offsets(&app, &input).values().all(|o| *o == Some(3000))
    });
    second.stop().expect("clean stop");
    let report = verify_copy(
        &kafka.read_to_end(&input, Isolation::ReadCommitted),
        &kafka.read_to_end(&output, Isolation::ReadCommitted),
    );
    assert!(report.is_exactly_once(), "{report}");
    assert!(kafka.open_transactions(&output).is_empty());
}
