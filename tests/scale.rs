//! Scale-out under faults, modelled on Kafka's transactions system test (the "copier") and the
//! Kafka Streams EOS system test: several instances of one application in one consumer group,
//! killed, stopped, restarted and paused while input keeps arriving, and a `read_committed`
//! reader running *during* each scenario. Every scenario ends with the output verified record
//! by record (duplicates, losses, order per partition, wrong aggregates, aborted reads), no
//! transaction left open, and the consumer group empty.
//!
//! The scenarios share this binary's broker and run one at a time (each runs three JVM-free but
//! CPU-hungry instances on a 2-core machine). Broker failures are in `tests/broker_faults.rs`.

mod common;

use std::time::{Duration, Instant};

use common::group::{feed, secs, AppGroup, Check};
use common::*;
use weir_testkit::{shared, ChildProcess};

const INSTANCES: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL: a crash, with a transaction open.
    Kill,
    /// SIGTERM: a clean stop (commit, leave the group).
    Terminate,
}

fn bounce(g: &mut AppGroup, instances: &mut [Option<ChildProcess>], i: usize, fault: Fault) {
    let p = instances[i].take().expect("instance running");
    match fault {
        Fault::Kill => p.kill(),
        Fault::Terminate => {
            let status = p.terminate(Duration::from_secs(60));
            assert!(
                status.success(),
                "instance {i} exited with {status} after SIGTERM; {}",
                g.log_tail(i, 80)
            );
        }
    }
    instances[i] = Some(g.start(i));
}

fn stop_all(g: &AppGroup, instances: Vec<Option<ChildProcess>>) {
    for (i, p) in instances.into_iter().enumerate() {
        if let Some(p) = p {
            let status = p.terminate(Duration::from_secs(60));
            assert!(
                status.success(),
                "instance {i} exited with {status} after SIGTERM; {}",
                g.log_tail(i, 80)
            );
        }
    }
}

/// 3 instances of `example` on 6 partitions while `records` are fed `chunk` at a time with
/// `pause` between chunks; three rounds of "wait for 20% more progress, then fault one
/// instance and restart it". Returns the verification report and the scenario's duration.
fn instance_fault_rounds(
    example: &'static str,
    check: Check,
    records: Vec<weir_testkit::TestRecord>,
    (chunk, pause): (usize, Duration),
    fault: Fault,
) -> (weir_testkit::Report, f64) {
    let _serial = serial();
    let kafka = shared();
    let started = Instant::now();
    let mut g = AppGroup::new(kafka, example, 6, INSTANCES);
    let total = records.len() as i64;
    let live = kafka.live_reader(&g.output);
    let feeder = feed(&g.bootstrap, &g.input, records, chunk, pause);
    let mut instances: Vec<Option<ChildProcess>> =
        (0..INSTANCES).map(|i| Some(g.start(i))).collect();
    for round in 0..3 {
        let target = (g.progress(kafka) + total / 5).min(total);
        g.wait_progress(kafka, target, Duration::from_secs(180));
        bounce(&mut g, &mut instances, round % INSTANCES, fault);
    }
    feeder.join().expect("feeder");
    g.wait_done(kafka, Duration::from_secs(180));
    stop_all(&g, instances);
    (g.verify(kafka, check, live), secs(started))
}

/// The copier: `mirror`, 3 instances on 6 partitions, >= 100,000 records, three fault rounds.
fn copier(fault: Fault) {
    let records = numbered(6, 17_000);
    let total = records.len();
    let (report, took) = instance_fault_rounds(
        "mirror",
        Check::Copy,
        records,
        (2_000, Duration::from_millis(200)),
        fault,
    );
    eprintln!(
        "copier ({fault:?}): {total} records, 3 instances, 6 partitions, 3 {fault:?} rounds, {took:.0} s: {report}"
    );
}

#[test]
fn copier_is_exactly_once_through_sigkill_rounds() {
    copier(Fault::Kill);
}

#[test]
fn copier_is_exactly_once_through_sigterm_rounds() {
    copier(Fault::Terminate);
}

/// `totals` (RocksDB state with changelogs), 3 instances on 6 partitions, three SIGKILL rounds:
/// every output is the running aggregate, one per input.
#[test]
fn totals_is_exactly_once_through_sigkill_rounds() {
    let records = payments(60_000, 20_000, 6, 41);
    let total = records.len();
    let (report, took) = instance_fault_rounds(
        "totals",
        Check::Totals,
        records,
        (1_000, Duration::from_millis(250)),
        Fault::Kill,
    );
    eprintln!(
        "totals (SIGKILL rounds): {total} records, 20,000 keys, 3 instances, 6 partitions, {took:.0} s: {report}"
    );
}

