//! What weir writes in the metadata of a committed offset, and reads back at recovery.
//!
//! `weir:seq=N` — the sequence number of the state commit of this task that these offsets
//! belong to (recovery asks Kafka "did commit N happen?"). `;reset=ID` — the state generation:
//! written by `weir offsets reset --reset-state` (with `seq=0`) and carried in every later
//! commit, so an instance whose local state is of another generation wipes it instead of
//! trusting it.

const PREFIX: &str = "weir:seq=";
const RESET: &str = ";reset=";

/// The marks of one committed offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The state commit's sequence number.
    pub seq: Option<u64>,
    /// The state generation set by a state-aware offset reset.
    pub reset: Option<u64>,
}

impl Marks {
    /// Parses offset metadata; anything weir did not write has no marks.
    pub fn parse(metadata: &str) -> Self {
        let Some(rest) = metadata.strip_prefix(PREFIX) else {
            return Self::default();
        };
        let (seq, reset) = match rest.split_once(RESET) {
            Some((seq, reset)) => (seq, reset.parse().ok()),
            None => (rest, None),
        };
        Self {
            seq: seq.parse().ok(),
            reset,
        }
    }

    /// The metadata string.
    pub fn format(seq: u64, reset: Option<u64>) -> String {
        match reset {
            Some(id) => format!("{PREFIX}{seq}{RESET}{id}"),
            None => format!("{PREFIX}{seq}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_foreign_metadata_has_none() {
        for (seq, reset) in [
            (0, None),
            (7, None),
            (0, Some(1_764_000_000_000)),
            (12, Some(3)),
        ] {
            let m = Marks::parse(&Marks::format(seq, reset));
            assert_eq!(
                m,
                Marks {
                    seq: Some(seq),
                    reset
                }
            );
        }
        assert_eq!(Marks::parse(""), Marks::default());
        assert_eq!(
            Marks::parse("set by kafka-consumer-groups"),
            Marks::default()
        );
        assert_eq!(Marks::parse("weir:seq=x").seq, None);
    }
}
