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
