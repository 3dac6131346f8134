//! State that recovers in step with offsets: the `totals` example (RocksDB + changelog) under
//! SIGKILL, a crash at every step of the two-phase commit, lost and moved state directories,
//! and offsets rewound behind weir's back.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rand::Rng;
use weir_testkit::{
    example_command, shared, unique, verify_totals, ChildProcess, Isolation, Kafka, LiveReader,
    OutputWithin,
};

struct Totals<'a> {
    kafka: &'a Kafka,
    app: String,
    input: String,
    output: String,
    dead_letters: Option<String>,
    /// The log of every run so far, oldest first.
    logs: std::cell::RefCell<Vec<std::path::PathBuf>>,
}

impl Totals<'_> {
    fn new(kafka: &Kafka, partitions: i32) -> Totals<'_> {
        let t = Totals {
            kafka,
            app: unique("totals"),
            input: unique("pay"),
            output: unique("tot"),
            dead_letters: None,
            logs: Default::default(),
        };
        kafka.create_topic(&t.input, partitions);
        kafka.create_topic(&t.output, partitions);
        t
    }

    fn start(&self, state: &Path, failpoint: Option<&str>) -> ChildProcess {
        let env: Vec<(&str, &str)> = failpoint
            .map(|f| ("WEIR_FAILPOINT", f))
            .into_iter()
            .collect();
        self.start_with(state, &env, &[])
    }

    /// [`start`](Self::start) with environment variables and extra arguments.
    fn start_with(&self, state: &Path, env: &[(&str, &str)], args: &[&str]) -> ChildProcess {
        let path = state.with_extension(format!("{}.log", unique("run")));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.borrow_mut().push(path);
        let mut cmd = example_command("totals");
        cmd.args([
            "--bootstrap-servers",
            self.kafka.bootstrap_servers(),
            "--application-id",
            &self.app,
        ])
        .args(["--input-topic", &self.input, "--output-topic", &self.output])
        .arg("--state-dir")
        .arg(state)
        .args(["--commit-interval-ms", "200"])
        .args(
            self.dead_letters
                .iter()
                .flat_map(|d| ["--dead-letter-topic", d.as_str()]),
        )
        // Each restore batch applied is a debug line (with the changelog position it reached).
        .env(
            "RUST_LOG",
            "info,rdkafka=warn,weir_runtime::changelog=debug",
        )
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
        ChildProcess::spawn("totals", cmd)
    }

    fn wait_done(&self, per_partition_end: &std::collections::BTreeMap<i32, i64>) {
        wait_for(
            "the group's offsets to reach the end of the input",
            Duration::from_secs(120),
            || {
                let c = self.kafka.committed_offsets(&self.app, &self.input);
                per_partition_end
                    .iter()
                    .all(|(p, end)| c.get(p).copied().flatten() == Some(*end))
            },
        );
    }

    fn ends(&self) -> std::collections::BTreeMap<i32, i64> {
        self.kafka
            .end_offsets(&self.input, Isolation::ReadCommitted)
    }

    /// Produces `records[from..until]` to the input, `chunk` every 150 ms, while `run` is
    /// running; returns where it stopped.
    fn feed_while_running(
        &self,
        run: &mut ChildProcess,
        records: &[weir_testkit::TestRecord],
        from: usize,
        until: usize,
        chunk: usize,
    ) -> usize {
        let mut sent = from;
        while run.is_running() && sent < until {
            self.kafka
                .produce(&self.input, records[sent..sent + chunk].to_vec());
            sent += chunk;
            std::thread::sleep(Duration::from_millis(150));
        }
        sent
    }

    /// What the latest run wrote to its log.
    fn last_log(&self) -> String {
        let path = self.logs.borrow().last().cloned().expect("a run");
        std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
    }

    /// The output checked against the acknowledged input; what a live `read_committed` reader
    /// saw during the run, if there was one; no transaction left open.
    fn verify_with(&self, live: Option<LiveReader>) {
        let input = self.kafka.read_acknowledged(&self.input);
        let live = live.map(|l| l.finish(self.kafka));
        let output = self
            .kafka
            .read_to_end(&self.output, Isolation::ReadCommitted);
        let mut report = verify_totals(&input, &output);
        if let Some(live) = &live {
            report.check_live_read(live, &output);
            assert!(report.live > 0, "the live reader saw nothing");
        }
        assert!(report.is_exactly_once(), "{report}");
        let changelog = format!("{}-totals-changelog", self.app);
        for topic in [&self.output, &changelog] {
            assert_eq!(
                self.kafka.open_transactions(topic),
                vec![],
                "a transaction was left open on {topic}"
            );
        }
    }

    fn verify(&self) {
        self.verify_with(None);
    }
}

