//! weir-verify: the exactly-once verifier shared by weir-testkit (whose tests and examples use it
//! through `weir_testkit::{verify_copy, verify_totals, Report, ReadRecord}`) and the `weir verify`
//! command. It only compares records already read; reading them from Kafka is the caller's job
//! (weir-testkit's `Kafka::read_to_end`, the CLI's reader), helped by
//! `ReadRecord::from_message` with the `rdkafka` feature.
//!
//! It checks copy pipelines (`mirror`, [`verify_copy`]), the `totals` example
//! ([`verify_totals`]) and the `windows` example ([`verify_windows`]).
//!
//! Input records are identified by `(key, value)`, which test generators keep unique. The
//! verifier compares the input topic with the output topic, partition by partition, and names
//! every anomaly by class: duplicated records, lost records, records in the wrong partition,
//! partitions whose order differs from the input's, copies whose headers or timestamp differ
//! from their input's, wrong aggregates (`totals`), and what a `read_committed` reader saw
//! *during* a run ([`Report::check_live_read`]): aborted reads (records the final committed log
//! does not hold at that position), reads that went backwards (nonmonotonic), and committed
//! records it skipped over (poll-skip) — the anomaly classes of Jepsen's Kafka checker that a
//! single consumer can show.

mod record;

use std::collections::HashMap;
use std::fmt;

pub use record::ReadRecord;

type Id = (Option<Vec<u8>>, Option<Vec<u8>>);

fn id(r: &ReadRecord) -> Id {
    (r.key.clone(), r.value.clone())
}

fn show(r: &ReadRecord) -> String {
    format!(
        "{}={} (p{}@{})",
        r.key_text(),
        r.value_text(),
        r.partition,
        r.offset
    )
}

/// What the verifier found. [`is_exactly_once`](Report::is_exactly_once) is true when every
/// list is empty and the counts match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Input records.
    pub input: usize,
    /// Output records.
    pub output: usize,
    /// Output records seen more than once, with their count.
    pub duplicated: Vec<String>,
    /// Input records missing from the output.
    pub lost: Vec<String>,
    /// Output records that are not in the input at all.
    pub unexpected: Vec<String>,
    /// Output records in another partition than their input.
    pub misplaced: Vec<String>,
    /// Partitions whose output order differs from the input order: the first difference.
    pub reordered: Vec<String>,
    /// Outputs whose content is wrong (a `totals` aggregate that does not match the input).
    pub wrong: Vec<String>,
    /// Copies whose headers or timestamp differ from their input's.
    pub altered: Vec<String>,
    /// Records a `read_committed` reader saw during the run that are not in the committed log
    /// at that position: records of aborted (or never committed) transactions.
    pub aborted_reads: Vec<String>,
    /// Partitions where the live reader saw an offset at or below one it had already seen.
    pub nonmonotonic: Vec<String>,
    /// Committed records the live reader stepped over: it saw a later offset of their
    /// partition, or finished, without ever seeing them.
    pub skipped: Vec<String>,
    /// How many records the live reader saw (0 when there was none).
    pub live: usize,
}

impl Report {
    /// Whether the output is exactly the input, once each, in input order per partition.
    pub fn is_exactly_once(&self) -> bool {
        self.input == self.output
            && self.duplicated.is_empty()
            && self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.misplaced.is_empty()
            && self.reordered.is_empty()
            && self.wrong.is_empty()
            && self.altered.is_empty()
            && self.aborted_reads.is_empty()
            && self.nonmonotonic.is_empty()
            && self.skipped.is_empty()
    }

