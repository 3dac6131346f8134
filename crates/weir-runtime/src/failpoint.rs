//! Named failpoints at each step of the commit cycle, for the failure tests: `WEIR_FAILPOINT`
//! crashes the process at a step, `WEIR_FAILPOINT_ERROR` makes a step fail. A leaf.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Crashes the process at a named step of the commit cycle when `WEIR_FAILPOINT` names it
/// (`name`, or `name:N` for the N-th time the step is reached). Steps: `after_produce`,
/// `after_send_offsets`, `after_prepare`, `after_commit_transaction`, `after_apply`.
/// Without the variable this is one atomic load.
pub(crate) fn failpoint(name: &str) {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    if reached("WEIR_FAILPOINT", &SPEC, &HITS, name) {
        eprintln!("weir: failpoint {name} reached: crashing now (WEIR_FAILPOINT)");
        std::process::abort();
    }
}

/// Whether a named step should fail (not crash) this time: `WEIR_FAILPOINT_ERROR`, with the
/// same `name` or `name:N` syntax as [`failpoint`]. Steps: `background_commit` (a commit
/// overlapping the next transaction fails as if its flush had timed out), `prepare` (a
/// prepare's synced write, once done, reports a failure).
pub(crate) fn failpoint_error(name: &str) -> bool {
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let fail = reached("WEIR_FAILPOINT_ERROR", &SPEC, &HITS, name);
    if fail {
        eprintln!("weir: failpoint {name} reached: failing it (WEIR_FAILPOINT_ERROR)");
    }
    fail
}

fn reached(
    var: &str,
    spec: &OnceLock<Option<(String, u64)>>,
    hits: &AtomicU64,
    name: &str,
) -> bool {
    let spec = spec.get_or_init(|| {
        let v = std::env::var(var).ok()?;
        let (n, count) = v.split_once(':').unwrap_or((&v, "1"));
        Some((n.to_string(), count.parse().unwrap_or(1)))
    });
    matches!(spec, Some((n, at)) if n == name && hits.fetch_add(1, Ordering::SeqCst) + 1 == *at)
}
