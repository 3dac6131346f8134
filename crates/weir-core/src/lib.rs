//! weir-core: the part of weir an operator author programs against.
//!
//! It holds the [`Processor`] trait (whose doc comment is the contract between an operator and
//! the runtime), [`Record`] and [`Output`], the [`Context`] outputs go through, the errors an
//! operator returns, and the application [`Config`]. It depends on neither Kafka nor RocksDB, so
//! operators can be unit-tested without either.

pub mod config;
pub mod error;
pub mod processor;
pub mod record;
pub mod state;
pub mod time;
pub mod windows;

pub use config::{
    Config, ConfigBuilder, ConfigError, ConfigMap, GroupProtocol, Guarantee, OffsetReset,
    PoisonPolicy,
};
pub use error::{BoxError, PoisonRecord, ProcessError};
pub use processor::{
    dlq_headers, AppInfo, AssignedPartition, CommitInfo, Context, PoisonHandling, PoisonTally,
    Processor, StartFrom,
};
pub use record::{Bytes, Header, InputRef, IntoPayload, Output, Record, TopicPartition};
pub use state::{
    MemoryState, RestoreProgress, StateAccess, StateError, Store, StoreKey, StoreSpec,
};
pub use time::{TimeDomain, Timer, Timers};
