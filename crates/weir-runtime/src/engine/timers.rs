//! Time in the engine: each partition's time (stream time), timestamp extractors, and firing
//! timers (weir-core's `time` module says what an operator sees).
//!
//! ```text
//!   process(task batch) ─> advance_time ─> fire_event_timers(task)      (same transaction)
//!   every turn of the main loop ─> fire_processing_timers ─> produce    (same transaction)
//!   commit ─> each partition's time into its offset's metadata (`t=`), resume_time = times
//!   abort  ─> times = resume_time (replayed records see the time they saw the first time)
//!   assign ─> times from the committed offsets' metadata
//! ```
//!
//! A timer that fires is deleted, and `on_timer` called, in the open transaction: its outputs,
//! its state writes, the deletion and (event time) the offsets of the records that made it due
//! commit together. A task whose processing-time timer fires without new input commits its
//! current offsets again, with the next state sequence number, so that recovery can tell the
//! commit happened (DESIGN.md, "Recovery").

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use std::collections::BTreeMap;

use weir_core::time::{due_timers_from, remove_timer, TimestampExtractor};
use weir_core::{
    Context, Output, PoisonHandling, PoisonTally, ProcessError, Processor, Record, TimeDomain,
    TopicPartition,
};
use weir_state::StateManager;

use super::{panic_message, Engine};
use crate::failpoint::failpoint;
use crate::RuntimeError;

/// Timers fired per round: the due ones are read this many at a time.
const ROUND: usize = 1_000;
/// Rounds per call: timers that schedule timers already due cannot loop for ever; what is left
/// fires after the next batch (or turn).
const MAX_ROUNDS: usize = 100;
/// How often the main loop looks for due processing-time timers.
const PROCESSING_CHECK: Duration = Duration::from_millis(20);

impl Engine {
    /// Sets the timestamp extractors (`App::timestamp_extractor`).
    pub(crate) fn set_extractors(
        &mut self,
        extractors: std::collections::BTreeMap<String, TimestampExtractor>,
    ) {
        self.extractors = extractors;
    }

    /// Puts what the topic's extractor reads into each record's timestamp, before the operator
    /// sees the batch.
    pub(crate) fn extract_timestamps(&self, records: &mut [Record]) {
        if self.extractors.is_empty() {
            return;
        }
        for r in records {
            if let Some(extract) = self.extractors.get(&*r.topic) {
                if let Some(ts) = extract(r) {
                    r.timestamp_ms = Some(ts);
                }
            }
        }
    }

    /// The stream time of `task`: the largest time of its partitions.
    pub(super) fn stream_time(&self, task: i32) -> Option<i64> {
        self.times
            .iter()
            .filter(|(tp, _)| tp.partition == task)
            .map(|(_, t)| *t)
            .max()
    }

    /// Moves the time of each partition of `batch` to its largest timestamp.
    pub(super) fn advance_time(&mut self, batch: &[Record]) {
        for run in batch.chunk_by(|a, b| a.topic == b.topic && a.partition == b.partition) {
            let Some(latest) = run.iter().filter_map(|r| r.timestamp_ms).max() else {
                continue;
            };
            let tp = TopicPartition::new(&*run[0].topic, run[0].partition);
            let time = self.times.entry(tp).or_insert(latest);
            *time = (*time).max(latest);
        }
    }

    /// The time of each of `offsets`' partitions, for their commit metadata.
    pub(super) fn times_of(&self, offsets: &[(TopicPartition, i64)]) -> Vec<(TopicPartition, i64)> {
        offsets
            .iter()
            .filter_map(|(tp, _)| self.times.get(tp).map(|t| (tp.clone(), *t)))
            .collect()
    }

    /// Their times were committed.
    pub(super) fn times_committed(&mut self, times: Vec<(TopicPartition, i64)>) {
        self.resume_time.extend(times);
    }

