//! Offset reset plans: what each mode of `weir offsets reset` moves each partition to, clamped
//! to the valid range as Kafka does. Pure functions of what the cluster reported.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;

/// Where to move a group's offsets (the modes of `kafka-consumer-groups.sh --reset-offsets`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Earliest,
    Latest,
    /// The first offset with a timestamp at or after this time (ms since the epoch).
    Datetime(i64),
    /// `Datetime(now - duration)`.
    ByDuration(i64),
    ShiftBy(i64),
    ToOffset(i64),
    Current,
    /// Offsets from a CSV file (`topic,partition,offset` per line, as `--export` writes).
    FromFile(BTreeMap<(String, i32), i64>),
}

/// What the cluster says about one partition in scope.
#[derive(Clone, Debug, Default)]
pub struct PartitionFacts {
    pub committed: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
    /// For the time modes: the first offset at or after the time (`None`: no such record).
    pub for_time: Option<i64>,
}

/// One line of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    pub current: Option<i64>,
    pub new: i64,
    /// Why the target was changed from what the mode asked, if it was.
    pub clamped: Option<String>,
}

/// Computes the plan for `facts` (by topic and partition).
pub fn plan(
    mode: &Mode,
    facts: &BTreeMap<(String, i32), PartitionFacts>,
) -> anyhow::Result<Vec<Move>> {
    let mut moves = Vec::new();
    for ((topic, partition), f) in facts {
        let wanted = match mode {
            Mode::Earliest => f.log_start,
            Mode::Latest => f.log_end,
            Mode::Datetime(_) | Mode::ByDuration(_) => f.for_time.unwrap_or(f.log_end),
            Mode::ShiftBy(n) => match f.committed {
                Some(c) => c.saturating_add(*n),
                None => bail!(
                    "{topic}/{partition} has no committed offset to shift from; use \
                     --to-earliest, --to-latest or --to-offset for it"
                ),
            },
            Mode::ToOffset(o) => *o,
            Mode::Current => match f.committed {
                Some(c) => c,
                None => bail!(
                    "{topic}/{partition} has no committed offset; --to-current needs one \
                     (use --to-earliest or --to-latest)"
                ),
            },
            Mode::FromFile(offsets) => match offsets.get(&(topic.clone(), *partition)) {
                Some(o) => *o,
                None => continue,
            },
        };
        let new = wanted.clamp(f.log_start, f.log_end.max(f.log_start));
        let clamped = (new != wanted).then(|| {
            format!(
                "offset {wanted} is out of range [{}, {}] of {topic}/{partition}; using {new}",
                f.log_start, f.log_end
            )
        });
        moves.push(Move {
            topic: topic.clone(),
            partition: *partition,
            current: f.committed,
            new,
            clamped,
        });
    }
    Ok(moves)
}

/// Parses a CSV plan: `topic,partition,offset` per line (blank lines and `#` comments skipped).
pub fn parse_csv(text: &str, file: &str) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            anyhow!(
                "{file}:{}: expected `topic,partition,offset`, got {line:?}",
                n + 1
            )
        };
        let mut parts = line.rsplitn(3, ',');
        let offset = parts.next().ok_or_else(bad)?.trim();
        let partition = parts.next().ok_or_else(bad)?.trim();
        let topic = parts.next().ok_or_else(bad)?.trim();
        let offset: i64 = offset.parse().map_err(|_| bad())?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        if topic.is_empty() || partition < 0 || offset < 0 {
            return Err(bad());
        }
        out.insert((topic.to_string(), partition), offset);
    }
    if out.is_empty() {
        bail!("{file} holds no `topic,partition,offset` line");
    }
    Ok(out)
}

/// The CSV of a plan (what `--export` prints and `--from-file` reads).
pub fn to_csv(moves: &[Move]) -> String {
    moves
        .iter()
        .map(|m| format!("{},{},{}\n", m.topic, m.partition, m.new))
        .collect()
}

/// Parses a `--to-datetime` value like Kafka does: `YYYY-MM-DDTHH:mm:SS[.sss]` with an optional
/// zone (`Z`, `+01:00`); without a zone, local time. Returns ms since the epoch.
pub fn parse_datetime(text: &str) -> anyhow::Result<i64> {
    use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Ok(dt.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
        if let Ok(dt) = DateTime::parse_from_str(text, format) {
            return Ok(dt.timestamp_millis());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|dt| dt.timestamp_millis())
                .with_context(|| format!("{text:?} does not exist in the local time zone"));
        }
    }
    bail!(
        "invalid --to-datetime {text:?}: expected YYYY-MM-DDTHH:mm:SS[.sss][zone], e.g. \
         2026-11-26T09:30:00 (local time) or 2026-11-26T09:30:00.000+01:00 or ...Z"
    )
}

