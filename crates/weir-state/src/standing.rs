//! How a task's local state stands against the group's committed offsets — the one
//! classification of DESIGN.md's recovery table, used by the runtime's recovery
//! ([`StateManager::recover`](crate::StateManager::recover)) and by `weir state inspect`.
//!
//! | case | local `R` vs committed `K` | at the next start |
//! |---|---|---|
//! | a pending entry | its sequence number and offsets committed in Kafka: [`pending_decided`] | rolled forward, else back |
//! | [`New`](Standing::New) | neither has an offset | `auto.offset.reset` |
//! | [`InStep`](Standing::InStep) | `R == K` | resume at `K`, no replay |
//! | [`Behind`](Standing::Behind) | `R < K`, or no `R` | restore the changelog tail, then `R = K` |
//! | [`Ahead`](Standing::Ahead) | `R > K`, or `R` without `K` | refuse, naming the way out |

use crate::Pending;

/// One input partition of a task: its local offset `R` against the group's committed `K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Neither has an offset: a new task.
    New,
    /// `R == K`.
    InStep,
    /// `R < K`, or no local offset: the state restores from its changelog.
    Behind,
    /// `R > K`, or a local offset with none committed: the offsets were moved back behind
    /// weir's back.
    Ahead,
}

/// Classifies one partition (see the module documentation).
pub fn standing(local: Option<i64>, committed: Option<i64>) -> Standing {
    match (local, committed) {
        (None, None) => Standing::New,
        (Some(r), Some(k)) if r == k => Standing::InStep,
        (None, Some(_)) => Standing::Behind,
        (Some(r), Some(k)) if r < k => Standing::Behind,
        _ => Standing::Ahead,
    }
}

/// Whether Kafka committed a pending entry's transaction: every one of its target offsets is
/// committed, carrying its sequence number. `committed(topic)` gives the committed offset and
/// sequence number of the task's partition of `topic`, if any.
pub fn pending_decided(
    pending: &Pending,
    committed: impl Fn(&str) -> Option<(i64, Option<u64>)>,
) -> bool {
    pending
        .offsets
        .iter()
        .all(|(topic, o)| committed(topic) == Some((*o, Some(pending.seq))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_of_the_recovery_table() {
        assert_eq!(standing(None, None), Standing::New);
        assert_eq!(standing(Some(5), Some(5)), Standing::InStep);
        assert_eq!(standing(None, Some(5)), Standing::Behind);
        assert_eq!(standing(Some(4), Some(5)), Standing::Behind);
        assert_eq!(standing(Some(6), Some(5)), Standing::Ahead);
        assert_eq!(standing(Some(6), None), Standing::Ahead);
    }

    #[test]
    fn a_pending_entry_is_decided_only_by_its_offsets_and_sequence_number() {
        let pending = Pending {
            seq: 7,
            offsets: [("a".to_string(), 10), ("b".to_string(), 3)].into(),
        };
        let all = |t: &str| match t {
            "a" => Some((10, Some(7))),
            "b" => Some((3, Some(7))),
            _ => None,
        };
        assert!(pending_decided(&pending, all));
        // The offsets moved but by another commit (sequence number 6): not this one.
        assert!(!pending_decided(&pending, |t| all(t).map(|(o, _)| (o, Some(6)))));
        // One partition not committed at all.
        assert!(!pending_decided(&pending, |t| (t == "a").then_some((10, Some(7)))));
    }
}
