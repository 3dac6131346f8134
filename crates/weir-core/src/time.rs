//! Time as an operator sees it: the task's stream time and timers.
//!
//! # Stream time
//!
//! Each task (input partition number) has a *stream time*: the largest record timestamp it has
//! processed (the record's timestamp — `CreateTime`, or the broker's `LogAppendTime` on topics
//! set so — unless a timestamp extractor for its topic reads it from the record). It only moves
//! forward, is committed with the input offsets (in their metadata, in the same transaction), and
//! after an abort or a restart is what was last committed: the records replayed see the same
//! stream time they saw the first time. [`Context::stream_time`](crate::Context::stream_time)
//! gives it as it was before the batch being processed.
//!
//! # Timers
//!
//! A timer is a key and a due time in one of two [`TimeDomain`]s. Scheduled through
//! [`Context::timers`](crate::Context::timers) (a processor that returns `true` from
//! [`Processor::timers`](crate::Processor::timers)), it is kept in the task's state — an internal
//! store, [`TIMER_STORE`], with a changelog like any other — and fires once: the runtime calls
//! [`Processor::on_timer`](crate::Processor::on_timer) with the task's context, and the timer's
//! deletion, what `on_timer` writes and emits, and the input offsets that moved time past it
//! commit together in one transaction, or, on an abort or a crash, none of it (the timer fires
//! again, from the same state).
//!
//! - Event time: fires after the batch that moved the task's stream time to or past its due
//!   time, in due-time order.
//! - Processing time: fires when the wall clock reaches its due time, whether or not records
//!   arrive (an idle partition's timers fire too), at most about `max.batch.wait.ms` late.
//!
//! One timer per (domain, key, due time): scheduling the same again is a no-op; a key may have
//! timers at several due times. Scheduling and cancelling are one write each; finding the due
//! timers reads only the due ones (they are stored in due-time order), never every key.

use std::ops::Bound;

use crate::error::ProcessError;
use crate::state::{StateAccess, StateError, StoreKey};

/// The internal state store that holds a processor's timers, one per task like any store. Its
/// changelog topic is `{application.id}-weir-timers-changelog`. Store names starting `weir-`
/// are weir's.
pub const TIMER_STORE: &str = "weir-timers";

/// Reads a record's event time from the record itself (e.g. a field of its value), for the
/// input topic it is set for (`App::timestamp_extractor` in weir-runtime). The runtime puts
/// what it returns into [`Record::timestamp_ms`](crate::Record::timestamp_ms) before the
/// operator sees the record; `None` keeps the record's own timestamp.
pub type TimestampExtractor = std::sync::Arc<dyn Fn(&crate::Record) -> Option<i64> + Send + Sync>;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeDomain {
    /// The task's stream time (record timestamps).
    EventTime,
    /// The wall clock of the machine the task runs on, in milliseconds since the Unix epoch.
    ProcessingTime,
}

impl TimeDomain {
    fn tag(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(TimeDomain::EventTime),
            1 => Some(TimeDomain::ProcessingTime),
            _ => None,
        }
    }
}

/// A timer: what [`Processor::on_timer`](crate::Processor::on_timer) is called with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// Its clock.
    pub domain: TimeDomain,
    /// When it is due, in milliseconds (event time: a record timestamp; processing time: since
    /// the Unix epoch).
    pub due_ms: i64,
    /// The key it was scheduled for.
    pub key: Vec<u8>,
}

impl Timer {
    /// The key as UTF-8 text, if it is.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }

    /// Its key in [`TIMER_STORE`]: `[domain][due][key]`, so that a domain's timers are stored
    /// in due-time order.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(9 + self.key.len());
        bytes.push(self.domain.tag());
        bytes.extend(self.due_ms.encode());
        bytes.extend_from_slice(&self.key);
        bytes
    }

    /// The timer stored under `bytes`, if they are one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let domain = TimeDomain::from_tag(*bytes.first()?)?;
        let due_ms = i64::decode(bytes.get(1..9)?)?;
        Some(Self {
            domain,
            due_ms,
            key: bytes[9..].to_vec(),
        })
    }
}

