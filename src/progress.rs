//! Progress bars for state restores, for applications run from a terminal.
//!
//! ```no_run
//! # use weir::{App, Config};
//! # fn demo(config: Config) {
//! let app = App::new(config).on_restore_progress(weir::progress::restore_bars());
//! # }
//! ```
//!
//! One bar per store and task, drawn on standard error while the changelog is read back. When
//! standard error is not a terminal nothing is drawn (the restore is still logged, and exported
//! as the `weir_restore_remaining_records` gauge).

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_core::RestoreProgress;

/// An observer for [`App::on_restore_progress`](crate::App::on_restore_progress) that draws one
/// progress bar per restoring store and task on standard error.
pub fn restore_bars() -> impl Fn(&RestoreProgress) + Send + Sync + 'static {
    let bars = RestoreBars::new(ProgressDrawTarget::stderr());
    move |p: &RestoreProgress| bars.observe(p)
}

/// The bars of the restores in progress.
#[derive(Debug)]
pub struct RestoreBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, i32), ProgressBar>>,
}

impl RestoreBars {
    /// Bars drawn to `target` (`ProgressDrawTarget::stderr()` for a terminal).
    pub fn new(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Updates (or starts, or finishes) the bar of `p`'s store and task.
    pub fn observe(&self, p: &RestoreProgress) {
        let mut bars = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (p.store.clone(), p.task);
        let bar = bars.entry(key.clone()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(p.total()));
            bar.set_style(
                ProgressStyle::with_template(
                    "restoring {prefix} {bar:30.green/white} {pos}/{len} changelog offsets, {per_sec}, eta {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_prefix(format!("{} task {}", p.store, p.task));
            bar
        });
        bar.set_position(p.total() - p.remaining());
        if p.finished {
            bar.finish_with_message(format!("done: {} records applied", p.restored));
            bars.remove(&key);
        }
    }

    /// Runs `f` (e.g. a `println!`) with the bars cleared, then draws them again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    /// The positions of the bars of unfinished restores, by store and task.
    pub fn active(&self) -> Vec<((String, i32), u64)> {
        let bars = self
            .bars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut active: Vec<_> = bars
            .iter()
            .map(|(k, b)| (k.clone(), b.position()))
            .collect();
        active.sort();
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(task: i32, position: i64, restored: u64, finished: bool) -> RestoreProgress {
        RestoreProgress {
            store: "totals".into(),
            task,
            changelog_topic: "app-totals-changelog".into(),
            from: 100,
            end: 1_100,
            position,
            restored,
            finished,
        }
    }

    #[test]
    fn one_bar_per_task_follows_its_restore_to_the_end() {
        let bars = RestoreBars::new(ProgressDrawTarget::hidden());
        let key = |t: i32| ("totals".to_string(), t);
        bars.observe(&at(2, 100, 0, false));
        bars.observe(&at(0, 100, 0, false));
        bars.observe(&at(2, 600, 500, false));
        assert_eq!(bars.active(), vec![(key(0), 0), (key(2), 500)]);
        bars.observe(&at(2, 1_100, 1_000, true));
        assert_eq!(bars.active(), vec![(key(0), 0)]);
        // A later restore of the same task (after a rebalance) gets a new bar.
        bars.observe(&at(2, 100, 0, false));
        assert_eq!(bars.active(), vec![(key(0), 0), (key(2), 0)]);
        assert_eq!(at(2, 600, 500, false).remaining(), 500);
        assert_eq!(at(2, 600, 500, false).total(), 1_000);
    }
}