    /// Compares what a `read_committed` reader saw during the run (`live`) with the final
    /// `read_committed` read of the same topic (`committed`): every record seen live must be
    /// in the committed log at the same partition and offset, with the same key and value.
    /// Anything else was read from a transaction that did not commit. Per partition, its
    /// offsets must rise (else *nonmonotonic*), and it must have seen every committed record
    /// (else *poll-skip*): the reader reads every partition from the beginning to the end.
    pub fn check_live_read(&mut self, live: &[ReadRecord], committed: &[ReadRecord]) {
        let at: HashMap<(i32, i64), &ReadRecord> = committed
            .iter()
            .map(|r| ((r.partition, r.offset), r))
            .collect();
        self.live = live.len();
        let mut last: HashMap<i32, i64> = HashMap::new();
        let mut seen: std::collections::HashSet<(i32, i64)> = std::collections::HashSet::new();
        for r in live {
            if let Some(&prev) = last.get(&r.partition) {
                if r.offset <= prev {
                    self.nonmonotonic.push(format!(
                        "partition {}: offset {} read after offset {prev}",
                        r.partition, r.offset
                    ));
                }
            }
            last.insert(r.partition, r.offset);
            seen.insert((r.partition, r.offset));
            match at.get(&(r.partition, r.offset)) {
                Some(c) if id(c) == id(r) => {}
                Some(c) => self.aborted_reads.push(format!(
                    "{} seen live, but the committed log has {} there",
                    show(r),
                    show(c)
                )),
                None => self
                    .aborted_reads
                    .push(format!("{} seen live, not in the committed log", show(r))),
            }
        }
        for c in committed {
            if !seen.contains(&(c.partition, c.offset)) {
                let after = match last.get(&c.partition) {
                    Some(&l) if l > c.offset => format!("it read p{}@{l}", c.partition),
                    _ => "it finished".to_string(),
                };
                self.skipped
                    .push(format!("{} never seen live, though {after}", show(c)));
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} input records, {} output records ({} read live): {} duplicated, {} lost, {} unexpected, {} misplaced, {} partitions reordered, {} wrong, {} altered, {} aborted reads, {} nonmonotonic, {} skipped",
            self.input,
            self.output,
            self.live,
            self.duplicated.len(),
            self.lost.len(),
            self.unexpected.len(),
            self.misplaced.len(),
            self.reordered.len(),
            self.wrong.len(),
            self.altered.len(),
            self.aborted_reads.len(),
            self.nonmonotonic.len(),
            self.skipped.len()
        )?;
        for (name, list) in [
            ("duplicated", &self.duplicated),
            ("lost", &self.lost),
            ("unexpected", &self.unexpected),
            ("misplaced", &self.misplaced),
            ("reordered", &self.reordered),
            ("wrong", &self.wrong),
            ("altered", &self.altered),
            ("aborted read", &self.aborted_reads),
            ("nonmonotonic", &self.nonmonotonic),
            ("skipped", &self.skipped),
        ] {
            for item in list.iter().take(20) {
                writeln!(f, "  {name}: {item}")?;
            }
            if list.len() > 20 {
                writeln!(f, "  {name}: ... and {} more", list.len() - 20)?;
            }
        }
        Ok(())
    }
}

