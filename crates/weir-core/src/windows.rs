//! Windowed aggregations: tumbling, hopping, sliding and session windows with a grace period,
//! on top of state stores and event-time timers (see [`crate::time`]), usable from any
//! operator.
//!
//! A [`WindowedAggregation`] keeps one row per (key, window) in a state store of its own, and
//! an event-time timer per window at its end + grace. A record is added to every window it
//! falls in whose end + grace is still after the stream time *before the record*; if every such
//! window has closed, the record is late ([`Added::Late`]; reported with [`Context::late`]:
//! dropped and counted, or dead-lettered under `poison.policy = dead_letter`). When the task's
//! stream time reaches a window's end + grace its timer fires: in [`Emit::OnClose`] mode
//! [`WindowedAggregation::on_timer`] returns the window's final result, once, and deletes its
//! row; in [`Emit::OnUpdate`] mode every [`add`](WindowedAggregation::add) returns the windows
//! it changed, and the timer only deletes the row. Either way no window outlives its end +
//! grace in the store: state stays as large as the open windows (sliding windows also keep one
//! aggregate per record timestamp of the last `size + 2 + grace` ms; see
//! [`WindowSpec::sliding`]).
//!
//! The emit, the row's deletion, the timer's and the input offsets that moved stream time past
//! the window's end + grace commit in one transaction, so a window's result is emitted exactly
//! once, through crashes and rebalances.
//!
//! | kind | windows of a record at `t` | end |
//! |---|---|---|
//! | [`WindowSpec::tumbling`]`(size)` | `[s, s + size)`, `s` a multiple of `size` | `s + size` |
//! | [`WindowSpec::hopping`]`(size, advance)` | every `[s, s + size)` with `s` a multiple of `advance` and `s <= t < s + size` | `s + size` |
//! | [`WindowSpec::sliding`]`(size)` | `[r - size, r]` for each record `r` of the key, and `[r + 1, r + 1 + size]` when it holds a record; `t` is in each that covers it | `s + size + 1` |
//! | [`WindowSpec::session`]`(gap)` | `[t, t + gap)`, merged with every session of the key it overlaps | last record + `gap` |
//!
//! ```
//! use weir_core::windows::{Aggregator, Emit, WindowSpec, WindowedAggregation};
//!
//! /// Count and sum of integer values.
//! struct CountSum;
//! impl Aggregator for CountSum {
//!     type Value = i64;
//!     type Agg = (u64, i64);
//!     fn init(&self) -> (u64, i64) { (0, 0) }
//!     fn add(&self, agg: &mut (u64, i64), v: &i64) { agg.0 += 1; agg.1 += v; }
//!     fn merge(&self, a: (u64, i64), b: (u64, i64)) -> (u64, i64) { (a.0 + b.0, a.1 + b.1) }
//! }
//! let per_minute = WindowedAggregation::new(
//!     "per-minute",
//!     WindowSpec::tumbling(60_000).grace(5_000),
//!     Emit::OnClose,
//!     CountSum,
//! );
//! // In Processor::stores: per_minute.store(); Processor::timers returns true; process calls
//! // per_minute.add(ctx, record, key, &value) per record, on_timer calls per_minute.on_timer.
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ProcessError;
use crate::processor::Context;
use crate::record::Record;
use crate::state::{prefix_end, StoreKey, StoreSpec};
use crate::time::{TimeDomain, Timer};

/// Which windows, and how long after its end a window still takes records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    kind: Kind,
    grace_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hopping { size: i64, advance: i64 },
    Sliding { size: i64 },
    Session { gap: i64 },
}

impl WindowSpec {
    /// Tumbling windows of `size_ms`: `[s, s + size)`, `s` a multiple of `size`. Grace 0.
    pub fn tumbling(size_ms: i64) -> Self {
        Self::hopping(size_ms, size_ms)
    }

    /// Hopping windows of `size_ms` every `advance_ms` (overlapping when advance < size): a
    /// record is in every window `[s, s + size)` with `s` a multiple of `advance`. Grace 0.
    pub fn hopping(size_ms: i64, advance_ms: i64) -> Self {
        assert!(
            size_ms > 0 && advance_ms > 0 && advance_ms <= size_ms,
            "hopping windows need 0 < advance <= size (got size {size_ms}, advance {advance_ms})"
        );
        Self {
            kind: Kind::Hopping {
                size: size_ms,
                advance: advance_ms,
            },
            grace_ms: 0,
        }
    }

