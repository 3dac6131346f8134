//! Time: the `windows` example (tumbling windows, emitted once when they close) under SIGKILL,
//! rebalances and a lost state directory; session windows bridged by a late record; timers in
//! both domains, and stream time across a restart.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::group::{feed, secs, AppGroup, Check};
use common::*;
use rand::{Rng, SeedableRng};
use weir::{
    async_trait, Context, Output, ProcessError, Processor, Record, StoreSpec, TimeDomain, Timer,
};
use weir_testkit::{expected_windows, shared, Isolation, TestRecord};

const WINDOW_MS: i64 = 1_000;
const GRACE_MS: i64 = 500;
/// Event time of the first records: two hours ago, rounded to the minute (the broker deletes
/// segments older than `retention.ms` by their timestamps, and refuses records more than an
/// hour ahead of its clock).
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        (now - 2 * 3_600_000) / 60_000 * 60_000
    })
}

/// `n` payments on `partitions` partitions (account k on partition k % partitions), 10 ms of
/// event time apart per partition, most a little out of order (up to 400 ms back), one in 6
/// far behind (2–4 windows: late). So many late records make lateness decided wrongly after a
/// restart (stream time not restored) show: a task resumes with one of them first every few
/// restarts.
fn timed_payments(n: usize, partitions: i32, seed: u64) -> Vec<TestRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keys = 30;
    (0..n)
        .map(|i| {
            let k = rng.random_range(0..keys);
            let p = (k % partitions as usize) as i32;
            let base = t0() + (i as i64 / i64::from(partitions)) * 10;
            let ts = if rng.random_range(0..6) == 0 {
                base - rng.random_range(2 * WINDOW_MS..4 * WINDOW_MS)
            } else {
                base - rng.random_range(0..400)
            };
            let v: i64 = rng.random_range(-1_000..1_000);
            TestRecord::new(p, format!("acct-{k}"), v.to_string()).at(ts)
        })
        .collect()
}

/// One record per partition an hour ahead in event time: every window of the data closes.
fn closers(partitions: i32) -> Vec<TestRecord> {
    (0..partitions)
        .map(|p| TestRecord::new(p, format!("closer-{p}"), "0").at(t0() + 3_600_000))
        .collect()
}

#[test]
fn every_closed_window_is_emitted_once_across_sigkills_a_rebalance_and_a_lost_state_directory() {
    let _serial = serial();
    let kafka = shared();
    let started = Instant::now();
    let partitions = 3;
    let mut g = AppGroup::new(kafka, "windows", partitions, 2);
    g.args = vec![
        "--window-ms".into(),
        WINDOW_MS.to_string(),
        "--grace-ms".into(),
        GRACE_MS.to_string(),
    ];
    let records = timed_payments(54_000, partitions, 24);
    let total = records.len() as i64;
    let live = kafka.live_reader(&g.output);
    let feeder = feed(
        &g.bootstrap,
        &g.input,
        records,
        1_000,
        Duration::from_millis(250),
    );
    let mut instances = vec![Some(g.start(0)), Some(g.start(1))];
    let mut rng = rand::rng();
    let mut kills = 0;
    // SIGKILLs at random moments while input arrives (windows close all the time: event time
    // moves 1 s per 100 records of a partition).
    for round in 0..4 {
        let target = (g.progress(kafka) + total / 10).min(total);
        g.wait_progress(kafka, target, Duration::from_secs(180));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        let i = round % 2;
        instances[i].take().expect("running").kill();
        kills += 1;
        instances[i] = Some(g.start(i));
    }
    // A rebalance: instance 1 leaves cleanly (its tasks move to instance 0, with their windows
    // and timers), then comes back with its state directory gone (restored from the
    // changelogs, timers included).
    let target = (g.progress(kafka) + total / 10).min(total);
    g.wait_progress(kafka, target, Duration::from_secs(180));
    let status = instances[1]
        .take()
        .expect("running")
        .terminate(Duration::from_secs(60));
    assert!(
        status.success(),
        "instance 1: {status}; {}",
        g.log_tail(1, 60)
    );
    let target = (g.progress(kafka) + total / 20).min(total);
    g.wait_progress(kafka, target, Duration::from_secs(180));
    std::fs::remove_dir_all(&g.dirs[1]).expect("removing instance 1's state directory");
    instances[1] = Some(g.start(1));
    feeder.join().expect("feeder");
    kafka.produce(&g.input, closers(partitions));
    g.wait_done(kafka, Duration::from_secs(240));
    for (i, p) in instances.into_iter().enumerate() {
        let status = p.expect("running").terminate(Duration::from_secs(60));
        assert!(
            status.success(),
            "instance {i}: {status}; {}",
            g.log_tail(i, 60)
        );
    }
    let check = Check::Windows {
        window_ms: WINDOW_MS,
        grace_ms: GRACE_MS,
    };
    let report = g.verify(kafka, check, live);
    let input = kafka.read_acknowledged(&g.input);
    let (closed, late, open) = expected_windows(&input, WINDOW_MS, GRACE_MS);
    assert!(late > 100, "the input has late records: {late}");
    assert_eq!(
        open, partitions as usize,
        "only the closers' windows stay open"
    );
    assert_eq!(report.output, closed.len());
    let restored = g
        .logs(1)
        .last()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .unwrap_or_default();
    assert!(
        restored
            .lines()
            .any(|l| l.contains("restore finished") && l.contains("weir-timers-changelog")),
        "the restarted instance restored its timers from their changelog; {}",
        g.log_tail(1, 40)
    );
    eprintln!(
        "windows: {total} records ({late} late), {} windows emitted once each, {kills} SIGKILLs, a rebalance, a lost state directory, {:.0} s: {report}",
        closed.len(),
        secs(started)
    );
}

