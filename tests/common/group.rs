//! Several instances of one example application as child processes — one consumer group —
//! with the checks every scale-out and fault scenario ends with.

use std::path::PathBuf;
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_testkit::{
    example_command, unique, verify_copy, verify_totals, verify_windows, ChildProcess, Isolation,
    Kafka, LiveReader, Report, TestRecord,
};

use super::{state_dir, wait_for};

/// Which verifier checks the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `mirror`: the output is the input, once each, in input order per partition.
    Copy,
    /// `totals`: one output per input holding the running aggregate.
    Totals,
    /// `windows`: every closed tumbling window once, with its exact count and sum.
    Windows { window_ms: i64, grace_ms: i64 },
}

/// One application (`example`) run by several instances, each with a state directory of its
/// own that survives restarts (so a restarted instance keeps its instance and transactional id).
pub struct AppGroup {
    pub bootstrap: String,
    pub example: &'static str,
    pub app: String,
    pub input: String,
    pub output: String,
    pub dirs: Vec<PathBuf>,
    /// `--set KEY=VALUE` for every instance.
    pub settings: Vec<String>,
    /// More arguments for every instance (the example's own flags).
    pub args: Vec<String>,
    pub commit_interval_ms: u64,
    /// Per instance, where it serves its metrics (`metrics.address`); none if empty.
    pub metrics: Vec<String>,
    /// Partitions of the input and the output.
    pub partitions: i32,
    runs: usize,
}

impl AppGroup {
    /// Creates the input and output topics (`partitions` each) and `instances` state dirs.
    pub fn new(kafka: &Kafka, example: &'static str, partitions: i32, instances: usize) -> Self {
        let g = Self {
            bootstrap: kafka.bootstrap_servers().to_string(),
            example,
            app: unique(example),
            input: unique(&format!("{example}-in")),
            output: unique(&format!("{example}-out")),
            dirs: (0..instances).map(|_| state_dir()).collect(),
            // Fail-over after a SIGKILL waits for the session timeout: keep it at the broker's
            // minimum so the scenarios stay short.
            settings: vec!["consumer.session.timeout.ms=6000".into()],
            args: Vec::new(),
            commit_interval_ms: 100,
            metrics: Vec::new(),
            partitions,
            runs: 0,
        };
        kafka.create_topic(&g.input, partitions);
        kafka.create_topic(&g.output, partitions);
        g
    }

