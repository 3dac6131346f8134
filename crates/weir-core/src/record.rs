//! Records in and out of an operator.
//!
//! A [`Record`] is one input record as it was read from Kafka, with its coordinates
//! (topic, partition, offset). An [`Output`] is a record an operator emits; the runtime decides
//! where it goes unless the operator names a topic or a partition.

use std::fmt;
use std::sync::Arc;

/// One header of a record: a name and an optional value (Kafka allows null header values).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// The header name.
    pub key: String,
    /// The header value; `None` is Kafka's null header value.
    pub value: Option<Vec<u8>>,
}

impl Header {
    /// A header with a value.
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}",
            self.key,
            self.value.as_deref().map(String::from_utf8_lossy)
        )
    }
}

/// A topic and a partition number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Names one partition of a topic.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One input record, as read from Kafka under `read_committed` (exactly_once) or
/// `read_uncommitted` (at_least_once).
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// The topic the record was read from.
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The record timestamp in milliseconds since the Unix epoch, if it has one.
    pub timestamp_ms: Option<i64>,
    /// The key, or `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// The value, or `None` for a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// The headers, in their order on the record.
    pub headers: Vec<Header>,
}

impl Record {
    /// The key as UTF-8 text, if there is a key and it is valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value as UTF-8 text, if there is a value and it is valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Where this record lives: `topic/partition@offset`, for error messages and logs.
    pub fn coordinates(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    /// An [`Output`] that copies this record unchanged (key, value, headers, timestamp) into
    /// the same partition number of the default output topic.
    pub fn forward(&self) -> Output {
        Output {
            topic: None,
            partition: Some(self.partition),
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone(),
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("at", &self.coordinates())
            .field("timestamp_ms", &self.timestamp_ms)
            .field("key", &self.key.as_deref().map(String::from_utf8_lossy))
            .field("value", &self.value.as_deref().map(String::from_utf8_lossy))
            .field("headers", &self.headers)
            .finish()
    }
}

/// A record emitted by an operator through [`Context::emit`](crate::Context::emit).
///
/// With no topic it goes to the application's default output topic (`output.topic`); with no
/// partition, Kafka's default partitioner picks one from the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Target topic; `None` means the default output topic.
    pub topic: Option<String>,
    /// Target partition; `None` lets the partitioner choose from the key.
    pub partition: Option<i32>,
    /// Timestamp in milliseconds since the Unix epoch; `None` lets the producer stamp it.
    pub timestamp_ms: Option<i64>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// The headers.
    pub headers: Vec<Header>,
}

impl Output {
    /// An output with this key and value, to the default output topic.
    pub fn new(key: Option<impl Into<Vec<u8>>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.map(Into::into),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Sends it to `topic` instead of the default output topic.
    #[must_use]
    pub fn to_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sends it to this partition number.
    #[must_use]
    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }
}