#[test]
fn totals_is_exactly_once_across_sigkills() {
    let kafka = shared();
    let t = Totals::new(kafka, 3);
    let records = payments(60_000, 24_000, 3, 7);
    let state = state_dir();
    let live = kafka.live_reader(&t.output);
    kafka.produce(&t.input, records[..10_000].to_vec());
    let producer = {
        let (input, rest) = (t.input.clone(), records[10_000..].to_vec());
        std::thread::spawn(move || {
            for chunk in rest.chunks(5_000) {
                shared().produce(&input, chunk.to_vec());
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let mut rng = rand::rng();
    let mut totals = t.start(&state, None);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..3_000)));
        totals.kill();
        totals = t.start(&state, None);
    }
    producer.join().unwrap();
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());
    t.verify_with(Some(live));
}

/// A crash at each step of the commit cycle, with commits overlapped (the default: transaction
/// n commits on one producer while n+1 fills on the other, the state's writes of n frozen as
/// its committing layer) and in line (`commit.overlap = false`).
#[test]
fn a_crash_at_every_step_of_the_commit_cycle_recovers_in_step() {
    let kafka = shared();
    for (overlap, failpoint) in ["true", "false"].into_iter().flat_map(|o| {
        [
            "after_produce",
            "after_send_offsets",
            "after_prepare",
            "after_commit_transaction",
            "after_apply",
        ]
        .map(move |f| (o, f))
    }) {
        let failpoint_at = format!("{failpoint}:3");
        let overlap_setting = format!("commit.overlap={overlap}");
        let args = ["--set", overlap_setting.as_str()];
        let t = Totals::new(kafka, 2);
        let state = state_dir();
        let records = payments(20_000, 300, 2, 11);
        kafka.produce(&t.input, records[..500].to_vec());
        // Crash on the third commit: input keeps arriving until the process dies.
        let mut crashing = t.start_with(&state, &[("WEIR_FAILPOINT", &failpoint_at)], &args);
        let sent = t.feed_while_running(&mut crashing, &records, 500, records.len(), 250);
        let status = crashing.wait(Duration::from_secs(60));
        // The failpoint's own words, and the abort(3) it announces: not any other crash.
        let log = t.last_log();
        assert!(
            log.contains(&format!(
                "weir: failpoint {failpoint} reached: crashing now"
            )),
            "{failpoint}: the process ended ({status}) without reaching its failpoint:\n{log}"
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGABRT),
            "{failpoint}: the failpoint did not crash the process ({status})"
        );
        kafka.produce(
            &t.input,
            records[sent..(sent + 1_000).min(records.len())].to_vec(),
        );
        let totals = t.start_with(&state, &[], &args);
        t.wait_done(&t.ends());
        assert!(
            totals.terminate(Duration::from_secs(30)).success(),
            "{failpoint}"
        );
        t.verify();
        eprintln!("{failpoint} (commit.overlap={overlap}): crashed, restarted, aggregates exact");
    }
}

/// An overlapped commit of state that fails (`WEIR_FAILPOINT_ERROR=background_commit:2`: the
/// second background commit reports an abortable error) takes the transaction after it down
/// too, and the state of both: each aggregate counts every payment exactly once although the
/// failed transaction's writes were read by its successor.
#[test]
fn a_failed_overlapped_commit_drops_the_state_of_both_transactions() {
    let kafka = shared();
    let t = Totals::new(kafka, 3);
    let records = payments(40_000, 2_000, 3, 13);
    kafka.produce(&t.input, records);
    let state = state_dir();
    let live = kafka.live_reader(&t.output);
    let totals = t.start_with(
        &state,
        &[("WEIR_FAILPOINT_ERROR", "background_commit:2")],
        &["--set", "commit.overlap=true"],
    );
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());
    assert_background_commit_failed(&t.last_log());
    t.verify_with(Some(live));
}