#[test]
fn a_late_record_within_grace_bridges_two_sessions_into_one() {
    let _serial = serial();
    let kafka = shared();
    let mut g = AppGroup::new(kafka, "sessions", 1, 1);
    g.args = vec![
        "--gap-ms".into(),
        "10".into(),
        "--grace-ms".into(),
        "20".into(),
    ];
    let t = t0();
    let at = |offset: i64, v: &str| TestRecord::new(0, "u", v).at(t + offset);
    let p = g.start(0);
    kafka.produce(
        &g.input,
        vec![
            at(0, "1"),  // session [0, 10)
            at(25, "2"), // session [25, 35)
            at(14, "4"), // [14, 24): a session of its own, so far
            at(9, "8"),  // [9, 19) overlaps [0, 10) and [14, 24): one session [0, 24)
            at(100, "0"),
        ],
    );
    g.wait_done(kafka, Duration::from_secs(60));
    let status = p.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}; {}", g.log_tail(0, 40));
    let out: Vec<serde_json::Value> = kafka
        .read_to_end(&g.output, Isolation::ReadCommitted)
        .iter()
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    let sessions: Vec<(i64, i64, u64, i64)> = out
        .iter()
        .map(|v| {
            (
                v["start"].as_i64().unwrap() - t,
                v["end"].as_i64().unwrap() - t,
                v["count"].as_u64().unwrap(),
                v["sum"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sessions, vec![(0, 24, 3, 13), (25, 35, 1, 2)], "{out:?}");
}

/// What the timer processor saw: `(what, key, due or stream time)`.
type Seen = Arc<Mutex<Vec<(String, String, Option<i64>)>>>;

/// For each record: a processing-time timer 300 ms from now and an event-time timer 10 s of
/// event time after the record. Each firing is emitted (`"{domain} {key} {due}"`) and noted;
/// so is the stream time each batch starts from.
struct Heartbeats {
    seen: Seen,
}

#[async_trait]
impl Processor for Heartbeats {
    fn stores(&self) -> Vec<StoreSpec> {
        Vec::new()
    }

    fn timers(&self) -> bool {
        true
    }

    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        self.seen
            .lock()
            .unwrap()
            .push(("batch".into(), String::new(), ctx.stream_time()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for r in batch {
            let key = r.key_str().unwrap_or_default().to_string();
            let ts = r.timestamp_ms.expect("a timestamp");
            let mut timers = ctx.timers()?;
            timers.schedule(TimeDomain::ProcessingTime, &key, now + 300)?;
            timers.schedule(TimeDomain::EventTime, &key, ts + 10_000)?;
        }
        Ok(())
    }

    async fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = timer.key_str().unwrap_or_default().to_string();
        let what = format!("{:?}", timer.domain);
        self.seen
            .lock()
            .unwrap()
            .push((what.clone(), key.clone(), Some(timer.due_ms)));
        let task = ctx.task().expect("a task");
        ctx.emit(
            Output::new(Some(key.clone()), format!("{what} {key} {}", timer.due_ms))
                .to_partition(task),
        );
        Ok(())
    }
}

#[test]
fn processing_time_timers_fire_on_an_idle_partition_and_event_time_survives_a_restart() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "timers", 2);
    let config = config(kafka, &app, &input, &output).build().unwrap();
    let seen: Seen = Arc::default();
    let outputs = |kafka: &weir_testkit::Kafka| -> Vec<String> {
        kafka
            .read_to_end(&output, Isolation::ReadCommitted)
            .iter()
            .map(|r| r.value_text())
            .collect()
    };
    let running = InProcess::start(
        config.clone(),
        Heartbeats {
            seen: Arc::clone(&seen),
        },
    );
    // One record on partition 1; partition 0 gets nothing at all.
    kafka.produce(&input, vec![TestRecord::new(1, "hb", "x").at(t0())]);
    wait_for(
        "the processing-time timer to fire with no more input",
        Duration::from_secs(30),
        || {
            outputs(kafka)
                .iter()
                .any(|o| o.starts_with("ProcessingTime hb"))
        },
    );
    // Stream time is T0: the event-time timer (T0 + 10 s) is not due.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !outputs(kafka).iter().any(|o| o.starts_with("EventTime")),
        "an event-time timer fired before stream time reached it: {:?}",
        outputs(kafka)
    );
    running.stop().expect("a clean stop");

    // Restarted on the same state directory: stream time is T0 again (from the committed
    // offsets' metadata), not unknown; the event-time timer survived and fires only when a
    // record moves stream time to T0 + 10 s.
    seen.lock().unwrap().clear();
    let running = InProcess::start(
        config,
        Heartbeats {
            seen: Arc::clone(&seen),
        },
    );
    kafka.produce(
        &input,
        vec![TestRecord::new(1, "other", "x").at(t0() + 5_000)],
    );
    wait_for(
        "the record at T0 + 5 s to be committed",
        Duration::from_secs(30),
        || {
            kafka
                .committed_offsets(&app, &input)
                .get(&1)
                .copied()
                .flatten()
                == Some(2)
        },
    );
    let first_batch = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(what, _, _)| what == "batch")
        .cloned();
    assert_eq!(
        first_batch.map(|(_, _, t)| t),
        Some(Some(t0())),
        "the first batch after the restart starts from the committed stream time"
    );
    assert!(
        !outputs(kafka).iter().any(|o| o.starts_with("EventTime hb")),
        "fired early: {:?}",
        outputs(kafka)
    );
    kafka.produce(
        &input,
        vec![TestRecord::new(1, "third", "x").at(t0() + 10_000)],
    );
    wait_for(
        "the event-time timer of hb to fire at stream time T0 + 10 s",
        Duration::from_secs(30),
        || {
            outputs(kafka)
                .iter()
                .any(|o| o == &format!("EventTime hb {}", t0() + 10_000))
        },
    );
    running.stop().expect("a clean stop");
    let fired: Vec<String> = outputs(kafka)
        .into_iter()
        .filter(|o| o.starts_with("EventTime"))
        .collect();
    assert_eq!(
        fired,
        vec![format!("EventTime hb {}", t0() + 10_000)],
        "each event-time timer fires once, when due"
    );
}