/// `totals` through rebalance rounds: instances join and leave cleanly in turn, so tasks move
/// between instances (restoring their state from the changelog) and come back (reusing it).
#[test]
fn totals_is_exactly_once_through_rebalance_rounds() {
    let _serial = serial();
    let kafka = shared();
    let started = Instant::now();
    let mut g = AppGroup::new(kafka, "totals", 6, INSTANCES);
    let records = payments(60_000, 20_000, 6, 43);
    let total = records.len() as i64;
    let live = kafka.live_reader(&g.output);
    let feeder = feed(
        &g.bootstrap,
        &g.input,
        records,
        1_000,
        Duration::from_millis(300),
    );
    let mut instances: Vec<Option<ChildProcess>> = vec![Some(g.start(0)), None, None];
    // Start 1, start 2, stop 0, start 0, stop 1, start 1.
    let steps: [(usize, bool); 6] = [
        (1, true),
        (2, true),
        (0, false),
        (0, true),
        (1, false),
        (1, true),
    ];
    for (i, start) in steps {
        let target = (g.progress(kafka) + total / 10).min(total);
        g.wait_progress(kafka, target, Duration::from_secs(180));
        if start {
            instances[i] = Some(g.start(i));
        } else {
            let p = instances[i].take().expect("running");
            let status = p.terminate(Duration::from_secs(60));
            assert!(
                status.success(),
                "instance {i} exited with {status}; {}",
                g.log_tail(i, 80)
            );
        }
    }
    feeder.join().expect("feeder");
    g.wait_done(kafka, Duration::from_secs(180));
    stop_all(&g, instances);
    let report = g.verify(kafka, Check::Totals, live);
    let restores = (0..INSTANCES)
        .flat_map(|i| g.logs(i))
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .map(|text| text.matches("restore finished").count())
        .sum::<usize>();
    eprintln!(
        "totals (rebalance rounds): {total} records, 6 membership changes, {restores} task restores, {:.0} s: {report}",
        secs(started)
    );
}

/// Zombie fencing: an instance frozen (SIGSTOP) past its session timeout is expelled, another
/// takes its partitions over; when it thaws (SIGCONT) it cannot commit anything for them.
#[test]
fn a_paused_instance_is_fenced_when_it_resumes() {
    let _serial = serial();
    let kafka = shared();
    let started = Instant::now();
    let mut g = AppGroup::new(kafka, "mirror", 4, 2);
    // The frozen instance's open transaction blocks its partitions' new owner until the broker
    // aborts it: keep that short.
    g.settings.push("transaction.timeout.ms=8000".into());
    let records = numbered(4, 10_000);
    let total = records.len() as i64;
    let live = kafka.live_reader(&g.output);
    let feeder = feed(
        &g.bootstrap,
        &g.input,
        records,
        500,
        Duration::from_millis(250),
    );
    let zombie = g.start(0);
    let mut other = Some(g.start(1));
    wait_for(
        "both instances in the group",
        Duration::from_secs(60),
        || kafka.group_members(&g.app).1.len() == 2,
    );
    g.wait_progress(kafka, total / 8, Duration::from_secs(120));

    zombie.suspend();
    let frozen_at = kafka.committed_offsets(&g.app, &g.input);
    wait_for(
        "the group to expel the frozen instance",
        Duration::from_secs(60),
        || kafka.group_members(&g.app).1.len() == 1,
    );
    wait_for(
        "the other instance to commit on every partition, the frozen one's included",
        Duration::from_secs(90),
        || {
            let now = kafka.committed_offsets(&g.app, &g.input);
            frozen_at.iter().all(|(p, o)| now[p] > *o)
        },
    );
    zombie.resume();
    let mut zombie = Some(zombie);
    feeder.join().expect("feeder");
    g.wait_done(kafka, Duration::from_secs(180));
    // Whether the thawed instance rejoined or stopped on its fencing error, it must not have
    // committed anything it no longer owned: the verifier would see duplicates.
    let zombie_exit = zombie
        .take()
        .map(|mut z| {
            if z.is_running() {
                z.terminate(Duration::from_secs(60))
            } else {
                z.wait(Duration::from_secs(1))
            }
        })
        .expect("zombie");
    stop_all(&g, vec![None, other.take()]);
    let report = g.verify(kafka, Check::Copy, live);
    let log: String = g
        .logs(0)
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    // The specific events, in order: the thawed instance learns its partitions are lost and
    // aborts its open transaction, then rejoins the group and is assigned partitions again;
    // it stops cleanly when asked (it was never fenced into an error).
    let lines: Vec<&str> = log.lines().collect();
    let lost = lines
        .iter()
        .position(|l| l.contains("partitions lost; the open transaction is aborted"))
        .unwrap_or_else(|| panic!("the thawed instance never logged its lost partitions:\n{log}"));
    let rejoined = lines[lost..]
        .iter()
        .position(|l| l.contains("partition assigned"))
        .unwrap_or_else(|| {
            panic!("the thawed instance did not rejoin after losing its partitions:\n{log}")
        });
    assert!(
        zombie_exit.success(),
        "the thawed instance exited with {zombie_exit}:\n{log}"
    );
    eprintln!(
        "zombie: {total} records, frozen past the session timeout, thawed, exit {zombie_exit}, {:.0} s: {report}\nthe zombie's log:\n{}\n{}",
        secs(started),
        lines[lost],
        lines[lost + rejoined]
    );
}
