//! weir-runtime: the processing loop.
//!
//! It pulls batches from the input topics, runs the [`Processor`](weir_core::Processor), and
//! commits the outputs together with the input offsets — atomically in one Kafka transaction per
//! commit interval under `exactly_once`, or outputs-acknowledged-then-offsets under
//! `at_least_once`. Read `app.rs` (start-up, loop, shutdown), then `engine.rs` (the commit cycle
//! and error classes), then `rebalance.rs` (revoke, lost, assign) against DESIGN.md.

mod app;
mod engine;
mod error;
mod instance;
mod poll;
mod produce;
mod rebalance;
mod stateful;
mod telemetry;

pub use app::{App, RestoreObserver, RunSummary, Waits};
pub use error::RuntimeError;
