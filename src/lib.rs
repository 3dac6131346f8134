//! # weir — exactly-once stream processing for Kafka
//!
//! Implement [`Processor`]; weir pulls batches from the input topics, runs it, and commits the
//! outputs together with the input offsets atomically in a Kafka transaction
//! (`processing.guarantee = exactly_once`, the default), or commits offsets only after every
//! output is acknowledged (`at_least_once`).
//!
//! ```no_run
//! use weir::{async_trait, App, Config, Context, Processor, ProcessError, Record};
//!
//! struct Upper;
//!
//! #[async_trait]
//! impl Processor for Upper {
//!     async fn process(&mut self, batch: &[Record], ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!         for record in batch {
//!             let mut out = record.forward();
//!             out.value = record.value_str().map(|v| v.to_uppercase().into());
//!             ctx.emit(out);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder("upper", "localhost:9092")
//!     .input_topic("words")
//!     .output_topic("words-upper")
//!     .build()?;
//! App::new(config).run(Upper).await?;
//! # Ok(()) }
//! ```
//!
//! The contract between an operator and the runtime — call order, what an error does, what is
//! visible after an abort — is on [`Processor`]. The guarantees are in `docs/guarantees.md`.

pub use async_trait::async_trait;
pub use weir_core::*;
pub use weir_runtime::{App, RestoreObserver, RunSummary, RuntimeError};

pub mod progress;

/// The allocator to give a weir application's binary (feature `mimalloc`, on by default); why,
/// and what it measured, is in docs/operations.md ("The allocator"):
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: weir::MiMalloc = weir::MiMalloc;
/// # fn main() {}
/// ```
#[cfg(feature = "mimalloc")]
pub use mimalloc::MiMalloc;

/// The README's example must compile.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
