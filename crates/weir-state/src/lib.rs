//! weir-state: RocksDB state that commits and recovers in step with the input offsets.
//!
//! # Layout (one RocksDB per application: `{state.dir}/{application.id}/rocksdb`)
//!
//! | key | value |
//! |---|---|
//! | `0x01 task:u32be len:u8 store key` | a store entry of a task |
//! | `0x02 task:u32be` | [`TaskMeta`]: the task's committed input offsets (`R`), changelog offsets, commit sequence number |
//! | `0x03 task:u32be` | [`Pending`]: a prepared commit's target offsets and sequence number |
//! | `0x04 task:u32be` | the prepared commit's state delta (binary, see `delta.rs`) |
//!
//! A task's entries, offsets and changelog offsets change only together, in one atomic
//! `WriteBatch`.
//!
//! # The two-phase commit (DESIGN.md "The commit cycle", steps b and d)
//!
//! ```text
//! process:  writes go to the task's overlay (reads see overlay, committing layer, applying
//!           layer, the read cache, then RocksDB)
//! prepare:  the overlay freezes as the committing layer; one synced WriteBatch: per dirty
//!           task, Pending{seq, target offsets} + delta, written by the writer thread
//! (Kafka commit_transaction, once the prepare is durable: the decision)
//! apply:    one WriteBatch: delta + TaskMeta{offsets, changelog offsets, seq}, pending dropped,
//!           written by the writer thread after the prepare; any other write to RocksDB
//!           waits for the writer first
//! abort:    overlay dropped; pending dropped
//! ```
//!
//! # Recovery (DESIGN.md "Recovery"), per task, by [`StateManager::recover`] (classified by [`standing`])
//!
//! A pending entry rolls forward when Kafka's committed offsets carry its sequence number (and
//! its offsets), back otherwise. Then `R == K` resumes as is; `R < K` restores from the
//! changelog; `R > K` is an error.

mod access;
mod cache;
mod delta;
mod filter;
mod manager;
pub mod marks;
pub mod standing;
mod writer;

pub use manager::{
    changelog_topic, Committed, Pending, Prepared, RecoveryOutcome, StateManager, StateStoreError,
    TaskCommit, TaskMeta,
};
pub use marks::Marks;
pub use standing::{pending_decided, standing, Standing};