    /// Sliding windows of `size_ms` (Kafka Streams' `SlidingWindows`): windows `[s, s + size]`,
    /// both ends inclusive, defined by the records themselves — each record at `t` has a window
    /// that ends at it, `[t - size, t]`, and one that starts just after it, `[t + 1, t + 1 +
    /// size]`, if another record falls in that one. So every distinct set of a key's records
    /// no more than `size` apart is one window, and an aggregate over "the last `size` ms" is
    /// there for every record. Results report `end = s + size + 1` (exclusive, as for every
    /// kind). Grace 0.
    pub fn sliding(size_ms: i64) -> Self {
        assert!(
            size_ms > 0,
            "sliding windows need a size > 0 (got {size_ms})"
        );
        Self {
            kind: Kind::Sliding { size: size_ms },
            grace_ms: 0,
        }
    }

    /// Session windows: records of a key less than `gap_ms` apart are one session, `[first,
    /// last + gap)`; a record that bridges two sessions merges them. Grace 0.
    pub fn session(gap_ms: i64) -> Self {
        assert!(gap_ms > 0, "session windows need a gap > 0 (got {gap_ms})");
        Self {
            kind: Kind::Session { gap: gap_ms },
            grace_ms: 0,
        }
    }

    /// How long after its end a window still takes (out-of-order) records, in event time.
    #[must_use]
    pub fn grace(mut self, grace_ms: i64) -> Self {
        assert!(grace_ms >= 0, "grace must be >= 0 (got {grace_ms})");
        self.grace_ms = grace_ms;
        self
    }

    /// The grace period.
    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    /// The `[start, end)` of every fixed window (tumbling, hopping) `t` falls in, latest start
    /// first; `None` for sliding and session windows (their windows depend on the records).
    pub fn windows_of(&self, t: i64) -> Option<Vec<(i64, i64)>> {
        let Kind::Hopping { size, advance } = self.kind else {
            return None;
        };
        let mut windows = Vec::new();
        let mut start = t.div_euclid(advance) * advance;
        while start + size > t {
            windows.push((start, start + size));
            start -= advance;
        }
        Some(windows)
    }
}

/// When results are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Every change: [`WindowedAggregation::add`] returns each window it updated (Kafka
    /// Streams' default).
    OnUpdate,
    /// Once per window, when it closes (stream time >= end + grace):
    /// [`WindowedAggregation::on_timer`] returns the final result (Kafka Streams'
    /// `suppress(untilWindowCloses)`, Flink's default).
    OnClose,
}

/// The aggregate function: `init`, `add`, and `merge` (used by session windows when a record
/// joins two sessions).
pub trait Aggregator: Send + Sync {
    /// What is added (parsed from a record by the operator).
    type Value;
    /// The aggregate, kept in the state store as JSON.
    type Agg: Serialize + DeserializeOwned;
    /// The aggregate of an empty window.
    fn init(&self) -> Self::Agg;
    /// Adds a value.
    fn add(&self, agg: &mut Self::Agg, value: &Self::Value);
    /// Merges two aggregates (sessions).
    fn merge(&self, a: Self::Agg, b: Self::Agg) -> Self::Agg;
}

/// A window's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowResult<A> {
    /// The key.
    pub key: Vec<u8>,
    /// The window's start (inclusive), in milliseconds.
    pub start: i64,
    /// The window's end (exclusive).
    pub end: i64,
    /// The aggregate.
    pub agg: A,
}

/// What [`WindowedAggregation::add`] did with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Added<A> {
    /// Added. In [`Emit::OnUpdate`] mode, the windows it changed (their new results); in
    /// [`Emit::OnClose`] mode, empty.
    Updated(Vec<WindowResult<A>>),
    /// Every window of the record had closed: not added. Already reported with
    /// [`Context::late`].
    Late,
    /// The record has no timestamp: not added. Already reported with [`Context::poison`]
    /// (under `skip` or `dead_letter`; under `fail` `add` returns the error instead).
    NoTimestamp,
}