/// A prepare that fails (`WEIR_FAILPOINT_ERROR=prepare:3`: the third one reports a failure
/// once its write is done) stops the application before its transaction commits, in line and
/// overlapped (where the prepare is waited for on the background commit's thread): the next
/// start rolls its pending entry back (Kafka did not commit it; had it, the entry would roll
/// forward), resumes in step with no restore from the changelog, and every aggregate is
/// exact.
#[test]
fn a_failed_prepare_stops_before_its_transaction_commits() {
    let kafka = shared();
    for overlap in ["true", "false"] {
        let t = Totals::new(kafka, 2);
        let records = payments(20_000, 300, 2, 17);
        kafka.produce(&t.input, records[..2_000].to_vec());
        let state = state_dir();
        let setting = format!("commit.overlap={overlap}");
        let args = ["--set", setting.as_str()];
        let mut failing = t.start_with(&state, &[("WEIR_FAILPOINT_ERROR", "prepare:3")], &args);
        let sent = t.feed_while_running(&mut failing, &records, 2_000, 10_000, 500);
        let status = failing.wait(Duration::from_secs(60));
        let log = t.last_log();
        assert!(
            log.contains("failpoint prepare reached"),
            "overlap={overlap}: the failpoint was not reached ({status}):\n{log}"
        );
        assert!(
            !status.success() && std::os::unix::process::ExitStatusExt::signal(&status).is_none(),
            "overlap={overlap}: the run did not stop with an error ({status})"
        );
        assert!(
            log.contains("preparing a commit: failed by WEIR_FAILPOINT_ERROR"),
            "overlap={overlap}: the error does not say what failed:\n{log}"
        );
        kafka.produce(&t.input, records[sent..].to_vec());
        let totals = t.start_with(&state, &[], &args);
        t.wait_done(&t.ends());
        assert!(totals.terminate(Duration::from_secs(30)).success());
        let log = t.last_log();
        assert!(
            log.contains("pending state commit rolled back") && !log.contains("rolled forward"),
            "overlap={overlap}: the failed prepare's transaction was not left uncommitted:\n{log}"
        );
        assert_eq!(
            restore_starts(&log),
            BTreeMap::new(),
            "overlap={overlap}: the restart restored state"
        );
        t.verify();
        eprintln!("overlap={overlap}: a failed prepare stopped the run; restarted in step, exact");
    }
}

#[test]
fn state_is_restored_from_the_changelog_when_the_directory_is_lost_or_the_task_moves() {
    let kafka = shared();
    let mut t = Totals::new(kafka, 3);
    let dlq = unique("tot-dlq");
    kafka.create_topic(&dlq, 1);
    t.dead_letters = Some(dlq.clone());
    let mut records = payments(12_000, 2_000, 3, 23);
    // Poison: values that do not parse go to the dead-letter topic and leave the aggregates alone.
    for i in (0..12_000).step_by(1_000) {
        records[i].value = Some(b"not a number".to_vec());
    }
    let (first, second) = (state_dir(), state_dir());

    // Run 1 on directory A.
    kafka.produce(&t.input, records[..4_000].to_vec());
    let totals = t.start(&first, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());

    // Run 2: a new instance on a fresh directory B takes the tasks over (restore).
    kafka.produce(&t.input, records[4_000..8_000].to_vec());
    let totals = t.start(&second, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());

    // Run 3: directory A is deleted; the instance starts from nothing (restore again). First
    // with no new input: each restore ends at the changelog's end, past the commit marker that
    // closes it (a restore that stopped one short, at the marker, would read it again at the
    // next start).
    std::fs::remove_dir_all(&first).unwrap();
    let totals = t.start(&first, None);
    wait_for(
        "the three restores to finish",
        Duration::from_secs(60),
        || t.last_log().matches("restore finished").count() == 3,
    );
    assert!(totals.terminate(Duration::from_secs(30)).success());
    let changelog = format!("{}-totals-changelog", t.app);
    let ends = kafka.end_offsets(&changelog, Isolation::ReadUncommitted);
    let (state, _) =
        weir_state::StateManager::open(&first.join(&t.app).join("rocksdb"), Vec::new())
            .expect("opening the restored state");
    for (task, end) in &ends {
        let stored = state
            .meta(*task)
            .expect("meta")
            .expect("a restored task")
            .changelog;
        assert_eq!(
            stored.get("totals"),
            Some(end),
            "task {task}: the restore stored changelog position {stored:?}, the changelog ends at {end}"
        );
    }
    drop(state);
    kafka.produce(&t.input, records[8_000..].to_vec());
    let totals = t.start(&first, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());
    t.verify();
    let dead = kafka.read_to_end(&dlq, Isolation::ReadCommitted);
    assert_eq!(dead.len(), 12, "every poison value dead-lettered once");
    assert!(dead.iter().all(|d| d.value_text() == "not a number"));
}

