//! Stall detection: an instance that has processed records but cannot commit them — brokers
//! down, partitions below `min.insync.replicas`, no controller quorum — says so, once, in its
//! log (`WARN … stalled`) and in the `weir_stalled` gauge, and says again when it resumes.
//!
//! The engine reports what happens ([`StallWatch::processed`], [`committed`](StallWatch::committed),
//! [`trouble`](StallWatch::trouble), [`dropped`](StallWatch::dropped)); a ticker
//! ([`watch`]) checks once a second, outside the engine's lock, so a call blocked on a broker
//! does not hide the stall.
//!
//! The rule, with `threshold` = the larger of `transaction.timeout.ms` (no transaction may
//! stay open longer) and two commit intervals:
//!
//! - **stalled** when nothing has committed for longer than `threshold` and processed records
//!   wait for a commit, or work an abort dropped is still owed (below), or an assigned
//!   partition's log ends past the committed offset (input waits, as librdkafka's statistics
//!   last saw it, every 5 s), or errors (transient Kafka errors, aborts, producer
//!   replacements) came within the last `threshold`. The input matters: with its leaders down
//!   an instance polls nothing and librdkafka soon stops repeating the same connection error,
//!   yet its partitions are not moving;
//! - work dropped by an abort or a producer replacement is **owed** by the partitions it came
//!   from until a commit, or until they are no longer assigned: the records are read and
//!   processed again, but while the cluster is down that cannot happen, and an instance that
//!   has dropped its work is not idle (it was seen to report "resumed" mid-outage when
//!   dropped work counted as nothing);
//! - **resumed** at the next commit, or once nothing waits (neither processed records, nor
//!   owed work, nor input) and no error has come for `threshold` (the partitions moved
//!   elsewhere);
//! - an idle, healthy instance (nothing waiting, no recent error) is never stalled, however
//!   long since its last commit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_core::TopicPartition;

use crate::telemetry;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Newly stalled: nothing committed for `for_`, with `waiting` records processed and
    /// uncommitted and `errors` errors since the last commit.
    Stalled {
        for_: Duration,
        waiting: u64,
        errors: u64,
    },
    /// No longer stalled after `after`; `committed` says whether a commit ended it.
    Resumed { after: Duration, committed: bool },
}

#[derive(Debug)]
struct Inner {
    /// The last commit, or the last moment the instance was idle and healthy.
    progress: Instant,
    last_error: Option<Instant>,
    /// Errors since the last commit.
    errors: u64,
    /// Since when it is stalled (reported).
    stalled_since: Option<Instant>,
    /// Partitions whose processed work an abort dropped, not committed since.
    owed: BTreeSet<TopicPartition>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct StallWatch {
    threshold: Duration,
    /// Input records processed and not yet committed.
    waiting: AtomicU64,
    /// Whether an assigned partition's log ends past its committed offset.
    behind: AtomicBool,
    inner: Mutex<Inner>,
}

impl StallWatch {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            waiting: AtomicU64::new(0),
            behind: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                progress: Instant::now(),
                last_error: None,
                errors: 0,
                stalled_since: None,
                owed: BTreeSet::new(),
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `records` were processed into the open transaction.
    pub(crate) fn processed(&self, records: u64) {
        self.waiting.fetch_add(records, Ordering::Relaxed);
    }

    /// What librdkafka's statistics last said: whether an assigned partition's log ends past
    /// the offset committed for it.
    pub(crate) fn set_behind(&self, behind: bool) {
        self.behind.store(behind, Ordering::Relaxed);
    }