/// For each record, an event-time timer 20 s of event time *before* it: already due, it fires
/// after the record's batch, and is emitted.
struct Overdue;

#[async_trait]
impl Processor for Overdue {
    fn stores(&self) -> Vec<StoreSpec> {
        Vec::new()
    }

    fn timers(&self) -> bool {
        true
    }

    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for r in batch {
            let key = r.key_str().unwrap_or_default().to_string();
            let ts = r.timestamp_ms.expect("a timestamp");
            ctx.timers()?
                .schedule(TimeDomain::EventTime, &key, ts - 20_000)?;
        }
        Ok(())
    }

    async fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let key = timer.key_str().unwrap_or_default().to_string();
        let task = ctx.task().expect("a task");
        ctx.emit(
            Output::new(Some(key.clone()), format!("{key} {}", timer.due_ms)).to_partition(task),
        );
        Ok(())
    }
}

/// The engine looks for due timers from where it last fired them all (so as not to step over
/// the deletions of every timer that ever fired); a timer scheduled before that point must
/// still fire. (Without lowering that point for it, the second timer here never fires.)
#[test]
fn a_timer_scheduled_before_the_last_fired_one_still_fires() {
    let kafka = shared();
    let (input, output, app) = topics(kafka, "overdue", 1);
    let running = InProcess::start(
        config(kafka, &app, &input, &output).build().unwrap(),
        Overdue,
    );
    let outputs = || -> Vec<String> {
        kafka
            .read_to_end(&output, Isolation::ReadCommitted)
            .iter()
            .map(|r| r.value_text())
            .collect()
    };
    kafka.produce(
        &input,
        vec![TestRecord::new(0, "first", "x").at(t0() + 60_000)],
    );
    wait_for("the first timer to fire", Duration::from_secs(30), || {
        outputs().len() == 1
    });
    // Stream time is T0 + 60 s and every timer up to it has fired; this one is due at T0 + 21 s.
    kafka.produce(
        &input,
        vec![TestRecord::new(0, "second", "x").at(t0() + 41_000)],
    );
    wait_for("the second timer to fire", Duration::from_secs(30), || {
        outputs().len() == 2
    });
    running.stop().expect("a clean stop");
    assert_eq!(
        outputs(),
        vec![
            format!("first {}", t0() + 40_000),
            format!("second {}", t0() + 21_000)
        ]
    );
}

#[test]
fn store_names_starting_weir_are_refused() {
    struct Squatter;
    #[async_trait]
    impl Processor for Squatter {
        fn stores(&self) -> Vec<StoreSpec> {
            vec![StoreSpec::new("weir-timers")]
        }
        async fn process(&mut self, _: &[Record], _: &mut Context<'_>) -> Result<(), ProcessError> {
            Ok(())
        }
    }
    let kafka = shared();
    let (input, output, app) = topics(kafka, "squat", 1);
    let message = InProcess::start(
        config(kafka, &app, &input, &output).build().unwrap(),
        Squatter,
    )
    .join()
    .expect_err("refused")
    .to_string();
    assert!(
        message.contains("\"weir-timers\"") && message.contains("rename it"),
        "{message}"
    );
}