#[test]
fn offsets_rewound_behind_weirs_back_are_refused() {
    let kafka = shared();
    let t = Totals::new(kafka, 2);
    let state = state_dir();
    kafka.produce(&t.input, payments(1_000, 100, 2, 5));
    let totals = t.start(&state, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());

    kafka.set_committed_offsets(&t.app, &t.input, &[(0, 10), (1, 0)]);
    let out = example_command("totals")
        .args([
            "--bootstrap-servers",
            kafka.bootstrap_servers(),
            "--application-id",
            &t.app,
        ])
        .args(["--input-topic", &t.input, "--output-topic", &t.output])
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "error")
        .output_within(Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse to run: {stderr}");
    assert!(
        stderr.contains("local state is ahead of the committed offsets"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}/0: local", t.input)),
        "names the partition: {stderr}"
    );
    assert!(
        stderr.contains("--reset-state"),
        "says the way out: {stderr}"
    );
}

/// The rocksdb directory of `t`'s application under `state`.
fn rocksdb_dir(t: &Totals<'_>, state: &Path) -> std::path::PathBuf {
    state.join(&t.app).join("rocksdb")
}

/// A state directory whose MANIFEST was damaged (bytes flipped) is moved aside — kept for a
/// look, never reused — and every task restored from its changelog: the aggregates go on
/// exactly.
#[test]
fn a_damaged_state_directory_is_moved_aside_and_restored_from_the_changelog() {
    let kafka = shared();
    let t = Totals::new(kafka, 2);
    let state = state_dir();
    let records = payments(6_000, 500, 2, 31);
    kafka.produce(&t.input, records[..3_000].to_vec());
    let totals = t.start(&state, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());

    let db = rocksdb_dir(&t, &state);
    let manifest = std::fs::read_dir(&db)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .expect("a MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    for b in bytes.iter_mut().skip(10).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(&manifest, bytes).unwrap();

    kafka.produce(&t.input, records[3_000..].to_vec());
    let totals = t.start(&state, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(30)).success());
    let log = t.last_log();
    assert!(
        log.contains(
            "state directory is corrupt; moving it aside and restoring from the changelogs"
        ),
        "{log}"
    );
    assert_eq!(
        log.matches("restore finished").count(),
        2,
        "both tasks restored:\n{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rocksdb.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged copy is kept aside");
    t.verify();
}

/// The numeric field `name=` of a log line.
fn field(line: &str, name: &str) -> Option<i64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Per task, the changelog position of the last restore batch a run applied, for the tasks
/// whose restore it did not finish.
fn unfinished_restores(log: &str) -> BTreeMap<i64, i64> {
    let mut reached = BTreeMap::new();
    for line in log.lines() {
        if line.contains("restore batch applied") {
            if let (Some(task), Some(position)) = (field(line, "task"), field(line, "position")) {
                reached.insert(task, position);
            }
        } else if line.contains("restore finished") {
            if let Some(task) = field(line, "task") {
                reached.remove(&task);
            }
        }
    }
    reached
}

/// The tasks whose restore the log shows started and not finished.
fn restoring(log: &str) -> std::collections::BTreeSet<i64> {
    let mut running = std::collections::BTreeSet::new();
    for line in log.lines() {
        if line.contains("restoring state from the changelog") {
            running.extend(field(line, "task"));
        } else if line.contains("restore finished") {
            if let Some(task) = field(line, "task") {
                running.remove(&task);
            }
        }
    }
    running
}

/// Per task, where the run's restores started (`from=`).
fn restore_starts(log: &str) -> BTreeMap<i64, i64> {
    log.lines()
        .filter(|l| l.contains("restoring state from the changelog"))
        .filter_map(|l| Some((field(l, "task")?, field(l, "from")?)))
        .collect()
}

