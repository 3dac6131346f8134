//! weir-runtime: the processing loop.
//!
//! It pulls batches from the input topics, runs the [`Processor`](weir_core::Processor), and
//! commits the outputs together with the input offsets — atomically in one Kafka transaction per
//! commit interval under `exactly_once`, or outputs-acknowledged-then-offsets under
//! `at_least_once`.
//!
//! Modules, leaves first; each imports only modules above it in this list (docs/architecture.md
//! has the map):
//!
//! | module | its job |
//! |---|---|
//! | `error` | [`RuntimeError`]: what failed, where, and what to do |
//! | `summary` | [`RunSummary`], [`Waits`], why a commit happened |
//! | `failpoint` | named crash and error points at each step of the commit cycle, for tests |
//! | `threads` | where blocking work runs: tokio's blocking pool, detached threads |
//! | `telemetry` | every event, one place: a `tracing` event and a metric |
//! | `stall` | when an instance cannot commit: the `stalled` / `resumed` log lines and the `weir_stalled` gauge |
//! | `instance` | the state directory's lock and the stable instance id |
//! | `producer` | weir's producer: produce without copies, delivery reports, drain |
//! | `txn` | transactional calls and the one policy per error class; creating producers |
//! | `rebalance` | the consumer's rebalance callbacks, driving a `RebalanceListener` |
//! | `poll` | one batch from the consumer, and what a poll must drop after a rewind |
//! | `changelog` | changelog topics: created and checked at start-up, read back in a restore |
//! | `engine` | process, assign, revoke, stop; `engine::commit` (the commit cycle, step by step, and the guarantee's mode) and `engine::recovery` (DESIGN.md's recovery table, case by case) |
//! | `app` | [`App`]: start-up checks, the main loop, graceful shutdown |
//!
//! Read `app.rs`, then `engine/commit.rs` and `engine/recovery.rs` against DESIGN.md.

mod app;
mod changelog;
mod engine;
mod error;
mod failpoint;
mod instance;
mod poll;
mod producer;
mod rebalance;
mod stall;
mod summary;
mod telemetry;
mod threads;
mod txn;

pub use app::App;
pub use changelog::RestoreObserver;
pub use error::RuntimeError;
pub use summary::{RunSummary, Waits};
