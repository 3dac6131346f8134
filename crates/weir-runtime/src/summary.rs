//! What a run did and where it waited: the run summary an application gets back, the waits
//! the processing loop counts, and why a commit happened. A leaf: it imports nothing of weir's.

use std::time::Duration;

/// What a run did, returned when it stops cleanly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Input records whose offsets were committed.
    pub records_in: u64,
    /// Output records committed.
    pub records_out: u64,
    /// Commits.
    pub commits: u64,
    /// Aborted transactions (or, in at_least_once, rewinds).
    pub aborts: u64,
    /// Of those, producers replaced after a fatal producer error (e.g. a transaction the
    /// coordinator aborted after `transaction.timeout.ms`).
    pub producer_replacements: u64,
    /// Times the group took partitions away without a revoke (`max.poll.interval.ms` or the
    /// session timeout passed): their open transaction aborted.
    pub assignments_lost: u64,
    /// Poison records skipped.
    pub skipped: u64,
    /// Poison records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Late records (`Context::late`): dropped, or dead-lettered.
    pub late: u64,
    /// Where the processing loop waited, in all (also exported as `weir_wait_seconds`).
    pub waited: Waits,
}

/// Where the processing loop spent its time waiting rather than working: the first place to
/// look when a pipeline is slower than expected. Input waits mean the pipeline keeps up with
/// what it is given; output waits mean Kafka takes the outputs slower than the operator makes
/// them (back-pressure: the producer's queue, `queue.buffering.max.kbytes`, is full); commit
/// waits are time lost to the commit cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waits {
    /// For the next batch of input: the poll running alongside processing had not finished.
    pub input: Duration,
    /// For room in the producer's queue to hand it more outputs.
    pub output: Duration,
    /// For commits: the previous transaction's background commit, the flush before an
    /// overlapped commit, or an in-line commit (`commit.overlap=false`, at_least_once).
    pub commit: Duration,
}

impl Waits {
    /// Their sum.
    pub fn total(&self) -> Duration {
        self.input + self.output + self.commit
    }
}

/// What the processing loop waited for (see [`crate::Waits`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Input,
    Output,
    Commit,
}

/// Why a commit happened: the `reason` label of `weir_commits_total`, and what decides whether
/// an overlapped commit may go on in the background (only an interval commit may).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitReason {
    /// The commit interval elapsed (or the state's uncommitted-bytes bound was reached).
    Interval,
    /// Partitions are being revoked: their offsets commit before they are released.
    Revoke,
    /// Partitions are being assigned to a stateful application: the open transaction commits
    /// before their restore starts, which may outlast `transaction.timeout.ms`.
    Assign,
    /// The application is shutting down.
    Shutdown,
}

impl CommitReason {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Revoke => "revoke",
            Self::Assign => "assign",
            Self::Shutdown => "shutdown",
        }
    }
}