/// SIGKILL and then SIGTERM while a lost state directory is being restored from its changelog:
/// each batch a restore applied carries its changelog position, so the next start resumes
/// each unfinished restore where the interrupted one stopped (not from the beginning), the
/// SIGTERM stops cleanly, and state stays exact.
#[test]
fn a_restore_interrupted_by_sigkill_or_sigterm_resumes_where_it_stopped_and_state_stays_exact() {
    let kafka = shared();
    let t = Totals::new(kafka, 2);
    let state = state_dir();
    // Many keys, so the changelog takes a while to restore.
    let records = payments(120_000, 100_000, 2, 41);
    kafka.produce(&t.input, records[..100_000].to_vec());
    let totals = t.start(&state, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(60)).success());
    std::fs::remove_dir_all(&state).unwrap();

    // SIGKILL once a restore has applied a batch.
    let totals = t.start(&state, None);
    wait_for(
        "a restore batch to be applied",
        Duration::from_secs(60),
        || t.last_log().contains("restore batch applied"),
    );
    totals.kill();
    let killed = t.last_log();
    let reached = unfinished_restores(&killed);
    assert!(
        !reached.is_empty(),
        "the SIGKILL came after every restore had finished:\n{killed}"
    );
    assert_eq!(
        restore_starts(&killed)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![0; restore_starts(&killed).len()],
        "a lost directory restores from the beginning"
    );

    // The next start resumes each unfinished restore at (or after) its last batch; SIGTERM it
    // while a restore runs (started, not finished, as its log says the moment the signal is
    // sent). A restore is not cut short: it finishes, then the clean stop.
    let totals = t.start(&state, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let during = loop {
        let log = t.last_log();
        let starts = restore_starts(&log);
        let running = restoring(&log);
        if reached.keys().all(|task| starts.contains_key(task)) && !running.is_empty() {
            break running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 60 s waiting for the restores to start again:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = totals.terminate(Duration::from_secs(60));
    let termed = t.last_log();
    assert!(
        status.success(),
        "SIGTERM during a restore: {status}\n{termed}"
    );
    assert!(
        restoring(&termed).is_empty(),
        "tasks {during:?} were restoring at the SIGTERM; the stop left {:?} unfinished \
         (a restore finishes, then the clean stop):\n{termed}",
        restoring(&termed)
    );
    let resumed = restore_starts(&termed);
    for (task, position) in &reached {
        assert!(
            resumed[task] >= *position && *position > 0,
            "task {task}: the killed restore had reached changelog offset {position}, the next \
             one started at {}:\n{termed}",
            resumed[task]
        );
    }

    kafka.produce(&t.input, records[100_000..].to_vec());
    let totals = t.start(&state, None);
    t.wait_done(&t.ends());
    assert!(totals.terminate(Duration::from_secs(60)).success());
    t.verify();
    eprintln!(
        "restores: killed at changelog positions {reached:?}; the next start resumed at {resumed:?}, SIGTERMed while tasks {during:?} restored, {} finished before the stop; then {} on the last start",
        termed.matches("restore finished").count(),
        t.last_log().matches("restore finished").count()
    );
}

/// Partitions added to the input of a stateful application make tasks its changelogs have no
/// partition for (and move keys away from their state): it stops with an error naming the
/// changelog, the task and what to do, having committed nothing for the new partitions,
/// instead of writing state it could not restore.
#[test]
fn partitions_added_under_a_stateful_application_stop_it_naming_the_changelog() {
    let kafka = shared();
    let t = Totals::new(kafka, 2);
    let state = state_dir();
    kafka.produce(&t.input, payments(1_000, 100, 2, 3));
    let mut totals = {
        let log = std::fs::File::create(state.with_extension("grow.log")).unwrap();
        let mut cmd = example_command("totals");
        cmd.args(["--bootstrap-servers", kafka.bootstrap_servers()])
            .args(["--application-id", &t.app])
            .args(["--input-topic", &t.input, "--output-topic", &t.output])
            .arg("--state-dir")
            .arg(&state)
            .args(["--set", "consumer.topic.metadata.refresh.interval.ms=1000"])
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log);
        ChildProcess::spawn("totals", cmd)
    };
    t.wait_done(&t.ends());
    kafka.admin().add_partitions(&t.output, 4).unwrap();
    kafka.admin().add_partitions(&t.input, 4).unwrap();
    kafka.produce(&t.input, payments(400, 4, 4, 5));
    let status = totals.wait(Duration::from_secs(90));
    let log = std::fs::read_to_string(state.with_extension("grow.log")).unwrap();
    assert!(!status.success(), "{log}");
    let changelog = format!("{}-totals-changelog", t.app);
    assert!(
        log.contains(&format!("changelog topic {changelog:?} has no partition 2 for task 2: partitions were added to the input while the application ran")),
        "{log}"
    );
    let committed = kafka.committed_offsets(&t.app, &t.input);
    assert_eq!(
        (committed[&2], committed[&3]),
        (None, None),
        "{committed:?}"
    );
}