/// Compares a copy's output with its input (both read to the end in partition and offset order,
/// as weir-testkit's `Kafka::read_to_end` and `weir verify`'s reader return them).
pub fn verify_copy(input: &[ReadRecord], output: &[ReadRecord]) -> Report {
    let mut report = Report {
        input: input.len(),
        output: output.len(),
        ..Report::default()
    };
    let inputs: HashMap<Id, &ReadRecord> = input.iter().map(|r| (id(r), r)).collect();
    let mut seen: HashMap<Id, (usize, &ReadRecord)> = HashMap::new();
    for r in output {
        let e = seen.entry(id(r)).or_insert((0, r));
        e.0 += 1;
        match inputs.get(&id(r)) {
            None => report.unexpected.push(show(r)),
            Some(i) if i.partition != r.partition => {
                report
                    .misplaced
                    .push(format!("{} (input in p{})", show(r), i.partition));
            }
            Some(i) => {
                if i.headers != r.headers {
                    report.altered.push(format!(
                        "{}: headers {:?}, the input's {:?}",
                        show(r),
                        r.headers,
                        i.headers
                    ));
                } else if i.timestamp != r.timestamp {
                    report.altered.push(format!(
                        "{}: timestamp {:?}, the input's {:?}",
                        show(r),
                        r.timestamp,
                        i.timestamp
                    ));
                }
            }
        }
    }
    for (count, r) in seen.values() {
        if *count > 1 {
            report.duplicated.push(format!("{} x{count}", show(r)));
        }
    }
    for r in input {
        if !seen.contains_key(&id(r)) {
            report.lost.push(show(r));
        }
    }
    report.duplicated.sort();
    // Order: per partition, the first occurrences in the output must follow the input order.
    let mut by_partition: HashMap<i32, (Vec<&ReadRecord>, Vec<&ReadRecord>)> = HashMap::new();
    for r in input {
        by_partition.entry(r.partition).or_default().0.push(r);
    }
    let mut firsts: HashMap<Id, ()> = HashMap::new();
    for r in output {
        if firsts.insert(id(r), ()).is_none() && inputs.contains_key(&id(r)) {
            by_partition.entry(r.partition).or_default().1.push(r);
        }
    }
    let mut partitions: Vec<_> = by_partition.into_iter().collect();
    partitions.sort_by_key(|(p, _)| *p);
    for (p, (ins, outs)) in partitions {
        let ins: Vec<&ReadRecord> = ins
            .into_iter()
            .filter(|r| seen.contains_key(&id(r)))
            .collect();
        if let Some(i) = (0..ins.len().min(outs.len())).find(|&i| id(ins[i]) != id(outs[i])) {
            report.reordered.push(format!(
                "partition {p}: output #{i} is {} where the input has {}",
                show(outs[i]),
                show(ins[i])
            ));
        }
    }
    report
}

/// One `totals` output: key, count, sum, min, max.
type Aggregate = (String, u64, i128, i64, i64);

fn parse_totals(r: &ReadRecord) -> Option<Aggregate> {
    let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
    let sum = match &v["sum"] {
        serde_json::Value::Number(n) => n.to_string().parse().ok()?,
        _ => return None,
    };
    Some((
        v["key"].as_str()?.to_string(),
        v["count"].as_u64()?,
        sum,
        v["min"].as_i64()?,
        v["max"].as_i64()?,
    ))
}

/// Checks the output of the `totals` example: for every input record whose value parses as an
/// `i64`, exactly one output holding the running aggregate of its key up to and including it,
/// in its partition, in input order. Outputs are identified by `(key, count)`.
pub fn verify_totals(input: &[ReadRecord], output: &[ReadRecord]) -> Report {
    let mut running: HashMap<String, (u64, i128, i64, i64)> = HashMap::new();
    let mut expected: HashMap<(String, u64), (i32, Aggregate)> = HashMap::new();
    let mut order: HashMap<i32, Vec<(String, u64)>> = HashMap::new();
    for r in input {
        let Some(v) = r
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let key = r.key_text();
        let a = running
            .entry(key.clone())
            .and_modify(|(c, s, lo, hi)| {
                *c += 1;
                *s += i128::from(v);
                *lo = (*lo).min(v);
                *hi = (*hi).max(v);
            })
            .or_insert((1, v.into(), v, v));
        let agg = (key.clone(), a.0, a.1, a.2, a.3);
        expected.insert((key.clone(), a.0), (r.partition, agg));
        order.entry(r.partition).or_default().push((key, a.0));
    }
    let mut report = Report {
        input: expected.len(),
        output: output.len(),
        ..Report::default()
    };
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    let mut firsts: HashMap<i32, Vec<(String, u64)>> = HashMap::new();
    for r in output {
        let Some(agg) = parse_totals(r) else {
            report
                .unexpected
                .push(format!("{} (not a totals record)", show(r)));
            continue;
        };
        let id = (agg.0.clone(), agg.1);
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n == 2 {
            report.duplicated.push(format!(
                "{} count {} (p{}@{})",
                id.0, id.1, r.partition, r.offset
            ));
        }
        match expected.get(&id) {
            None => report.unexpected.push(show(r)),
            Some((p, want)) => {
                if *want != agg {
                    report.wrong.push(format!(
                        "{} at p{}@{}: got {agg:?}, expected {want:?}",
                        id.0, r.partition, r.offset
                    ));
                }
                if *p != r.partition {
                    report
                        .misplaced
                        .push(format!("{} (input in p{p})", show(r)));
                }
                if *n == 1 {
                    firsts.entry(r.partition).or_default().push(id);
                }
            }
        }
    }
    for (p, ids) in &order {
        for id in ids {
            if !seen.contains_key(id) {
                report.lost.push(format!("{} count {} (p{p})", id.0, id.1));
            }
        }
        let want: Vec<&(String, u64)> = ids.iter().filter(|id| seen.contains_key(*id)).collect();
        let got = firsts.get(p).map(Vec::as_slice).unwrap_or_default();
        if let Some(i) = (0..want.len().min(got.len())).find(|&i| *want[i] != got[i]) {
            report.reordered.push(format!(
                "partition {p}: output #{i} is {:?} where {:?} comes first",
                got[i], want[i]
            ));
        }
    }
    report.lost.sort();
    report
}

