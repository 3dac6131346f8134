//! Broker failures: the copier (`mirror`, 3 instances, 6 partitions) on a 3-broker KRaft
//! cluster of its own (replication factor 3, `min.insync.replicas=2` for every topic, internal
//! ones included), while each broker in turn is hard-killed (SIGKILL) and restarted. A
//! `read_committed` reader runs during the test and another after it.

mod common;

use std::time::{Duration, Instant};

use common::group::{feed, secs, AppGroup, Check};
use common::*;
use weir_testkit::{ChildProcess, Kafka};

/// How a broker goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Down {
    /// SIGKILL: a crash, fenced by the controller after its session timeout.
    Kill,
    /// SIGTERM: a controlled shutdown (leadership moved away first).
    Stop,
}

#[test]
fn copier_is_exactly_once_through_broker_bounces() {
    bounce_each_broker(Down::Kill, false);
}

/// Clean broker stops (SIGTERM) in turn; then two of the three brokers down at once, below
/// `min.insync.replicas`: the pipeline stalls (nothing commits, the instances keep running and
/// say so in their logs), and resumes with nothing lost or duplicated when one broker returns.
#[test]
fn copier_is_exactly_once_through_clean_broker_stops_and_a_stall_below_min_isr() {
    bounce_each_broker(Down::Stop, true);
}