/// Parses a `--by-duration` ISO-8601 duration like Kafka does: `PnDTnHnMnS` (e.g. `PT15M`,
/// `P1DT12H`, `PT0.5S`). Returns milliseconds.
pub fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let bad = || {
        anyhow!(
            "invalid --by-duration {text:?}: expected an ISO-8601 duration PnDTnHnMnS, e.g. \
             PT15M (15 minutes), P1DT12H (a day and a half), PT30S"
        )
    };
    let rest = text.strip_prefix('P').ok_or_else(bad)?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut ms = 0f64;
    let mut seen = false;
    for (part, units) in [
        (days, &[('D', 86_400_000f64)][..]),
        (
            time,
            &[('H', 3_600_000f64), ('M', 60_000f64), ('S', 1_000f64)][..],
        ),
    ] {
        let mut number = String::new();
        let mut units = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let (_, scale) = units.by_ref().find(|(u, _)| *u == c).ok_or_else(bad)?;
            let n: f64 = number.parse().map_err(|_| bad())?;
            ms += n * scale;
            number.clear();
            seen = true;
        }
        if !number.is_empty() {
            return Err(bad());
        }
    }
    if !seen || (rest.contains('T') && time.is_empty()) {
        return Err(bad());
    }
    Ok(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(committed: Option<i64>, start: i64, end: i64, at: Option<i64>) -> PartitionFacts {
        PartitionFacts {
            committed,
            log_start: start,
            log_end: end,
            for_time: at,
        }
    }

    fn one(mode: &Mode, f: PartitionFacts) -> anyhow::Result<Move> {
        let facts = [(("t".to_string(), 0), f)].into();
        Ok(plan(mode, &facts)?.remove(0))
    }

    #[test]
    fn each_mode_targets_what_kafka_would() {
        let f = || facts(Some(50), 10, 100, Some(70));
        assert_eq!(one(&Mode::Earliest, f()).unwrap().new, 10);
        assert_eq!(one(&Mode::Latest, f()).unwrap().new, 100);
        assert_eq!(one(&Mode::Datetime(1), f()).unwrap().new, 70);
        assert_eq!(
            one(&Mode::ByDuration(1), facts(Some(50), 10, 100, None))
                .unwrap()
                .new,
            100
        );
        assert_eq!(one(&Mode::ShiftBy(-5), f()).unwrap().new, 45);
        assert_eq!(one(&Mode::ToOffset(60), f()).unwrap().new, 60);
        assert_eq!(one(&Mode::Current, f()).unwrap().new, 50);
        let file = Mode::FromFile([(("t".to_string(), 0), 33)].into());
        assert_eq!(one(&file, f()).unwrap().new, 33);
    }

    #[test]
    fn out_of_range_targets_are_clamped_with_a_warning() {
        let m = one(&Mode::ShiftBy(-100), facts(Some(50), 10, 100, None)).unwrap();
        assert_eq!(m.new, 10);
        assert!(m
            .clamped
            .unwrap()
            .contains("offset -50 is out of range [10, 100]"));
        let m = one(&Mode::ToOffset(500), facts(None, 10, 100, None)).unwrap();
        assert_eq!((m.new, m.current), (100, None));
        assert!(one(&Mode::ToOffset(20), facts(None, 10, 100, None))
            .unwrap()
            .clamped
            .is_none());
    }

    #[test]
    fn modes_that_need_a_committed_offset_say_so() {
        let e = one(&Mode::ShiftBy(1), facts(None, 0, 9, None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("t/0 has no committed offset to shift from"),
            "{e}"
        );
        assert!(one(&Mode::Current, facts(None, 0, 9, None)).is_err());
    }

    #[test]
    fn csv_round_trips_and_bad_lines_are_named() {
        let moves = vec![Move {
            topic: "a,b".into(),
            partition: 3,
            current: None,
            new: 7,
            clamped: None,
        }];
        let parsed = parse_csv(&to_csv(&moves), "plan.csv").unwrap();
        assert_eq!(parsed, [(("a,b".to_string(), 3), 7)].into());
        let e = parse_csv("t,0,5\n\nt,x,5\n", "plan.csv").unwrap_err();
        assert!(e.to_string().starts_with("plan.csv:3: expected"), "{e}");
        assert!(parse_csv("# nothing\n", "p").is_err());
    }

    #[test]
    fn datetimes_and_durations_parse_like_kafka() {
        assert_eq!(parse_datetime("1970-01-01T00:00:01Z").unwrap(), 1_000);
        assert_eq!(
            parse_datetime("1970-01-01T01:00:01.500+01:00").unwrap(),
            1_500
        );
        assert!(parse_datetime("2026-11-26T09:30:00").is_ok());
        let e = parse_datetime("yesterday").unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid --to-datetime \"yesterday\""),
            "{e}"
        );
        assert_eq!(parse_duration("PT15M").unwrap(), 900_000);
        assert_eq!(parse_duration("P1DT12H").unwrap(), 129_600_000);
        assert_eq!(parse_duration("PT0.5S").unwrap(), 500);
        assert_eq!(parse_duration("P2D").unwrap(), 172_800_000);
        for bad in ["15m", "P", "PT", "PT5", "P1H", "PTxS"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
