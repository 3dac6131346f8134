//! weir-kafka: the rdkafka glue shared by the runtime, the test kit and the CLI.
//!
//! - [`clients`]: librdkafka configuration of weir's consumer and transactional producer, from a
//!   [`weir_core::Config`].
//! - [`errors`]: the three classes of transaction errors (retriable, abortable, fatal), the way
//!   librdkafka's transactional API documents them, so that the runtime has one path per class.
//! - [`admin`]: topics, watermarks and committed offsets, as blocking calls with timeouts.

pub mod admin;
pub mod clients;
pub mod errors;

pub use errors::{classify, TxnErrorClass};