/// One row: a window's end and aggregate.
#[derive(Serialize, Deserialize)]
struct Row<A> {
    end: i64,
    agg: A,
}

/// A key's open sessions: (start, row).
type Sessions<A> = Vec<(i64, Row<A>)>;

/// See the module documentation.
#[derive(Debug)]
pub struct WindowedAggregation<G> {
    store: String,
    spec: WindowSpec,
    emit: Emit,
    aggregator: G,
    timer_prefix: Vec<u8>,
}

impl<G: Aggregator> WindowedAggregation<G> {
    /// An aggregation whose rows live in the state store `store` (declare it with
    /// [`store`](Self::store); the processor must return `true` from `Processor::timers`).
    pub fn new(store: impl Into<String>, spec: WindowSpec, emit: Emit, aggregator: G) -> Self {
        let store = store.into();
        let mut timer_prefix = b"weir.window\0".to_vec();
        timer_prefix.extend_from_slice(store.as_bytes());
        timer_prefix.push(0);
        Self {
            store,
            spec,
            emit,
            aggregator,
            timer_prefix,
        }
    }

    /// The state store to list in `Processor::stores` (with a changelog).
    pub fn store(&self) -> StoreSpec {
        StoreSpec::new(self.store.clone())
    }

    /// The windows' kind and grace.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Adds `record` (its value parsed as `value`) under `key` to its windows. Call it for
    /// each record of a batch, in order: it moves the context's stream time
    /// ([`Context::observe_time`]) and judges lateness by the stream time before the record.
    pub fn add(
        &self,
        ctx: &mut Context<'_>,
        record: &Record,
        key: &[u8],
        value: &G::Value,
    ) -> Result<Added<G::Agg>, ProcessError> {
        let Some(t) = record.timestamp_ms else {
            ctx.poison(record, "the record has no timestamp, so it has no window")?;
            return Ok(Added::NoTimestamp);
        };
        let before = ctx.observe_time(t);
        let closed = |end: i64| before.is_some_and(|st| end + self.spec.grace_ms <= st);
        let updated = match self.spec.kind {
            Kind::Hopping { .. } => {
                let windows = self.spec.windows_of(t).unwrap_or_default();
                let open: Vec<(i64, i64)> = windows
                    .into_iter()
                    .filter(|(_, end)| !closed(*end))
                    .collect();
                if open.is_empty() {
                    ctx.late(record, self.late_reason(t, before));
                    return Ok(Added::Late);
                }
                let mut updated = Vec::new();
                // Earliest window first.
                for (start, end) in open.into_iter().rev() {
                    let row_key = window_key(key, start);
                    let mut rows = ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?;
                    let mut row = match rows.get(&row_key)? {
                        Some(row) => row,
                        None => Row {
                            end,
                            agg: self.aggregator.init(),
                        },
                    };
                    self.aggregator.add(&mut row.agg, value);
                    rows.put(&row_key, &row)?;
                    self.schedule_close(ctx, &row_key, end)?;
                    if self.emit == Emit::OnUpdate {
                        updated.push(WindowResult {
                            key: key.to_vec(),
                            start,
                            end,
                            agg: row.agg,
                        });
                    }
                }
                updated
            }
            Kind::Sliding { size } => {
                if closed(t + size + 1) {
                    ctx.late(record, self.late_reason(t, before));
                    return Ok(Added::Late);
                }
                self.add_sliding(ctx, key, t, size, value, &closed)?
            }
            Kind::Session { gap } => {
                if closed(t + gap) {
                    ctx.late(record, self.late_reason(t, before));
                    return Ok(Added::Late);
                }
                // Every session of the key that [t, t + gap) overlaps merges with it.
                let (mut start, mut end) = (t, t + gap);
                let mut agg = self.aggregator.init();
                self.aggregator.add(&mut agg, value);
                let sessions = self.sessions(ctx, key)?;
                for (s, row) in sessions {
                    if s < end && start < row.end {
                        let row_key = window_key(key, s);
                        ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?
                            .delete(&row_key)?;
                        self.cancel_close(ctx, &row_key, row.end)?;
                        start = start.min(s);
                        end = end.max(row.end);
                        agg = self.aggregator.merge(row.agg, agg);
                    }
                }
                let row_key = window_key(key, start);
                let row = Row { end, agg };
                ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?
                    .put(&row_key, &row)?;
                self.schedule_close(ctx, &row_key, end)?;
                if self.emit == Emit::OnUpdate {
                    vec![WindowResult {
                        key: key.to_vec(),
                        start,
                        end,
                        agg: row.agg,
                    }]
                } else {
                    Vec::new()
                }
            }
        };
        Ok(Added::Updated(updated))
    }