/// A window's result: count and sum.
pub type WindowTotals = (u64, i128);

/// What the `windows` example must emit for `input`, recomputed from it: per partition, in
/// offset order, stream time = the largest timestamp before the record; a record whose window
/// `[s, s + window)` has `s + window + grace <= stream time` is late (not counted); a window is
/// closed once the partition's final stream time reaches its end + grace. Returns the closed
/// windows, `(partition, key, start) -> (count, sum)`, the number of late records, and the
/// number of windows still open. Records whose value is not an integer, or without timestamp,
/// are left out (the example's poison policy).
pub fn expected_windows(
    input: &[ReadRecord],
    window_ms: i64,
    grace_ms: i64,
) -> (
    std::collections::BTreeMap<(i32, String, i64), WindowTotals>,
    u64,
    usize,
) {
    use std::collections::BTreeMap;
    let mut sorted: Vec<&ReadRecord> = input.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut windows: BTreeMap<(i32, String, i64), WindowTotals> = BTreeMap::new();
    let mut stream_time: HashMap<i32, i64> = HashMap::new();
    let mut late = 0;
    for r in sorted {
        let (Some(ts), Some(v)) = (
            r.timestamp,
            r.value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<i64>().ok()),
        ) else {
            continue;
        };
        let start = ts.div_euclid(window_ms) * window_ms;
        let before = stream_time.get(&r.partition).copied();
        if before.is_some_and(|st| start + window_ms + grace_ms <= st) {
            late += 1;
        } else {
            let w = windows
                .entry((r.partition, r.key_text(), start))
                .or_insert((0, 0));
            w.0 += 1;
            w.1 += i128::from(v);
        }
        stream_time.insert(r.partition, before.map_or(ts, |st| st.max(ts)));
    }
    let (closed, open): (BTreeMap<_, _>, BTreeMap<_, _>) =
        windows.into_iter().partition(|((p, _, start), _)| {
            stream_time
                .get(p)
                .is_some_and(|st| start + window_ms + grace_ms <= *st)
        });
    (closed, late, open.len())
}