    /// Starts instance `i` (its log goes next to its state directory).
    pub fn start(&mut self, i: usize) -> ChildProcess {
        self.runs += 1;
        let log = std::fs::File::create(
            self.dirs[i].with_extension(format!("i{i}.run{}.log", self.runs)),
        )
        .expect("log file");
        let mut cmd = example_command(self.example);
        cmd.args(["--bootstrap-servers", &self.bootstrap])
            .args(["--application-id", &self.app])
            .args(["--input-topic", &self.input, "--output-topic", &self.output])
            .arg("--state-dir")
            .arg(&self.dirs[i])
            .args(["--commit-interval-ms", &self.commit_interval_ms.to_string()])
            .args(self.settings.iter().flat_map(|s| ["--set", s.as_str()]))
            .args(&self.args)
            .args(
                self.metrics
                    .get(i)
                    .map(|a| ["--set".to_string(), format!("metrics.address={a}")])
                    .into_iter()
                    .flatten(),
            )
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log);
        ChildProcess::spawn(&format!("{} instance {i}", self.example), cmd)
    }

    /// The log files of instance `i`, oldest run first.
    pub fn logs(&self, i: usize) -> Vec<PathBuf> {
        let stem = self.dirs[i]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dirs[i].parent().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(&format!("{stem}.i{i}.run")) && name.ends_with(".log")
            })
            .collect();
        logs.sort();
        logs
    }

    /// The last `lines` lines of instance `i`'s latest log, for a failure message: what the
    /// instance said before it died.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let Some(path) = self.logs(i).pop() else {
            return format!("(instance {i} has no log)");
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("last lines of {}:\n{tail}", path.display())
    }

    /// Input records the group has committed, over all partitions.
    pub fn progress(&self, kafka: &Kafka) -> i64 {
        kafka
            .committed_offsets(&self.app, &self.input)
            .values()
            .map(|o| o.unwrap_or(0))
            .sum()
    }

    /// Waits until the group has committed at least `target` input records.
    pub fn wait_progress(&self, kafka: &Kafka, target: i64, timeout: Duration) {
        self.wait_for(
            &format!("{} to commit {target} input records", self.app),
            timeout,
            || self.progress(kafka) >= target,
        );
    }

    /// Waits until the committed offsets reach the end of the input on every partition.
    pub fn wait_done(&self, kafka: &Kafka, timeout: Duration) {
        let ends = kafka.end_offsets(&self.input, Isolation::ReadCommitted);
        self.wait_for(
            &format!("{} to reach the end of its input {ends:?}", self.app),
            timeout,
            || {
                let c = kafka.committed_offsets(&self.app, &self.input);
                ends.iter()
                    .all(|(p, end)| c.get(p).copied().flatten() == Some(*end))
            },
        );
    }

    /// [`wait_for`], failing with what each instance said last (weir's own lines, not
    /// librdkafka's): why the group did not get there.
    fn wait_for(&self, what: &str, timeout: Duration, check: impl FnMut() -> bool) {
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, timeout, check)
        }));
        if let Err(panic) = waited {
            let said: Vec<String> = (0..self.dirs.len())
                .map(|i| self.weir_tail(i, 15))
                .collect();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "wait failed".into());
            panic!("{message}\n{}", said.join("\n"));
        }
    }

    /// The last `lines` lines weir itself logged in instance `i`'s latest run.
    pub fn weir_tail(&self, i: usize, lines: usize) -> String {
        let Some(path) = self.logs(i).pop() else {
            return format!("(instance {i} has no log)");
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        let own: Vec<&str> = text.lines().filter(|l| !l.contains("rdkafka")).collect();
        let tail = own[own.len().saturating_sub(lines)..].join("\n");
        format!(
            "instance {i}, last weir lines of {}:\n{tail}",
            path.display()
        )
    }

    /// The checks every scenario ends with, after every instance has stopped: the output
    /// verified record by record (with what `live` saw during the run), no transaction left
    /// open on the output or a changelog, and the consumer group empty. Returns the report.
    pub fn verify(&self, kafka: &Kafka, check: Check, live: LiveReader) -> Report {
        let live = live.finish(kafka);
        let input = kafka.read_acknowledged(&self.input);
        let output = kafka.read_to_end(&self.output, Isolation::ReadCommitted);
        let mut report = match check {
            Check::Copy => verify_copy(&input, &output),
            Check::Totals => verify_totals(&input, &output),
            Check::Windows {
                window_ms,
                grace_ms,
            } => verify_windows(&input, &output, window_ms, grace_ms),
        };
        report.check_live_read(&live, &output);
        if !report.is_exactly_once() {
            // Which producer wrote what, and which marker made it visible: the batches of
            // every output partition as a broker holds them (local clusters only).
            if let Some(local) = kafka.local() {
                for p in 0..self.partitions {
                    match local.dump_partition(&self.output, p) {
                        Ok(dump) => eprintln!("{dump}"),
                        Err(e) => eprintln!("no dump of {}-{p}: {e}", self.output),
                    }
                }
            }
        }
        assert!(report.is_exactly_once(), "{report}");
        assert!(
            report.live == output.len(),
            "the live reader saw {} records, the final read {}",
            report.live,
            output.len()
        );
        let mut topics = vec![self.output.clone()];
        match check {
            Check::Totals => topics.push(format!("{}-totals-changelog", self.app)),
            Check::Windows { .. } => {
                topics.push(format!("{}-windows-changelog", self.app));
                topics.push(format!("{}-weir-timers-changelog", self.app));
            }
            Check::Copy => {}
        }
        for topic in &topics {
            assert_eq!(
                kafka.open_transactions(topic),
                vec![],
                "a transaction was left open on {topic}"
            );
        }
        wait_for(
            &format!("consumer group {} to be empty", self.app),
            Duration::from_secs(30),
            || {
                let (state, members) = kafka.group_members(&self.app);
                state == "Empty" && members.is_empty()
            },
        );
        report
    }
}

/// Produces `records` to `topic` from a thread, `chunk` at a time with `pause` between chunks:
/// input keeps arriving while instances (or brokers) fail.
pub fn feed(
    bootstrap: &str,
    topic: &str,
    records: Vec<TestRecord>,
    chunk: usize,
    pause: Duration,
) -> JoinHandle<()> {
    let kafka = Kafka::start_with_bootstrap(bootstrap);
    let topic = topic.to_string();
    std::thread::spawn(move || {
        for c in records.chunks(chunk) {
            kafka.produce(&topic, c.to_vec());
            std::thread::sleep(pause);
        }
    })
}

/// Seconds since `t`, for the scenario summaries.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