    /// Call from `Processor::on_timer` with every timer: if it is one of this aggregation's, the
    /// window it closes is removed from the store, and returned in [`Emit::OnClose`] mode
    /// (`Ok(None)` in [`Emit::OnUpdate`] mode, or when the timer is not this aggregation's).
    pub fn on_timer(
        &self,
        ctx: &mut Context<'_>,
        timer: &Timer,
    ) -> Result<Option<WindowResult<G::Agg>>, ProcessError> {
        if timer.domain != TimeDomain::EventTime {
            return Ok(None);
        }
        let Some(row_key) = timer.key.strip_prefix(self.timer_prefix.as_slice()) else {
            return Ok(None);
        };
        let row_key = row_key.to_vec();
        if row_key.starts_with(&BUCKETS) {
            // A sliding window's bucket that no open window can need any more.
            ctx.store::<Vec<u8>, G::Agg>(&self.store)?
                .delete(&row_key)?;
            return Ok(None);
        }
        let Some((key, start)) = split_window_key(&row_key) else {
            return Ok(None);
        };
        let mut rows = ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?;
        let Some(row) = rows.get(&row_key)? else {
            return Ok(None);
        };
        if row.end + self.spec.grace_ms != timer.due_ms {
            // A session that grew since: its own timer closes it.
            return Ok(None);
        }
        rows.delete(&row_key)?;
        Ok((self.emit == Emit::OnClose).then(|| WindowResult {
            key: key.to_vec(),
            start,
            end: row.end,
            agg: row.agg,
        }))
    }