    /// A commit succeeded: everything processed so far is committed. Returns the transition
    /// when it ends a stall (the caller logs it).
    pub(crate) fn committed(&self, now: Instant) -> Option<Transition> {
        self.waiting.store(0, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.progress = now;
        inner.errors = 0;
        inner.owed.clear();
        inner.stalled_since.take().map(|since| Transition::Resumed {
            after: now.saturating_duration_since(since),
            committed: true,
        })
    }

    /// An error that keeps the instance from committing: a transient Kafka error, an abort, a
    /// producer replacement.
    pub(crate) fn trouble(&self, now: Instant) {
        let mut inner = self.inner();
        inner.last_error = Some(now);
        inner.errors += 1;
    }

    /// The uncommitted work was dropped (an abort, a replacement): it is read again, and
    /// counts as waiting once processed again; until a commit it is owed by `partitions`, the
    /// partitions it came from.
    pub(crate) fn dropped(
        &self,
        now: Instant,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) {
        self.waiting.store(0, Ordering::Relaxed);
        self.inner().owed.extend(partitions);
        self.trouble(now);
    }

    /// `partitions` are no longer assigned: whatever they owed is another instance's now.
    pub(crate) fn released(&self, partitions: &[TopicPartition]) {
        let mut inner = self.inner();
        for p in partitions {
            inner.owed.remove(p);
        }
    }

    /// The once-a-second check.
    pub(crate) fn check(&self, now: Instant) -> Option<Transition> {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let behind = self.behind.load(Ordering::Relaxed);
        let mut inner = self.inner();
        let erring = inner
            .last_error
            .is_some_and(|t| now.saturating_duration_since(t) < self.threshold);
        if waiting == 0 && !behind && !erring && inner.owed.is_empty() {
            // Idle and healthy: as good as a commit for the clock.
            inner.progress = now;
            return inner.stalled_since.take().map(|since| Transition::Resumed {
                after: now.saturating_duration_since(since),
                committed: false,
            });
        }
        let quiet = now.saturating_duration_since(inner.progress);
        if inner.stalled_since.is_none() && quiet > self.threshold {
            inner.stalled_since = Some(now);
            return Some(Transition::Stalled {
                for_: quiet,
                waiting,
                errors: inner.errors,
            });
        }
        None
    }
}

impl StallWatch {
    /// Logs a transition and sets the gauge.
    pub(crate) fn report(&self, transition: Transition) {
        match transition {
            Transition::Stalled {
                for_,
                waiting,
                errors,
            } => telemetry::stalled(for_, waiting, errors, self.threshold),
            Transition::Resumed { after, committed } => telemetry::resumed(after, committed),
        }
    }
}

/// Runs the once-a-second check until the engine (the last other owner of `watch`) is gone.
pub(crate) fn watch(watch: &Arc<StallWatch>) {
    let weak = Arc::downgrade(watch);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(watch) = weak.upgrade() else { break };
            if let Some(t) = watch.check(Instant::now()) {
                watch.report(t);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn records_waiting_past_the_threshold_stall_and_a_commit_resumes() {
        let t0 = Instant::now();
        let w = StallWatch::new(T);
        w.committed(t0);
        w.processed(500);
        assert_eq!(w.check(t0 + s(5)), None);
        assert_eq!(
            w.check(t0 + s(10)),
            None,
            "exactly the threshold is not past it"
        );
        assert_eq!(
            w.check(t0 + s(11)),
            Some(Transition::Stalled {
                for_: s(11),
                waiting: 500,
                errors: 0
            })
        );
        assert_eq!(w.check(t0 + s(12)), None, "reported once");
        assert_eq!(
            w.committed(t0 + s(30)),
            Some(Transition::Resumed {
                after: s(19),
                committed: true
            })
        );
        assert_eq!(w.committed(t0 + s(31)), None);
    }

    #[test]
    fn an_idle_healthy_instance_never_stalls_and_its_first_error_starts_the_clock() {
        let t0 = Instant::now();
        let w = StallWatch::new(T);
        for n in 1..=3600 {
            assert_eq!(w.check(t0 + s(n)), None);
        }
        // An hour idle, then errors with nothing processed: the clock starts at the last
        // healthy check, not at the last commit an hour ago.
        w.trouble(t0 + s(3601));
        assert_eq!(w.check(t0 + s(3605)), None);
        w.trouble(t0 + s(3608));
        assert_eq!(
            w.check(t0 + s(3611)),
            Some(Transition::Stalled {
                for_: s(11),
                waiting: 0,
                errors: 2
            })
        );
        // No error for the threshold and nothing waiting: no longer stalled, without a commit.
        assert_eq!(w.check(t0 + s(3617)), None);
        assert_eq!(
            w.check(t0 + s(3618)),
            Some(Transition::Resumed {
                after: s(7),
                committed: false
            })
        );
    }

    #[test]
    fn input_waiting_on_an_assigned_partition_stalls_without_errors_or_processed_records() {
        let t0 = Instant::now();
        let w = StallWatch::new(T);
        w.committed(t0);
        w.set_behind(true);
        assert_eq!(
            w.check(t0 + s(11)),
            Some(Transition::Stalled {
                for_: s(11),
                waiting: 0,
                errors: 0
            })
        );
        // Caught up without a commit of its own (the partitions moved away): resumed.
        w.set_behind(false);
        assert_eq!(
            w.check(t0 + s(12)),
            Some(Transition::Resumed {
                after: s(1),
                committed: false
            })
        );
    }

    #[test]
    fn dropped_work_is_owed_until_a_commit_or_its_partitions_go() {
        let t0 = Instant::now();
        let w = StallWatch::new(T);
        w.committed(t0);
        w.processed(10);
        let (a, b) = (TopicPartition::new("in", 0), TopicPartition::new("in", 1));
        w.dropped(t0 + s(1), [a.clone(), b.clone()]);
        assert!(matches!(
            w.check(t0 + s(12)),
            Some(Transition::Stalled { .. })
        ));
        // Long after the last error, nothing processed again (the cluster is down): still
        // stalled, not "resumed".
        for n in 13..=60 {
            assert_eq!(w.check(t0 + s(n)), None, "at {n} s");
        }
        w.released(std::slice::from_ref(&a));
        assert_eq!(w.check(t0 + s(61)), None, "partition 1 still owes its work");
        w.released(std::slice::from_ref(&b));
        assert_eq!(
            w.check(t0 + s(62)),
            Some(Transition::Resumed {
                after: s(50),
                committed: false
            }),
            "both partitions went elsewhere"
        );
        // Owed work ends with a commit too.
        w.dropped(t0 + s(63), [a]);
        assert!(matches!(
            w.check(t0 + s(80)),
            Some(Transition::Stalled { .. })
        ));
        assert!(matches!(
            w.committed(t0 + s(81)),
            Some(Transition::Resumed {
                committed: true,
                ..
            })
        ));
    }

    #[test]
    fn dropped_work_stops_counting_as_waiting_but_counts_as_an_error() {
        let t0 = Instant::now();
        let w = StallWatch::new(T);
        w.committed(t0);
        w.processed(10);
        w.dropped(t0 + s(1), []);
        assert_eq!(w.waiting.load(Ordering::Relaxed), 0);
        let at = t0 + Duration::from_millis(10_500);
        assert_eq!(
            w.check(at),
            Some(Transition::Stalled {
                for_: Duration::from_millis(10_500),
                waiting: 0,
                errors: 1
            }),
            "the error 9.5 s ago keeps it counting"
        );
    }
}
