//! Broker failures: the copier (`mirror`, 3 instances, 6 partitions) on a 3-broker KRaft
//! cluster of its own (replication factor 3, `min.insync.replicas=2` for every topic, internal
//! ones included), while each broker in turn is hard-killed (SIGKILL) and restarted. A
//! `read_committed` reader runs during the test and another after it.

mod common;

use std::time::{Duration, Instant};

use common::group::{feed, secs, AppGroup, Check};
use common::*;
use weir_testkit::{ChildProcess, Kafka};

#[test]
fn copier_is_exactly_once_through_broker_bounces() {
    let mut kafka = Kafka::start_local(3).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3-broker cluster at {}", kafka.bootstrap_servers());
    let started = Instant::now();
    let mut g = AppGroup::new(&kafka, "mirror", 6, 3);
    let records = numbered(6, 17_000);
    let total = records.len() as i64;
    let live = kafka.live_reader(&g.output);
    let feeder = feed(
        &g.bootstrap,
        &g.input,
        records,
        1_000,
        Duration::from_millis(400),
    );
    let mut instances: Vec<ChildProcess> = (0..3).map(|i| g.start(i)).collect();
    let mut bounces = Vec::new();
    for broker in 0..3 {
        let target = (g.progress(&kafka) + total / 5).min(total);
        g.wait_progress(&kafka, target, Duration::from_secs(240));
        let t = Instant::now();
        let cluster = kafka.local_mut().expect("a local cluster");
        cluster.kill(broker);
        let gone = cluster
            .wait_gone(broker, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        cluster
            .restart(broker)
            .unwrap_or_else(|e| panic!("restarting broker {broker}: {e}"));
        bounces.push(format!(
            "broker {}: fenced by the controller after {:.1} s, back and in sync after {:.1} s",
            broker + 1,
            gone.as_secs_f64(),
            secs(t)
        ));
        for (i, p) in instances.iter_mut().enumerate() {
            assert!(
                p.is_running(),
                "instance {i} died when broker {broker} was bounced; {}",
                g.log_tail(i, 80)
            );
        }
    }
    feeder.join().expect("feeder");
    g.wait_done(&kafka, Duration::from_secs(240));
    for (i, p) in instances.into_iter().enumerate() {
        let status = p.terminate(Duration::from_secs(60));
        assert!(
            status.success(),
            "instance {i} exited with {status}; {}",
            g.log_tail(i, 80)
        );
    }
    let report = g.verify(&kafka, Check::Copy, live);
    eprintln!(
        "copier (broker bounces): {total} records, 3 instances, 6 partitions, 3 brokers each SIGKILLed and restarted ({}), {:.0} s: {report}",
        bounces.join("; "),
        secs(started)
    );
}