    /// The open windows of `key` that start in `[from, to)`, earliest first.
    pub fn fetch(
        &self,
        ctx: &mut Context<'_>,
        key: &[u8],
        from: i64,
        to: i64,
    ) -> Result<Vec<WindowResult<G::Agg>>, ProcessError> {
        let rows = ctx
            .store::<Vec<u8>, Row<G::Agg>>(&self.store)?
            .range(&window_key(key, from), &window_key(key, to))?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, row)| {
                let (_, start) = split_window_key(&k)?;
                Some(WindowResult {
                    key: key.to_vec(),
                    start,
                    end: row.end,
                    agg: row.agg,
                })
            })
            .collect())
    }

    /// Sliding windows: `key`'s records are also kept as one aggregate per timestamp (a
    /// *bucket*), from which a window that comes into being is folded (with `merge`) — a
    /// sliding window can start to exist after records inside it arrived. Windows that
    /// already exist are updated with `add`, as fixed ones are. A record at `t` touches only
    /// the buckets in `[t - size - 1, t + size + 1]`: every window that contains it starts in
    /// `[t - size, t]`, and the one after it starts at `t + 1`.
    fn add_sliding(
        &self,
        ctx: &mut Context<'_>,
        key: &[u8],
        t: i64,
        size: i64,
        value: &G::Value,
        closed: &dyn Fn(i64) -> bool,
    ) -> Result<Vec<WindowResult<G::Agg>>, ProcessError> {
        let mut buckets: std::collections::BTreeMap<i64, G::Agg> = ctx
            .store::<Vec<u8>, G::Agg>(&self.store)?
            .range(
                &bucket_key(key, t - size - 1),
                &bucket_key(key, t + size + 2),
            )?
            .into_iter()
            .filter_map(|(k, agg)| Some((split_bucket_key(&k)?.1, agg)))
            .collect();
        let new_bucket = !buckets.contains_key(&t);
        let bucket = buckets.entry(t).or_insert_with(|| self.aggregator.init());
        self.aggregator.add(bucket, value);
        ctx.store::<Vec<u8>, G::Agg>(&self.store)?
            .put(&bucket_key(key, t), bucket)?;
        if new_bucket {
            // After this no window that holds `t` is open, nor can one be made: the last,
            // `[t, t + size]` (the window after a record at t - 1), closes at t + size + 1 +
            // grace, and a record that would make it must come before that.
            let due = t + size + 2 + self.spec.grace_ms;
            let timer = self.timer_key(&bucket_key(key, t));
            ctx.timers()?.schedule(TimeDomain::EventTime, timer, due)?;
        }
        // The windows that contain the record, and the one just after it.
        let mut starts = std::collections::BTreeSet::new();
        starts.insert(t - size);
        for &b in buckets.keys() {
            if b > t && b <= t + size {
                starts.insert(b - size); // the window ending at b holds t
            } else if b < t && b >= t - size - 1 {
                starts.insert(b + 1); // the window after b holds t
            }
        }
        if buckets.range(t + 1..=t + 1 + size).next().is_some() {
            starts.insert(t + 1); // the window after t holds a record
        }
        let mut updated = Vec::new();
        for start in starts {
            let end = start + size + 1;
            if closed(end) {
                continue;
            }
            let row_key = window_key(key, start);
            let mut rows = ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?;
            let holds_t = start <= t && t < end;
            let row = match rows.get(&row_key)? {
                Some(mut row) if holds_t => {
                    self.aggregator.add(&mut row.agg, value);
                    row
                }
                Some(_) => continue,
                None => {
                    let mut agg = self.aggregator.init();
                    for (_, b) in buckets.range(start..end) {
                        agg = self.aggregator.merge(agg, clone_agg(b)?);
                    }
                    self.schedule_close(ctx, &row_key, end)?;
                    Row { end, agg }
                }
            };
            ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?
                .put(&row_key, &row)?;
            if self.emit == Emit::OnUpdate {
                updated.push(WindowResult {
                    key: key.to_vec(),
                    start,
                    end,
                    agg: row.agg,
                });
            }
        }
        Ok(updated)
    }

    /// Every open session of `key`: (start, row).
    fn sessions(
        &self,
        ctx: &mut Context<'_>,
        key: &[u8],
    ) -> Result<Sessions<G::Agg>, ProcessError> {
        let prefix = key_prefix(key);
        let mut rows = ctx.store::<Vec<u8>, Row<G::Agg>>(&self.store)?;
        let found = match prefix_end(&prefix) {
            Some(end) => rows.range(&prefix, &end)?,
            None => rows.prefix(&prefix)?,
        };
        Ok(found
            .into_iter()
            .filter_map(|(k, row)| Some((split_window_key(&k)?.1, row)))
            .collect())
    }

    fn timer_key(&self, row_key: &[u8]) -> Vec<u8> {
        let mut k = self.timer_prefix.clone();
        k.extend_from_slice(row_key);
        k
    }

    fn schedule_close(
        &self,
        ctx: &mut Context<'_>,
        row_key: &[u8],
        end: i64,
    ) -> Result<(), ProcessError> {
        let due = end + self.spec.grace_ms;
        ctx.timers()?
            .schedule(TimeDomain::EventTime, self.timer_key(row_key), due)
    }

    fn cancel_close(
        &self,
        ctx: &mut Context<'_>,
        row_key: &[u8],
        end: i64,
    ) -> Result<(), ProcessError> {
        let due = end + self.spec.grace_ms;
        ctx.timers()?
            .cancel(TimeDomain::EventTime, self.timer_key(row_key), due)
    }

    fn late_reason(&self, t: i64, before: Option<i64>) -> String {
        format!(
            "timestamp {t}: every window of it had closed (end + grace {} ms <= stream time {})",
            self.spec.grace_ms,
            before.unwrap_or(i64::MIN)
        )
    }
}

/// A row's key: `[key length, u32 big-endian][key][start, order-preserving]`, so that a key's
/// windows are one range, in start order.
fn window_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut k = key_prefix(key);
    k.extend(start.encode());
    k
}

/// Where sliding windows' buckets live in the store: after every row (no key is 2^32 - 1
/// bytes long).
const BUCKETS: [u8; 4] = [0xff; 4];

/// A sliding window bucket's key: `[BUCKETS][key length][key][timestamp, order-preserving]`.
fn bucket_key(key: &[u8], t: i64) -> Vec<u8> {
    let mut k = BUCKETS.to_vec();
    k.extend(window_key(key, t));
    k
}