    /// An abort: back to the committed times (and the timers that fired in the aborted
    /// transaction are there again: look for due timers from the beginning).
    pub(super) fn times_rewound(&mut self) {
        self.times.clone_from(&self.resume_time);
        self.timer_floor.clear();
    }

    /// An assignment: the committed time of each partition, from its offset's metadata.
    pub(super) fn times_assigned(&mut self, times: Vec<(TopicPartition, i64)>) {
        for (tp, t) in times {
            self.resume_time.insert(tp.clone(), t);
            self.times.insert(tp, t);
        }
    }

    /// A revocation: the partition's time goes with it.
    pub(super) fn times_revoked(&mut self, tp: &TopicPartition) {
        self.resume_time.remove(tp);
        self.times.remove(tp);
        self.timer_floor
            .retain(|(task, _), _| *task != tp.partition);
    }

    /// After `task`'s batch: fires its event-time timers due at its stream time. `Ok(Err(_))`
    /// is the operator's error; `Err(_)` the runtime's.
    pub(super) async fn fire_event_timers(
        &mut self,
        task: i32,
        tally: &mut PoisonTally,
    ) -> Result<Result<(), ProcessError>, RuntimeError> {
        let Some(now) = self.stream_time(task).filter(|_| self.timers) else {
            return Ok(Ok(()));
        };
        let first = self.outputs.len();
        let Some(state) = self.state.as_mut() else {
            return Ok(Ok(()));
        };
        let fired = fire_due(
            self.processor.as_mut(),
            state,
            &mut self.outputs,
            &self.poison,
            tally,
            task,
            TimeDomain::EventTime,
            now,
            Some(now),
            &mut self.timer_floor,
        )
        .await;
        match fired {
            Ok(0) => Ok(Ok(())),
            Ok(_) => self.police_oversize(&[], first, tally),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Each turn of the main loop (at most every [`PROCESSING_CHECK`]): fires the
    /// processing-time timers due by the wall clock, task by task, in the open transaction —
    /// whether or not records arrived.
    pub(crate) async fn fire_processing_timers(&mut self) -> Result<(), RuntimeError> {
        if !self.timers
            || self.stopped
            || self.rewind_pending.load(Ordering::SeqCst)
            || self.timers_checked.elapsed() < PROCESSING_CHECK
        {
            return Ok(());
        }
        self.timers_checked = Instant::now();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let tasks: std::collections::BTreeSet<i32> =
            self.assigned.iter().map(|tp| tp.partition).collect();
        for task in tasks {
            let Some(state) = self.state.as_mut() else {
                return Ok(());
            };
            let floor = timer_floor(&self.timer_floor, task, TimeDomain::ProcessingTime);
            let due = due_timers_from(
                &mut state.access(task),
                TimeDomain::ProcessingTime,
                floor,
                now,
                1,
            )
            .map_err(|e| RuntimeError::Internal(format!("reading the timers: {e}")))?;
            if due.is_empty() {
                continue;
            }
            self.begin().await?;
            let first = self.outputs.len();
            let mut tally = PoisonTally::default();
            let stream_time = self.stream_time(task);
            let Some(state) = self.state.as_mut() else {
                return Ok(());
            };
            let fired = fire_due(
                self.processor.as_mut(),
                state,
                &mut self.outputs,
                &self.poison,
                &mut tally,
                task,
                TimeDomain::ProcessingTime,
                now,
                stream_time,
                &mut self.timer_floor,
            )
            .await;
            let result = match fired {
                Ok(_) => match self.police_oversize(&[], first, &mut tally) {
                    Ok(policed) => policed,
                    Err(e) => return Err(self.stop(e).await),
                },
                Err(e) => Err(e),
            };
            match self.tallied(result, tally) {
                Ok(()) => {
                    // The task commits its offsets again (unmoved), with the state commit's
                    // next sequence number: where a commit still in the background moves
                    // them, or where they were last committed.
                    let unmoved: Vec<(TopicPartition, i64)> = self
                        .assigned
                        .iter()
                        .filter(|tp| tp.partition == task)
                        .filter_map(|tp| {
                            let committing = self.mode.committing().and_then(|c| c.offset_of(tp));
                            committing
                                .or_else(|| self.resume_at.get(tp).copied())
                                .map(|at| (tp.clone(), at))
                        })
                        .collect();
                    for (tp, at) in unmoved {
                        self.positions.entry(tp).or_insert(at);
                    }
                    let Some(produced) = self.produce().await? else {
                        return Ok(());
                    };
                    self.pending_out += produced;
                    failpoint("after_processing_timers");
                }
                Err(e) => {
                    let at = format!("a processing-time timer of task {task}");
                    return self.failed_processing(e, "on_timer", at).await;
                }
            }
        }
        Ok(())
    }
}

/// Where the look for `task`'s due timers of `domain` starts (see `Engine::timer_floor`).
fn timer_floor(floors: &BTreeMap<(i32, TimeDomain), i64>, task: i32, domain: TimeDomain) -> i64 {
    floors.get(&(task, domain)).copied().unwrap_or(i64::MIN)
}

/// A timer of `task` was scheduled at `due`: due timers must be looked for from there.
pub(super) fn lower_timer_floor(
    floors: &mut BTreeMap<(i32, TimeDomain), i64>,
    task: i32,
    due: i64,
) {
    for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
        if let Some(floor) = floors.get_mut(&(task, domain)) {
            *floor = (*floor).min(due);
        }
    }
}

/// Fires the timers of `domain` due at `up_to` in `task`, in due-time order, round after round
/// (a timer `on_timer` schedules that is already due fires too): each is deleted, then
/// `on_timer` called. Returns how many fired; stops at the operator's first error. Reads from
/// the task's timer floor, and when every due timer has fired moves it past `up_to`.
#[allow(clippy::too_many_arguments)]
async fn fire_due(
    processor: &mut dyn Processor,
    state: &mut StateManager,
    outputs: &mut Vec<Output>,
    poison: &PoisonHandling,
    tally: &mut PoisonTally,
    task: i32,
    domain: TimeDomain,
    up_to: i64,
    stream_time: Option<i64>,
    floors: &mut BTreeMap<(i32, TimeDomain), i64>,
) -> Result<u64, ProcessError> {
    let mut access = state.access(task);
    let mut fired = 0;
    let mut from = timer_floor(floors, task, domain);
    let mut all_fired = false;
    for _ in 0..MAX_ROUNDS {
        let due = due_timers_from(&mut access, domain, from, up_to, ROUND)
            .map_err(|e| ProcessError::Fatal(Box::new(e)))?;
        if due.is_empty() {
            all_fired = true;
            break;
        }
        for timer in due {
            remove_timer(&mut access, &timer).map_err(|e| ProcessError::Fatal(Box::new(e)))?;
            let mut ctx = Context::new(outputs, poison, tally)
                .with_state(&mut access)
                .with_time(stream_time, true)
                .with_task(task);
            let run = AssertUnwindSafe(processor.on_timer(&timer, &mut ctx))
                .catch_unwind()
                .await;
            let scheduled = ctx.earliest_scheduled();
            if let Some(due) = scheduled {
                lower_timer_floor(floors, task, due);
                from = from.min(due);
            }
            run.unwrap_or_else(|panic| {
                Err(ProcessError::fatal(format!(
                    "the operator panicked in on_timer (task {task}, {:?} timer due at {} for key {:?}): {}",
                    timer.domain,
                    timer.due_ms,
                    String::from_utf8_lossy(&timer.key),
                    panic_message(&*panic)
                )))
            })?;
            fired += 1;
        }
    }
    if all_fired {
        floors.insert((task, domain), up_to.saturating_add(1).max(from));
    }
    Ok(fired)
}