/// The value stored for each timer (the key says everything).
const SCHEDULED: &[u8] = b"1";

/// The timers of the task being processed. Get it with
/// [`Context::timers`](crate::Context::timers).
pub struct Timers<'c> {
    access: &'c mut dyn StateAccess,
    /// The earliest due time scheduled through this handle's context (see
    /// [`Context::earliest_scheduled`](crate::Context::earliest_scheduled)).
    earliest: &'c mut Option<i64>,
}

impl std::fmt::Debug for Timers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timers")
    }
}

fn fatal(e: StateError) -> ProcessError {
    ProcessError::Fatal(Box::new(e))
}

impl<'c> Timers<'c> {
    pub(crate) fn new(access: &'c mut dyn StateAccess, earliest: &'c mut Option<i64>) -> Self {
        Self { access, earliest }
    }

    /// Schedules a timer for `key` at `due_ms` (uncommitted until the transaction commits, like
    /// any state write). An event-time timer due at or before the current stream time fires
    /// after this batch.
    pub fn schedule(
        &mut self,
        domain: TimeDomain,
        key: impl AsRef<[u8]>,
        due_ms: i64,
    ) -> Result<(), ProcessError> {
        let timer = Timer {
            domain,
            due_ms,
            key: key.as_ref().to_vec(),
        };
        *self.earliest = Some(self.earliest.map_or(due_ms, |e| e.min(due_ms)));
        self.access
            .put(TIMER_STORE, &timer.encode(), SCHEDULED.to_vec())
            .map_err(fatal)
    }

    /// Cancels the timer for `key` at `due_ms`, if there is one.
    pub fn cancel(
        &mut self,
        domain: TimeDomain,
        key: impl AsRef<[u8]>,
        due_ms: i64,
    ) -> Result<(), ProcessError> {
        let timer = Timer {
            domain,
            due_ms,
            key: key.as_ref().to_vec(),
        };
        self.access
            .delete(TIMER_STORE, &timer.encode())
            .map_err(fatal)
    }

    /// Whether a timer for `key` at `due_ms` is scheduled.
    pub fn is_scheduled(
        &mut self,
        domain: TimeDomain,
        key: impl AsRef<[u8]>,
        due_ms: i64,
    ) -> Result<bool, ProcessError> {
        let timer = Timer {
            domain,
            due_ms,
            key: key.as_ref().to_vec(),
        };
        Ok(self
            .access
            .get(TIMER_STORE, &timer.encode())
            .map_err(fatal)?
            .is_some())
    }

    /// The earliest timer of `domain`, if any.
    pub fn next(&mut self, domain: TimeDomain) -> Result<Option<Timer>, ProcessError> {
        Ok(due_timers(self.access, domain, i64::MAX, 1)
            .map_err(fatal)?
            .into_iter()
            .next())
    }
}

/// Up to `limit` timers of `domain` due at or before `up_to`, in due-time order, read from the
/// task's [`TIMER_STORE`] (its uncommitted writes included). Only due entries are read. Used by
/// the runtime to fire them.
pub fn due_timers(
    access: &mut dyn StateAccess,
    domain: TimeDomain,
    up_to: i64,
    limit: usize,
) -> Result<Vec<Timer>, StateError> {
    due_timers_from(access, domain, i64::MIN, up_to, limit)
}