fn split_bucket_key(bytes: &[u8]) -> Option<(&[u8], i64)> {
    split_window_key(bytes.strip_prefix(&BUCKETS)?)
}

/// A copy of an aggregate (the trait asks for no `Clone`; the aggregate is serde already).
fn clone_agg<A: Serialize + DeserializeOwned>(agg: &A) -> Result<A, ProcessError> {
    serde_json::to_vec(agg)
        .and_then(|bytes| serde_json::from_slice(&bytes))
        .map_err(|e| ProcessError::Fatal(e.into()))
}

fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len() + 8);
    k.extend((key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn split_window_key(bytes: &[u8]) -> Option<(&[u8], i64)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let key = bytes.get(4..4 + len)?;
    let start = i64::decode(bytes.get(4 + len..)?)?;
    Some((key, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::{PoisonHandling, PoisonTally};
    use crate::state::MemoryState;
    use crate::time::due_timers;
    use crate::{Output, PoisonPolicy};
    use std::sync::Arc;

    struct CountSum;
    impl Aggregator for CountSum {
        type Value = i64;
        type Agg = (u64, i64);
        fn init(&self) -> (u64, i64) {
            (0, 0)
        }
        fn add(&self, agg: &mut (u64, i64), v: &i64) {
            agg.0 += 1;
            agg.1 += v;
        }
        fn merge(&self, a: (u64, i64), b: (u64, i64)) -> (u64, i64) {
            (a.0 + b.0, a.1 + b.1)
        }
    }

    fn record(offset: i64, ts: i64) -> Record {
        Record {
            topic: Arc::from("in"),
            partition: 0,
            offset,
            timestamp_ms: Some(ts),
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    /// A closed window: key, start, end, count, sum.
    type Closed = (String, i64, i64, u64, i64);

    /// A window `add` updated (on update): start, count, sum.
    type Updated = (i64, u64, i64);

    /// Drives an aggregation as the runtime would: records in order, stream time carried
    /// between calls, due event-time timers fired after each record. Returns the closed
    /// windows, in order, how many records were late, and how many rows are left (one per
    /// open window).
    fn run(
        agg: &WindowedAggregation<CountSum>,
        input: &[(&str, i64, i64)],
    ) -> (Vec<Closed>, u64, usize) {
        let (closed, late, open, _) = run_with_updates(agg, input);
        (closed, late, open)
    }

    /// [`run`], and per record what `add` returned in [`Emit::OnUpdate`] mode: each updated
    /// window's (start, count, sum).
    fn run_with_updates(
        agg: &WindowedAggregation<CountSum>,
        input: &[(&str, i64, i64)],
    ) -> (Vec<Closed>, u64, usize, Vec<Vec<Updated>>) {
        let mut updates = Vec::new();
        let mut state = MemoryState::default();
        let poison = PoisonHandling {
            policy: PoisonPolicy::Fail,
            dead_letter_topic: None,
            application_id: "t".into(),
        };
        let mut tally = PoisonTally::default();
        let mut outputs: Vec<Output> = Vec::new();
        let mut stream_time = None;
        let mut closed = Vec::new();
        for (i, (key, ts, v)) in input.iter().enumerate() {
            let r = record(i as i64, *ts);
            let mut ctx = Context::new(&mut outputs, &poison, &mut tally)
                .with_state(&mut state)
                .with_time(stream_time, true);
            if let Added::Updated(u) = agg.add(&mut ctx, &r, key.as_bytes(), v).unwrap() {
                updates.push(u.iter().map(|w| (w.start, w.agg.0, w.agg.1)).collect());
            }
            stream_time = ctx.stream_time();
            let now = stream_time.unwrap();
            for timer in due_timers(&mut state, TimeDomain::EventTime, now, usize::MAX).unwrap() {
                crate::time::remove_timer(&mut state, &timer).unwrap();
                let mut ctx = Context::new(&mut outputs, &poison, &mut tally)
                    .with_state(&mut state)
                    .with_time(stream_time, true);
                if let Some(w) = agg.on_timer(&mut ctx, &timer).unwrap() {
                    closed.push((
                        String::from_utf8(w.key).unwrap(),
                        w.start,
                        w.end,
                        w.agg.0,
                        w.agg.1,
                    ));
                }
            }
        }
        (closed, tally.late, state.entries(&agg.store).len(), updates)
    }

    #[test]
    fn tumbling_windows_close_once_at_end_plus_grace_and_late_records_are_dropped() {
        let agg = WindowedAggregation::new(
            "w",
            WindowSpec::tumbling(10).grace(5),
            Emit::OnClose,
            CountSum,
        );
        let (closed, late, open) = run(
            &agg,
            &[
                ("a", 1, 1),
                ("a", 9, 2),
                ("b", 12, 10),
                ("a", 8, 4),   // out of order, within grace: counted in [0, 10)
                ("a", 15, 1),  // stream time 15 = 10 + 5: [0, 10) closes after this record
                ("a", 3, 100), // late: [0, 10) closed
                ("b", 30, 1),  // closes [10, 20)
            ],
        );
        assert_eq!(
            closed,
            vec![
                ("a".into(), 0, 10, 3, 7),
                ("a".into(), 10, 20, 1, 1),
                ("b".into(), 10, 20, 1, 10),
            ]
        );
        assert_eq!(late, 1);
        assert_eq!(open, 1, "only b's [30, 40) is left in the store");
    }

    #[test]
    fn hopping_windows_count_a_record_in_each_window_it_falls_in() {
        let spec = WindowSpec::hopping(10, 5);
        assert_eq!(spec.windows_of(12), Some(vec![(10, 20), (5, 15)]));
        assert_eq!(spec.windows_of(-1), Some(vec![(-5, 5), (-10, 0)]));
        let agg = WindowedAggregation::new("w", spec, Emit::OnClose, CountSum);
        let (closed, late, open) = run(&agg, &[("k", 7, 1), ("k", 12, 2), ("k", 40, 0)]);
        assert_eq!(
            closed,
            vec![
                ("k".into(), 0, 10, 1, 1),
                ("k".into(), 5, 15, 2, 3),
                ("k".into(), 10, 20, 1, 2),
            ]
        );
        assert_eq!(late, 0);
        assert_eq!(open, 2, "[35, 45) and [40, 50) are open");
    }

    #[test]
    fn a_late_but_within_grace_record_bridges_two_sessions_into_one() {
        let agg = WindowedAggregation::new(
            "s",
            WindowSpec::session(10).grace(20),
            Emit::OnClose,
            CountSum,
        );
        let (closed, late, open) = run(
            &agg,
            &[
                ("u", 0, 1),  // session [0, 10)
                ("u", 25, 2), // session [25, 35)
                ("u", 14, 4), // [14, 24) overlaps neither: a session of its own
                ("u", 9, 8),  // [9, 19) bridges [0, 10) and [14, 24): [0, 24)
                ("u", 100, 0),
            ],
        );
        assert_eq!(
            closed,
            vec![("u".into(), 0, 24, 3, 13), ("u".into(), 25, 35, 1, 2)]
        );
        assert_eq!(late, 0);
        assert_eq!(open, 1, "[100, 110) is open");
        // Once a session has closed, a record that would have joined it is late.
        let (_, late, _) = run(&agg, &[("u", 0, 1), ("u", 100, 0), ("u", 5, 1)]);
        assert_eq!(late, 1);
    }

    /// Sliding windows from their definition, from scratch: a record at `t` is accepted unless
    /// `t + size + 1 + grace <= stream time` before it; the windows of a key are `[r - size, r]`
    /// per accepted record `r` and `[p + 1, p + 1 + size]` per accepted `p` with an accepted
    /// record inside; a window closes at `end + grace` (end = start + size + 1), and holds the
    /// accepted records inside it that arrived before it closed (it exists if the records that
    /// define it did too).
    fn sliding_oracle(size: i64, grace: i64, input: &[(&str, i64, i64)]) -> (Vec<Closed>, u64) {
        let mut st: Option<i64> = None;
        let mut late = 0;
        let mut accepted: Vec<(&str, i64, i64, Option<i64>)> = Vec::new();
        for &(k, t, v) in input {
            if st.is_some_and(|s| t + size + 1 + grace <= s) {
                late += 1;
            } else {
                accepted.push((k, t, v, st));
            }
            st = Some(st.map_or(t, |s| s.max(t)));
        }
        let final_st = st.unwrap_or(i64::MIN);
        let mut closed = std::collections::BTreeSet::new();
        for &(key, ..) in &accepted {
            let mine: Vec<_> = accepted.iter().filter(|r| r.0 == key).collect();
            let starts: std::collections::BTreeSet<i64> =
                mine.iter().flat_map(|r| [r.1 - size, r.1 + 1]).collect();
            for s in starts {
                let (end, close) = (s + size + 1, s + size + 1 + grace);
                if final_st < close {
                    continue;
                }
                let before: Vec<_> = mine
                    .iter()
                    .filter(|r| r.3.is_none_or(|b| b < close))
                    .collect();
                let inside: Vec<_> = before.iter().filter(|r| s <= r.1 && r.1 < end).collect();
                let exists = before.iter().any(|r| r.1 - size == s)
                    || (before.iter().any(|p| p.1 + 1 == s) && !inside.is_empty());
                if exists {
                    let sum = inside.iter().map(|r| r.2).sum();
                    closed.insert((key.to_string(), s, end, inside.len() as u64, sum));
                }
            }
        }
        (closed.into_iter().collect(), late)
    }

    #[test]
    fn sliding_windows_hold_every_set_of_records_no_more_than_size_apart() {
        let agg = WindowedAggregation::new("w", WindowSpec::sliding(10), Emit::OnClose, CountSum);
        let (closed, late, _) = run(&agg, &[("k", 5, 1), ("k", 12, 2), ("k", 40, 0)]);
        // [-5, 5] {5}; [2, 12] {5, 12}; [6, 16] {12} (after 5); [13, 23] is empty (not a window).
        assert_eq!(
            closed,
            vec![
                ("k".into(), -5, 6, 1, 1),
                ("k".into(), 2, 13, 2, 3),
                ("k".into(), 6, 17, 1, 2),
            ]
        );
        assert_eq!(late, 0);
        // On update: every window the record changes or makes.
        let agg = WindowedAggregation::new("w", WindowSpec::sliding(10), Emit::OnUpdate, CountSum);
        let (_, _, _, updates) = run_with_updates(&agg, &[("k", 5, 1), ("k", 12, 2)]);
        assert_eq!(updates, vec![vec![(-5, 1, 1)], vec![(2, 2, 3), (6, 1, 2)]]);
    }

    #[test]
    fn sliding_windows_match_their_definition_out_of_order_and_late() {
        // A small LCG: deterministic, no dependency.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: i64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) % n as u64) as i64
        };
        for round in 0..40 {
            let (size, grace) = (1 + next(12), next(8));
            let mut input = Vec::new();
            let mut now = 0;
            for _ in 0..120 {
                now += next(4);
                let t = now - next(size + grace + 6); // out of order; some late
                let key = ["a", "b"][next(2) as usize];
                input.push((key, t, next(100) - 50));
            }
            let agg = WindowedAggregation::new(
                "w",
                WindowSpec::sliding(size).grace(grace),
                Emit::OnClose,
                CountSum,
            );
            let (mut closed, late, _) = run(&agg, &input);
            let emitted = closed.len();
            closed.sort();
            closed.dedup();
            assert_eq!(
                closed.len(),
                emitted,
                "round {round}: a window emitted twice"
            );
            let (expected, expected_late) = sliding_oracle(size, grace, &input);
            assert_eq!(
                (closed, late),
                (expected, expected_late),
                "round {round}: size {size}, grace {grace}, input {input:?}"
            );
        }
    }

    #[test]
    fn window_keys_keep_a_keys_windows_together_in_start_order() {
        let mut keys = [
            window_key(b"ab", 5),
            window_key(b"a", 7),
            window_key(b"a", -3),
            window_key(b"b", 0),
        ];
        keys.sort();
        let decoded: Vec<(Vec<u8>, i64)> = keys
            .iter()
            .map(|k| {
                let (key, s) = split_window_key(k).unwrap();
                (key.to_vec(), s)
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                (b"a".to_vec(), -3),
                (b"a".to_vec(), 7),
                (b"b".to_vec(), 0),
                (b"ab".to_vec(), 5)
            ]
        );
    }
}