/// Checks the output of the `windows` example (tumbling windows of `window_ms`, grace
/// `grace_ms`) against [`expected_windows`]: every closed window exactly once, in its input's
/// partition, with the exact count and sum; nothing else (no window of late records only, no
/// window still open). Outputs are identified by `(partition, key, start)`.
pub fn verify_windows(
    input: &[ReadRecord],
    output: &[ReadRecord],
    window_ms: i64,
    grace_ms: i64,
) -> Report {
    let (expected, _, _) = expected_windows(input, window_ms, grace_ms);
    let mut report = Report {
        input: expected.len(),
        output: output.len(),
        ..Report::default()
    };
    let mut seen: HashMap<(i32, String, i64), usize> = HashMap::new();
    for r in output {
        let parsed =
            serde_json::from_slice::<serde_json::Value>(r.value.as_deref().unwrap_or_default())
                .ok()
                .and_then(|v| {
                    Some((
                        v.get("key")?.as_str()?.to_string(),
                        v.get("start")?.as_i64()?,
                        v.get("end")?.as_i64()?,
                        v.get("count")?.as_u64()?,
                        // The sum may exceed i64 in JSON as an i128; read it as text.
                        v.get("sum")?.to_string().parse::<i128>().ok()?,
                    ))
                });
        let Some((key, start, end, count, sum)) = parsed else {
            report
                .unexpected
                .push(format!("{} (not a windows record)", show(r)));
            continue;
        };
        let id = (r.partition, key.clone(), start);
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n == 2 {
            report.duplicated.push(format!(
                "{key} [{start}, {end}) (p{}@{})",
                r.partition, r.offset
            ));
        }
        if r.key_text() != key || end != start + window_ms {
            report.wrong.push(format!(
                "{}: record key {:?}, window [{start}, {end}) of size {window_ms}",
                show(r),
                r.key_text()
            ));
        }
        match expected.get(&id) {
            Some(want) if *want == (count, sum) => {}
            Some(want) => report.wrong.push(format!(
                "{key} [{start}, {end}) in p{}: got count {count} sum {sum}, expected {want:?}",
                r.partition
            )),
            None => {
                let elsewhere = expected
                    .keys()
                    .find(|(_, k, s)| *k == key && *s == start)
                    .map(|(p, _, _)| *p);
                match elsewhere {
                    Some(p) => report
                        .misplaced
                        .push(format!("{} (its input is in p{p})", show(r))),
                    None => report.unexpected.push(format!(
                        "{key} [{start}, {end}) in p{}: no such closed window (open, or late records only)",
                        r.partition
                    )),
                }
            }
        }
    }
    for ((p, key, start), (count, sum)) in &expected {
        if !seen.contains_key(&(*p, key.clone(), *start)) {
            report.lost.push(format!(
                "{key} [{start}, {}) in p{p}: count {count} sum {sum}",
                start + window_ms
            ));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(p: i32, o: i64, v: &str) -> ReadRecord {
        ReadRecord {
            partition: p,
            offset: o,
            key: Some(b"k".to_vec()),
            value: Some(v.as_bytes().to_vec()),
            headers: vec![],
            // A timestamp that travels with the value, as a copy keeps it.
            timestamp: Some(v.bytes().map(i64::from).sum()),
        }
    }

    fn totals_rec(p: i32, o: i64, key: &str, value: &str) -> ReadRecord {
        ReadRecord {
            partition: p,
            offset: o,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![],
            timestamp: None,
        }
    }

    #[test]
    fn totals_verifier_recomputes_running_aggregates() {
        let input = vec![
            totals_rec(0, 0, "a", "5"),
            totals_rec(0, 1, "a", "-2"),
            totals_rec(0, 2, "a", "x"),
        ];
        let good = vec![
            totals_rec(
                0,
                0,
                "a",
                r#"{"key":"a","count":1,"sum":5,"min":5,"max":5}"#,
            ),
            totals_rec(
                0,
                1,
                "a",
                r#"{"key":"a","count":2,"sum":3,"min":-2,"max":5}"#,
            ),
        ];
        let r = verify_totals(&input, &good);
        assert!(r.is_exactly_once(), "{r}");
        let bad = vec![
            totals_rec(
                0,
                0,
                "a",
                r#"{"key":"a","count":1,"sum":5,"min":5,"max":5}"#,
            ),
            totals_rec(
                0,
                1,
                "a",
                r#"{"key":"a","count":1,"sum":5,"min":5,"max":5}"#,
            ),
            totals_rec(
                0,
                2,
                "a",
                r#"{"key":"a","count":2,"sum":4,"min":-2,"max":5}"#,
            ),
        ];
        let r = verify_totals(&input, &bad);
        assert_eq!(r.duplicated.len(), 1, "{r}");
        assert_eq!(r.wrong.len(), 1, "{r}");
        assert!(r.lost.is_empty(), "{r}");
    }

    #[test]
    fn live_reads_of_aborted_records_are_named() {
        let committed = vec![rec(0, 0, "a"), rec(0, 3, "b")];
        let mut r = verify_copy(&[rec(0, 0, "a"), rec(0, 1, "b")], &committed);
        r.check_live_read(&[rec(0, 0, "a"), rec(0, 3, "b")], &committed);
        assert!(r.is_exactly_once(), "{r}");
        // Offset 1 held "b" in an aborted transaction; offset 3 was later rewritten.
        r.check_live_read(
            &[rec(0, 0, "a"), rec(0, 1, "b"), rec(0, 3, "x")],
            &committed,
        );
        assert_eq!(r.aborted_reads.len(), 2, "{r}");
        assert!(!r.is_exactly_once());
        assert!(r.to_string().contains("aborted read: k=b (p0@1)"), "{r}");
    }

    #[test]
    fn live_reads_that_go_backwards_or_skip_are_named() {
        let committed = vec![
            rec(0, 0, "a"),
            rec(0, 1, "b"),
            rec(0, 2, "c"),
            rec(1, 0, "d"),
        ];
        let mut r = verify_copy(&committed, &committed);
        r.check_live_read(&committed, &committed);
        assert!(r.is_exactly_once(), "{r}");
        // p0: read 0, 2, then 1 again after 2 (backwards); p1 never read (skipped at the end).
        r.check_live_read(
            &[rec(0, 0, "a"), rec(0, 2, "c"), rec(0, 1, "b")],
            &committed,
        );
        assert_eq!(
            r.nonmonotonic,
            vec!["partition 0: offset 1 read after offset 2".to_string()],
            "{r}"
        );
        assert_eq!(r.skipped.len(), 1, "{r}");
        assert!(r.skipped[0].starts_with("k=d (p1@0)"), "{r}");
        // p0: 0 then 2, never 1: a poll-skip.
        let mut r = verify_copy(&committed, &committed);
        r.check_live_read(
            &[rec(0, 0, "a"), rec(0, 2, "c"), rec(1, 0, "d")],
            &committed,
        );
        assert_eq!(
            r.skipped,
            vec!["k=b (p0@1) never seen live, though it read p0@2".to_string()],
            "{r}"
        );
        assert!(!r.is_exactly_once());
    }

    #[test]
    fn copies_with_other_headers_or_timestamps_are_named() {
        let input = vec![rec(0, 0, "a"), rec(0, 1, "b")];
        let mut headers = rec(0, 0, "a");
        headers.headers = vec![("h".into(), Some(b"1".to_vec()))];
        let mut stamp = rec(0, 1, "b");
        stamp.timestamp = Some(7);
        let r = verify_copy(&input, &[headers, stamp]);
        assert_eq!(r.altered.len(), 2, "{r}");
        assert!(r.altered[0].contains("headers"), "{r}");
        assert!(r.altered[1].contains("timestamp Some(7)"), "{r}");
        assert!(!r.is_exactly_once());
    }

    #[test]
    fn clean_copy_passes() {
        let input = vec![rec(0, 0, "a"), rec(0, 1, "b"), rec(1, 0, "c")];
        let output = vec![rec(0, 5, "a"), rec(0, 7, "b"), rec(1, 3, "c")];
        let r = verify_copy(&input, &output);
        assert!(r.is_exactly_once(), "{r}");
    }

    #[test]
    fn names_duplicates_losses_misplacement_and_reordering() {
        let input = vec![
            rec(0, 0, "a"),
            rec(0, 1, "b"),
            rec(0, 2, "c"),
            rec(1, 0, "d"),
            rec(1, 1, "e"),
        ];
        let output = vec![
            rec(0, 0, "b"),
            rec(0, 1, "a"),
            rec(0, 2, "a"),
            rec(0, 3, "d"),
            rec(1, 0, "zz"),
        ];
        let r = verify_copy(&input, &output);
        assert!(!r.is_exactly_once());
        assert_eq!(r.duplicated, vec!["k=a (p0@1) x2".to_string()]);
        assert_eq!(
            r.lost,
            vec!["k=c (p0@2)".to_string(), "k=e (p1@1)".to_string()]
        );
        assert_eq!(r.unexpected, vec!["k=zz (p1@0)".to_string()]);
        assert_eq!(r.misplaced, vec!["k=d (p0@3) (input in p1)".to_string()]);
        assert_eq!(r.reordered.len(), 1, "{r}");
        assert!(
            r.reordered[0].starts_with("partition 0: output #0 is k=b"),
            "{r}"
        );
    }

    fn timed(p: i32, o: i64, key: &str, value: &str, ts: i64) -> ReadRecord {
        ReadRecord {
            timestamp: Some(ts),
            ..totals_rec(p, o, key, value)
        }
    }

    fn window(p: i32, o: i64, key: &str, start: i64, count: u64, sum: i64) -> ReadRecord {
        let json = format!(
            r#"{{"key":"{key}","start":{start},"end":{},"count":{count},"sum":{sum}}}"#,
            start + 10
        );
        totals_rec(p, o, key, &json)
    }

    #[test]
    fn windows_verifier_recomputes_closed_windows_and_names_every_anomaly() {
        // Windows of 10, grace 5.
        let input = vec![
            timed(0, 0, "a", "1", 1),
            timed(0, 1, "a", "2", 12),
            timed(0, 2, "a", "4", 8), // within grace: [0, 10) = 2 records, sum 5
            timed(0, 3, "b", "7", 16), // stream time 16: [0, 10) closes (10 + 5 <= 16)
            timed(0, 4, "b", "100", 3), // late: its only window [0, 10) has closed
            timed(0, 5, "z", "0", 40), // closes [10, 20); [40, 50) stays open
            timed(1, 0, "c", "9", 2), // p1: stream time 2, nothing closed
        ];
        let (closed, late, open) = expected_windows(&input, 10, 5);
        assert_eq!(late, 1);
        assert_eq!(open, 2, "[40, 50) of z in p0 and [0, 10) of c in p1");
        assert_eq!(closed.len(), 3, "{closed:?}");
        let good = vec![
            window(0, 0, "a", 0, 2, 5),
            window(0, 1, "a", 10, 1, 2),
            window(0, 2, "b", 10, 1, 7),
        ];
        let report = verify_windows(&input, &good, 10, 5);
        assert!(report.is_exactly_once(), "{report}");

        let bad = vec![
            window(0, 0, "a", 0, 2, 5),
            window(0, 1, "a", 0, 2, 5),   // duplicated
            window(0, 2, "a", 10, 1, 3),  // wrong sum
            window(0, 3, "b", 0, 1, 100), // the late record's window
            window(1, 0, "c", 0, 1, 9),   // still open
            window(1, 1, "b", 10, 1, 7),  // in another partition than its input
        ];
        let report = verify_windows(&input, &bad, 10, 5);
        assert_eq!(report.duplicated.len(), 1, "{report}");
        assert_eq!(report.wrong.len(), 1, "{report}");
        assert_eq!(report.unexpected.len(), 2, "{report}");
        assert_eq!(report.misplaced.len(), 1, "{report}");
        assert_eq!(
            report.lost.len(),
            1,
            "b [10, 20) in p0 is missing: {report}"
        );
        assert!(!report.is_exactly_once());
    }
}