/// [`due_timers`] that are due at or after `from`: the runtime keeps, per task, the time up to
/// which every due timer has fired, and reads on from there. A fired timer is deleted, and
/// RocksDB keeps a deletion as a tombstone until a compaction drops it: a scan from the
/// beginning would step over every timer that ever fired (measured: with a thousand windows
/// closing a second, the loop's time per commit grew from 0.1 s to 1.2 s within a minute).
pub fn due_timers_from(
    access: &mut dyn StateAccess,
    domain: TimeDomain,
    from: i64,
    up_to: i64,
    limit: usize,
) -> Result<Vec<Timer>, StateError> {
    let from = Timer {
        domain,
        due_ms: from,
        key: Vec::new(),
    }
    .encode();
    // Everything due at `up_to` sorts before `[domain][up_to + 1]`; at `i64::MAX`, before the
    // next domain's tag.
    let to = match up_to.checked_add(1) {
        Some(next) => Timer {
            domain,
            due_ms: next,
            key: Vec::new(),
        }
        .encode(),
        None => vec![domain.tag() + 1],
    };
    let entries = access.scan(TIMER_STORE, Bound::Included(&from), Bound::Excluded(&to))?;
    Ok(entries
        .iter()
        .filter_map(|(k, _)| Timer::decode(k))
        .take(limit)
        .collect())
}

/// Deletes a timer that fired (the runtime, before calling `on_timer`).
pub fn remove_timer(access: &mut dyn StateAccess, timer: &Timer) -> Result<(), StateError> {
    access.delete(TIMER_STORE, &timer.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryState;

    #[test]
    fn due_timers_come_in_due_order_per_domain_and_only_the_due_ones() {
        let mut map = MemoryState::default();
        let mut earliest = None;
        let mut timers = Timers::new(&mut map, &mut earliest);
        for (key, due) in [("b", 30), ("a", 10), ("c", -5), ("a", 20), ("z", i64::MAX)] {
            timers.schedule(TimeDomain::EventTime, key, due).unwrap();
        }
        timers
            .schedule(TimeDomain::ProcessingTime, "p", 15)
            .unwrap();
        timers.schedule(TimeDomain::EventTime, "a", 10).unwrap(); // again: no second timer
        timers.cancel(TimeDomain::EventTime, "b", 30).unwrap();
        assert!(timers.is_scheduled(TimeDomain::EventTime, "a", 20).unwrap());
        assert!(!timers.is_scheduled(TimeDomain::EventTime, "b", 30).unwrap());
        assert_eq!(
            timers
                .next(TimeDomain::ProcessingTime)
                .unwrap()
                .unwrap()
                .due_ms,
            15
        );
        let due = |map: &mut MemoryState, up_to| -> Vec<(String, i64)> {
            due_timers(map, TimeDomain::EventTime, up_to, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|t| (t.key_str().unwrap().to_string(), t.due_ms))
                .collect()
        };
        assert_eq!(due(&mut map, 19), vec![("c".into(), -5), ("a".into(), 10)]);
        assert_eq!(
            due(&mut map, 20),
            vec![("c".into(), -5), ("a".into(), 10), ("a".into(), 20)]
        );
        assert_eq!(due(&mut map, i64::MAX).len(), 4);
        assert_eq!(earliest, Some(-5), "the earliest due time scheduled");
        // From a floor: only the due timers at or after it.
        let keys: Vec<i64> = due_timers_from(&mut map, TimeDomain::EventTime, 0, 20, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|t| t.due_ms)
            .collect();
        assert_eq!(keys, vec![10, 20]);
        assert_eq!(due(&mut map, -6), vec![]);
        let first = due_timers(&mut map, TimeDomain::EventTime, 100, 1).unwrap();
        remove_timer(&mut map, &first[0]).unwrap();
        assert_eq!(due(&mut map, 20), vec![("a".into(), 10), ("a".into(), 20)]);
    }

    #[test]
    fn a_timer_round_trips_through_its_stored_key() {
        let t = Timer {
            domain: TimeDomain::ProcessingTime,
            due_ms: -42,
            key: b"acct-1".to_vec(),
        };
        assert_eq!(Timer::decode(&t.encode()), Some(t));
        assert_eq!(Timer::decode(&[7, 0, 0]), None);
    }
}
