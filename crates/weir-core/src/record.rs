//! Records in and out of an operator.
//!
//! A [`Record`] is one input record as it was read from Kafka, with its coordinates
//! (topic, partition, offset). An [`Output`] is a record an operator emits; the runtime decides
//! where it goes unless the operator names a topic or a partition.
//!
//! Keys and values are [`Bytes`]: reference-counted, so [`Record::forward`] and
//! `Output::new(record.key.clone(), …)` share the input's bytes instead of copying them. The
//! runtime does not copy a value out of the consumer: it shares the polled message's fetch
//! buffer, which stays in memory while any clone of the value lives, so copy a value
//! (`Bytes::copy_from_slice`) that an operator keeps for long. The producer copies each output
//! once.

use std::fmt;
use std::sync::Arc;

pub use bytes::Bytes;

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
    pub key: Option<Bytes>,
    /// The value, or `None` for a null value (a tombstone). Shared with the consumer's fetch
    /// buffer, not copied: copy it to keep it for long (see the module documentation).
    pub value: Option<Bytes>,
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

    /// An [`Output`] that carries this record unchanged (key, value, headers, timestamp) into
    /// the same partition number of the default output topic. Key and value are shared with
    /// the record, not copied.
    pub fn forward(&self) -> Output {
        Output {
            topic: None,
            partition: Some(self.partition),
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            value: self.value.clone(),
            headers: self.headers.clone(),
            input: Some(self.input_ref()),
        }
    }

    /// This record's place, for [`Output::for_input`].
    pub fn input_ref(&self) -> InputRef {
        InputRef {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Where an input record lives: what an [`Output`] names as the record it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRef {
    /// The input topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
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
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Vec<Header>,
    /// The input record this output was made from, if the operator said so
    /// ([`for_input`](Self::for_input); [`Record::forward`] does it). An output the broker
    /// cannot accept — larger than its topic's `max.message.bytes` or the producer's
    /// `message.max.bytes` — is then that record's poison, handled by `poison.policy` (fail
    /// names the record, skip drops the record's outputs, dead_letter sends the record to the
    /// dead-letter topic), instead of stopping the application. Not produced.
    pub input: Option<InputRef>,
}

impl Output {
    /// An output with this key and value, to the default output topic. Owned bytes and text
    /// (`Vec<u8>`, `String`) are moved, [`Bytes`] shared, borrowed slices and strings copied.
    pub fn new(key: Option<impl IntoPayload>, value: impl IntoPayload) -> Self {
        Self {
            key: key.map(IntoPayload::into_payload),
            value: Some(value.into_payload()),
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

    /// Names the input record this output was made from (see [`Output::input`]).
    #[must_use]
    pub fn for_input(mut self, record: &Record) -> Self {
        self.input = Some(record.input_ref());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }
}

/// What can become a record key or value ([`Output::new`]): owned bytes and text are moved,
/// [`Bytes`] shared, borrowed slices and strings copied.
pub trait IntoPayload {
    /// The payload as [`Bytes`].
    fn into_payload(self) -> Bytes;
}

impl IntoPayload for Bytes {
    fn into_payload(self) -> Bytes {
        self
    }
}

impl IntoPayload for &Bytes {
    fn into_payload(self) -> Bytes {
        self.clone()
    }
}

impl IntoPayload for Vec<u8> {
    fn into_payload(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoPayload for String {
    fn into_payload(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoPayload for &[u8] {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl<const N: usize> IntoPayload for &[u8; N] {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl IntoPayload for &str {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl IntoPayload for &String {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl IntoPayload for &Vec<u8> {
    fn into_payload(self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_shares_the_payload_instead_of_copying_it() {
        let record = Record {
            topic: Arc::from("in"),
            partition: 2,
            offset: 7,
            timestamp_ms: Some(1),
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from(vec![7u8; 1024])),
            headers: vec![Header::new("h", "v")],
        };
        let out = record.forward();
        assert_eq!(out.partition, Some(2));
        assert_eq!(out.timestamp_ms, Some(1));
        assert_eq!(out.headers, record.headers);
        let (a, b) = (record.value.as_ref().unwrap(), out.value.as_ref().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the value was copied");
    }

    #[test]
    fn outputs_take_owned_shared_and_borrowed_payloads() {
        let owned = vec![1u8, 2, 3];
        let ptr = owned.as_ptr();
        let out = Output::new(Some("key"), owned);
        assert_eq!(out.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(
            out.value.as_ref().unwrap().as_ptr(),
            ptr,
            "a Vec is moved, not copied"
        );
        let text = String::from("v");
        let out = Output::new(Some(&text), text.as_str()).to_partition(1);
        assert_eq!(out.value.as_deref(), Some(&b"v"[..]));
        assert_eq!(out.partition, Some(1));
        let out = Output::new(None::<Bytes>, b"x");
        assert_eq!(out.key, None);
    }
}