fn bounce_each_broker(down: Down, below_min_isr: bool) {
    let _serial = serial();
    let mut kafka = Kafka::start_local(3).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("3-broker cluster at {}", kafka.bootstrap_servers());
    let started = Instant::now();
    let mut g = AppGroup::new(&kafka, "mirror", 6, 3);
    // Failover, not unavailability: every partition has a replica on each broker.
    for topic in [&g.input, &g.output] {
        let replicas = replica_counts(&kafka, topic);
        assert!(
            replicas.iter().all(|&n| n == 3),
            "{topic} must have 3 replicas per partition; it has {replicas:?}"
        );
    }
    if below_min_isr {
        g.metrics = (0..3)
            .map(|_| weir_testkit::metrics::free_address())
            .collect();
    }
    let mut records = numbered(6, 17_000);
    let total = records.len() as i64;
    // With the stall, the last 6,000 records are held back: half of them arrive just before
    // it, so that work is waiting (and transactions open) when the brokers go, and the pipeline
    // must resume to commit them once one broker is back; the rest once both are back.
    let mut held_back = if below_min_isr {
        records.split_off(records.len() - 6_000)
    } else {
        Vec::new()
    };
    let live = kafka.live_reader(&g.output);
    let mut feeder = Some(feed(
        &g.bootstrap,
        &g.input,
        records,
        1_000,
        Duration::from_millis(400),
    ));
    let mut instances: Vec<ChildProcess> = (0..3).map(|i| g.start(i)).collect();
    let mut bounces = Vec::new();
    let check_running = |instances: &mut Vec<ChildProcess>, g: &AppGroup, when: &str| {
        for (i, p) in instances.iter_mut().enumerate() {
            assert!(
                p.is_running(),
                "instance {i} died {when}; {}",
                g.log_tail(i, 80)
            );
        }
    };
    for broker in 0..3 {
        let target = (g.progress(&kafka) + total / 5).min(total);
        g.wait_progress(&kafka, target, Duration::from_secs(240));
        let t = Instant::now();
        let cluster = kafka.local_mut().expect("a local cluster");
        match down {
            Down::Kill => cluster.kill(broker),
            Down::Stop => cluster.stop(broker),
        }
        let gone = cluster
            .wait_gone(broker, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        cluster
            .restart(broker)
            .unwrap_or_else(|e| panic!("restarting broker {broker}: {e}"));
        bounces.push(format!(
            "broker {}: out of the metadata after {:.1} s, back and in sync after {:.1} s",
            broker + 1,
            gone.as_secs_f64(),
            secs(t)
        ));
        check_running(
            &mut instances,
            &g,
            &format!("when broker {broker} went down ({down:?})"),
        );
    }
    if below_min_isr {
        // Two of three brokers down: every partition is below min.insync.replicas (2), and the
        // controller quorum is lost. Nothing can commit.
        let target = (g.progress(&kafka) + total / 10).min(total - held_back.len() as i64);
        g.wait_progress(&kafka, target, Duration::from_secs(240));
        // Everything fed is acknowledged before the brokers go (the feeder fails on a send the
        // cluster does not acknowledge).
        if let Some(f) = feeder.take() {
            f.join().expect("feeder");
        }
        let last = held_back.split_off(held_back.len() / 2);
        kafka.produce(&g.input, std::mem::take(&mut held_back));
        held_back = last;
        let fed = total - held_back.len() as i64;
        let logged = |g: &AppGroup| -> Vec<String> {
            (0..3)
                .map(|i| {
                    g.logs(i)
                        .last()
                        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                        .unwrap_or_default()
                })
                .collect()
        };
        let logs_before = logged(&g);
        let cluster = kafka.local_mut().expect("a local cluster");
        cluster.kill(0);
        cluster.kill(1);
        // Below min.insync.replicas, and without a controller quorum: nothing can commit
        // (the group coordinator may be gone too, so progress is not read now). The gauges are
        // sampled twice a second meanwhile: an instance with nothing to do (its input all
        // processed and committed before the kill) stalls on its errors and resumes once they
        // stop coming, so one look at the end could miss every stall.
        let scrape_all = |g: &AppGroup| -> Vec<Option<f64>> {
            g.metrics
                .iter()
                .map(|a| {
                    weir_testkit::metrics::try_scrape(a)
                        .and_then(|t| weir_testkit::metrics::sample(&t, "weir_stalled", ""))
                })
                .collect()
        };
        let outage = Instant::now();
        let mut gauges_seen: Vec<Option<f64>> = vec![None; g.metrics.len()];
        while outage.elapsed() < Duration::from_secs(25) {
            for (seen, now) in gauges_seen.iter_mut().zip(scrape_all(&g)) {
                *seen = match (*seen, now) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        check_running(&mut instances, &g, "with two of three brokers down");
        let said: Vec<String> = logged(&g)
            .iter()
            .zip(&logs_before)
            .flat_map(|(now, then)| {
                now.get(then.len()..)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        // weir's own word for it, in the log and in the gauge (its threshold is
        // transaction.timeout.ms, 10 s): every instance has errors or records waiting.
        let stalled = said
            .iter()
            .filter(|l| l.contains("stalled: nothing committed"))
            .count();
        assert!(
            stalled >= 1,
            "no instance logged that it stalled; they said: {said:#?}"
        );
        assert!(
            gauges_seen.contains(&Some(1.0)),
            "no instance showed weir_stalled 1 during the stall (highest per instance: \
             {gauges_seen:?})"
        );
        let cluster = kafka.local_mut().expect("a local cluster");
        cluster
            .start_again(0)
            .unwrap_or_else(|e| panic!("restarting broker 0 after the stall: {e}"));
        // How fast weir resumes counts from when the cluster can take writes again: the
        // controller quorum has to form and move leaders and in-sync replicas first.
        let writable = cluster
            .wait_writable(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{e}"));
        let resuming = Instant::now();
        g.wait_progress(&kafka, fed, Duration::from_secs(120));
        let cluster = kafka.local_mut().expect("a local cluster");
        cluster
            .restart(1)
            .unwrap_or_else(|e| panic!("restarting broker 1 after the stall: {e}"));
        check_running(&mut instances, &g, "after the stall");
        // Writable everywhere again (both brokers back and in sync): the rest of the input.
        kafka.produce(&g.input, std::mem::take(&mut held_back));
        bounces.push(format!(
            "brokers 1 and 2 down together for 25 s: {} warnings logged, {stalled} of them weir's \"stalled\", e.g. {:?}; \
             broker 1 back: writable after {:.1} s, committing again {:.1} s later",
            said.len(),
            said.iter()
                .find(|l| l.contains("stalled: nothing committed"))
                .map(|l| l.chars().take(300).collect::<String>()),
            writable.as_secs_f64(),
            secs(resuming)
        ));
    }
    if let Some(f) = feeder {
        f.join().expect("feeder");
    }
    g.wait_done(&kafka, Duration::from_secs(240));
    if below_min_isr {
        // Committing again, each stalled instance said so and cleared its gauge.
        for i in 0..3 {
            let log = g
                .logs(i)
                .last()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .unwrap_or_default();
            let stalled = log.rfind("stalled: nothing committed");
            let resumed = log.rfind("resumed: ");
            assert!(
                stalled.is_none() || resumed > stalled,
                "instance {i} stalled and never said it resumed; {}",
                g.weir_tail(i, 20)
            );
        }
        wait_for(
            "every instance's weir_stalled to be 0",
            Duration::from_secs(30),
            || {
                g.metrics.iter().all(|a| {
                    weir_testkit::metrics::try_scrape(a)
                        .and_then(|t| weir_testkit::metrics::sample(&t, "weir_stalled", ""))
                        .is_none_or(|v| v == 0.0)
                })
            },
        );
    }
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
        "copier (brokers {down:?}): {total} records, 3 instances, 6 partitions, 3 brokers each down and back ({}), {:.0} s: {report}",
        bounces.join("; "),
        secs(started)
    );
}

/// The number of replicas of each of `topic`'s partitions, from the cluster's metadata.
fn replica_counts(kafka: &Kafka, topic: &str) -> Vec<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = weir_kafka::clients::base_config(kafka.bootstrap_servers())
        .create()
        .expect("a metadata client");
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    md.topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.replicas().len()))
        .collect()
}

/// The failure report of the scenarios above prints the output's batches as a broker holds them
/// (`LocalCluster::dump_partition`): producer id and epoch per batch, and each transaction's
/// marker. A committed and an aborted transaction must both show.
#[test]
fn a_partition_dump_names_producers_and_transaction_markers() {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let kafka = Kafka::start_local(1).unwrap_or_else(|e| panic!("{e}"));
    let topic = weir_testkit::unique("dump");
    kafka.create_topic(&topic, 1);
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        weir_kafka::clients::base_config(kafka.bootstrap_servers())
            .set("transactional.id", weir_testkit::unique("dump-txn"))
            .create()
            .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init");
    for (n, commit) in [(3, true), (2, false)] {
        producer.begin_transaction().expect("begin");
        for i in 0..n {
            let value = format!("v{i}");
            producer
                .send(
                    BaseRecord::<str, str>::to(&topic)
                        .partition(0)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .expect("send");
        }
        if commit {
            producer.commit_transaction(timeout).expect("commit");
        } else {
            producer.flush(timeout).expect("flush");
            producer.abort_transaction(timeout).expect("abort");
        }
    }
    let dump = kafka
        .local()
        .expect("a local cluster")
        .dump_partition(&topic, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("baseOffset:"))
        .collect();
    // The records (in one batch or more per transaction) and two markers, each marker in a
    // batch of its own.
    let control = batches.iter().filter(|b| b.contains("isControl: true"));
    assert_eq!(control.count(), 2, "{dump}");
    assert!(batches.len() >= 4, "{dump}");
    assert!(
        batches
            .iter()
            .all(|b| b.contains("producerId:") && b.contains("isTransactional: true")),
        "{dump}"
    );
    assert!(dump.contains("endTxnMarker: COMMIT"), "{dump}");
    assert!(dump.contains("endTxnMarker: ABORT"), "{dump}");
    assert!(
        kafka
            .local()
            .expect("a local cluster")
            .dump_partition(&topic, 7)
            .is_err(),
        "a partition that does not exist has no dump"
    );
}
