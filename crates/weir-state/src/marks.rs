//! What weir writes in the metadata of a committed offset, and reads back at recovery:
//! `weir:` followed by `;`-separated marks, each `name=value`.
//!
//! - `seq=N` — the sequence number of the state commit of this task that these offsets belong
//!   to (recovery asks Kafka "did commit N happen?").
//! - `reset=ID` — the state generation: written by `weir offsets reset --reset-state` (with
//!   `seq=0`) and carried in every later commit, so an instance whose local state is of another
//!   generation wipes it instead of trusting it.
//! - `t=MS` — the partition's time: the largest record timestamp processed up to this offset
//!   (the task's stream time is the largest of its partitions'; see `weir_core::time`).
//!
//! Marks weir does not know are ignored, so older and newer versions read each other's.

const PREFIX: &str = "weir:";

/// The marks of one committed offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The state commit's sequence number.
    pub seq: Option<u64>,
    /// The state generation set by a state-aware offset reset.
    pub reset: Option<u64>,
    /// The partition's time, in milliseconds.
    pub time: Option<i64>,
}

impl Marks {
    /// Parses offset metadata; anything weir did not write has no marks.
    pub fn parse(metadata: &str) -> Self {
        let mut marks = Self::default();
        let Some(rest) = metadata.strip_prefix(PREFIX) else {
            return marks;
        };
        for mark in rest.split(';') {
            match mark.split_once('=') {
                Some(("seq", v)) => marks.seq = v.parse().ok(),
                Some(("reset", v)) => marks.reset = v.parse().ok(),
                Some(("t", v)) => marks.time = v.parse().ok(),
                _ => {}
            }
        }
        marks
    }

    /// The metadata string of a state commit.
    pub fn format(seq: u64, reset: Option<u64>) -> String {
        Self {
            seq: Some(seq),
            reset,
            time: None,
        }
        .encode()
    }

    /// The metadata string; empty when there is no mark.
    pub fn encode(&self) -> String {
        let marks: Vec<String> = [
            self.seq.map(|s| format!("seq={s}")),
            self.reset.map(|r| format!("reset={r}")),
            self.time.map(|t| format!("t={t}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if marks.is_empty() {
            String::new()
        } else {
            format!("{PREFIX}{}", marks.join(";"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_foreign_metadata_has_none() {
        for (seq, reset, time) in [
            (Some(0), None, None),
            (Some(7), None, Some(-3)),
            (Some(0), Some(1_764_000_000_000), None),
            (Some(12), Some(3), Some(1_764_000_000_123)),
            (None, None, Some(5)),
        ] {
            let m = Marks { seq, reset, time };
            assert_eq!(Marks::parse(&m.encode()), m);
        }
        assert_eq!(Marks::default().encode(), "");
        // What earlier versions wrote.
        assert_eq!(
            Marks::parse("weir:seq=4;reset=9"),
            Marks {
                seq: Some(4),
                reset: Some(9),
                time: None
            }
        );
        assert_eq!(Marks::format(4, Some(9)), "weir:seq=4;reset=9");
        assert_eq!(Marks::parse(""), Marks::default());
        assert_eq!(
            Marks::parse("set by kafka-consumer-groups"),
            Marks::default()
        );
        assert_eq!(Marks::parse("weir:seq=x").seq, None);
        assert_eq!(Marks::parse("weir:seq=2;later=y").seq, Some(2));
    }
}
