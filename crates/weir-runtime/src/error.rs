//! Why an application stopped.

use std::path::PathBuf;

use rdkafka::error::KafkaError;
use weir_core::{ConfigError, PoisonRecord, TopicPartition};
use weir_kafka::admin::AdminError;

/// Why [`App::run`](crate::App::run) returned an error. Every variant says what failed, where,
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The state directory could not be used.
    #[error("state directory {path}: {source}. Check `state.dir` and its permissions")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The cluster is unreachable, or a topic is missing.
    #[error(transparent)]
    Admin(#[from] AdminError),

    /// A Kafka client call failed in a way that stops the application.
    #[error("{during} failed: {source}")]
    Kafka {
        /// What weir was doing.
        during: String,
        /// The client error.
        source: Box<KafkaError>,
    },

    /// Another producer with this instance's transactional id took over.
    #[error(
        "producer fenced during {during}: another instance started with the same transactional id \
         {transactional_id:?} (same application.id and instance.id), so this one stopped. Its \
         open transaction was not committed. Give every running instance its own state.dir or \
         instance.id. (A transaction that outlived transaction.timeout.ms — a broker failure \
         or a stalled instance — is fenced by the broker's own abort; weir tells that case \
         apart by the transaction's age and replaces its producer instead of stopping.) \
         ({source})"
    )]
    Fenced {
        /// What weir was doing.
        during: String,
        /// The transactional id.
        transactional_id: String,
        /// The client error.
        source: Box<KafkaError>,
    },

    /// `auto.offset.reset = none` and partitions have no committed offset.
    #[error(
        "auto.offset.reset = none and group {group:?} has no committed offset for {}. Set a \
         starting offset for the group first (kafka-consumer-groups.sh --reset-offsets, or \
         `weir offsets reset`), or set auto.offset.reset to earliest or latest",
        list(partitions)
    )]
    NoCommittedOffset {
        /// The consumer group.
        group: String,
        /// The partitions without an offset.
        partitions: Vec<TopicPartition>,
    },

    /// The operator reported a poison record under `poison.policy = fail`.
    #[error(transparent)]
    Poison(PoisonRecord),

    /// The operator returned `ProcessError::Fatal`, or a hook failed.
    #[error("operator failed in {during}: {message}. The open transaction was aborted")]
    Operator {
        /// The method or hook.
        during: &'static str,
        /// The error.
        message: String,
    },

    /// The operator kept returning `ProcessError::Retriable`.
    #[error(
        "operator failed {attempts} times in a row (processing.retries = {retries}), last at or \
         after {position}: {message}. Nothing since the last commit was committed"
    )]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The configured retries.
        retries: u32,
        /// The first record of the failed batch.
        position: String,
        /// The last error.
        message: String,
    },

    /// The broker refused an output record as larger than its topic accepts.
    #[error(
        "an output record for topic {topic:?} is larger than the broker accepts ({detail}). \
         Raise max.message.bytes on the topic (and the producer's message.max.bytes, \
         `producer.message.max.bytes`), or emit smaller records. The transaction was aborted: \
         nothing was committed past its input"
    )]
    TooLarge {
        /// The output topic.
        topic: String,
        /// Partition and sizes.
        detail: String,
    },

    /// An output could not be produced.
    #[error("cannot produce to topic {topic:?} {}: {source}. Check the output topic and its partition count", match partition { Some(p) => format!("partition {p}"), None => "(the key's partition)".to_string() })]
    Produce {
        /// The topic.
        topic: String,
        /// The partition, if chosen.
        partition: Option<i32>,
        /// The client error.
        source: Box<KafkaError>,
    },

    /// Outputs were not acknowledged (at_least_once): offsets were not committed.
    #[error("{failed} output records were not acknowledged (first error: {first}); offsets were not committed, so they will be reprocessed after a restart")]
    Delivery {
        /// Failed deliveries since the last commit.
        failed: u64,
        /// The first failure.
        first: String,
    },

    /// The operator emitted an output without a topic and there is no `output.topic`.
    #[error("the operator emitted an output without a topic, and `output.topic` is not set. Set output.topic or name the topic on the Output")]
    NoOutputTopic,

    /// Local state cannot be used (see the message for why and what to do).
    #[error(transparent)]
    State(#[from] weir_state::StateStoreError),

    /// A changelog topic exists but cannot serve as one.
    #[error("changelog topic {topic:?} {problem}")]
    Changelog {
        /// The topic.
        topic: String,
        /// What is wrong and what to do.
        problem: String,
    },

    /// A transactional call did not return in time (a librdkafka hang, e.g. while a
    /// coordinator broker disappears); the producer is replaced.
    #[error(
        "{during} did not return within {waited:?}; the producer is considered stuck. weir \
         replaces it and resumes from the committed offsets; if this repeats, check the brokers \
         (transaction and group coordinators)"
    )]
    Stuck {
        /// The call.
        during: String,
        /// How long weir waited.
        waited: std::time::Duration,
    },

    /// weir's own state machine went wrong; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
