//! Outputs larger than the broker accepts, caught before they are produced: no replay can
//! make such a record smaller, so it must not reach the producer (a refused record aborts the
//! whole transaction, every time).
//!
//! An output that names the input record it was made from (`Output::input`, set by
//! `Record::forward` and `Output::for_input`) is that record's poison: `poison.policy` applies
//! to the record — `fail` stops naming it, `skip` drops every output of the record, and
//! `dead_letter` drops them and sends the record itself to the dead-letter topic — in the same
//! transaction, so nothing is lost and nothing is committed past it. (State the operator wrote
//! for the record stays: the policy drops outputs, not state.) An output that names no input
//! stops the application with [`RuntimeError::TooLarge`], naming topic, partition and size.
//!
//! The limits: the producer's `message.max.bytes` (librdkafka refuses larger records itself)
//! and, read from the broker at start-up for the output and dead-letter topics, each topic's
//! `max.message.bytes` — only without compression, since a compressed batch may well fit. A
//! record the estimate lets through and the broker still refuses stops the application as
//! before (`DeliveryState::too_large`).

use std::collections::BTreeMap;

use weir_core::{Config, Context, Output, PoisonTally, ProcessError, Record};

use super::Engine;
use crate::RuntimeError;

/// The bytes of a record batch around one record, and of the record's own framing (varint
/// lengths, attributes, timestamp and offset deltas), at most.
const BATCH_OVERHEAD: usize = 61 + 21;
/// The framing of one header, at most.
const HEADER_OVERHEAD: usize = 10;

/// The largest record each topic accepts, as far as weir can tell before producing.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// The producer's `message.max.bytes` (librdkafka's default 1,000,000).
    producer: usize,
    /// `max.message.bytes` per topic (uncompressed output only).
    topics: BTreeMap<String, usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            producer: 1_000_000,
            topics: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// The limits for `config`'s producer, with `topics` (`max.message.bytes` as read from the
    /// broker) unless the producer compresses.
    pub(crate) fn new(config: &Config, topics: BTreeMap<String, usize>) -> Self {
        let setting = |key: &str| {
            config
                .producer
                .get(key)
                .or_else(|| config.kafka.get(key))
                .cloned()
        };
        let producer = setting("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let compressed = ["compression.type", "compression.codec"]
            .iter()
            .filter_map(|k| setting(k))
            .any(|c| c != "none");
        Self {
            producer,
            topics: if compressed { BTreeMap::new() } else { topics },
        }
    }

    /// The limit for `topic`, and the setting it comes from.
    fn limit(&self, topic: &str) -> (usize, String) {
        match self.topics.get(topic) {
            Some(&t) if t < self.producer => (t, format!("the topic's max.message.bytes = {t}")),
            _ => (
                self.producer,
                format!("the producer's message.max.bytes = {}", self.producer),
            ),
        }
    }
}

/// What one output takes on the wire, at least as much as the broker counts.
fn wire_size(o: &Output) -> usize {
    BATCH_OVERHEAD
        + o.key.as_ref().map_or(0, |k| k.len())
        + o.value.as_ref().map_or(0, |v| v.len())
        + o.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len) + HEADER_OVERHEAD)
            .sum::<usize>()
}

impl Engine {
    /// Checks the outputs the last `process` call emitted (`self.outputs[first..]`, for the
    /// records of `batch`) against the limits; see the module documentation. The inner result
    /// is the operator's (a poison record under `fail`), the outer error stops the application.
    pub(super) fn police_oversize(
        &mut self,
        batch: &[Record],
        first: usize,
        tally: &mut PoisonTally,
    ) -> Result<Result<(), ProcessError>, RuntimeError> {
        loop {
            let default_topic = self.config.output_topic.as_deref().unwrap_or_default();
            let found = self.outputs[first..].iter().find_map(|o| {
                let topic = o.topic.as_deref().unwrap_or(default_topic);
                let (limit, setting) = self.limits.limit(topic);
                let size = wire_size(o);
                (size > limit).then(|| (o.clone(), topic.to_string(), size, setting))
            });
            let Some((output, topic, size, setting)) = found else {
                return Ok(Ok(()));
            };
            let describe =
                format!(
                "{}: a record of about {size} bytes (key {}, value {}, {} headers), over {setting}",
                output
                    .partition
                    .map_or("the key's partition".to_string(), |p| format!("partition {p}")),
                output.key.as_ref().map_or(0, |k| k.len()),
                output.value.as_ref().map_or(0, |v| v.len()),
                output.headers.len(),
            );
            let record = output.input.as_ref().and_then(|at| {
                batch.iter().find(|r| {
                    r.offset == at.offset && r.partition == at.partition && r.topic == at.topic
                })
            });
            let Some(record) = record else {
                return Err(RuntimeError::TooLarge {
                    topic,
                    detail: format!(
                        "{describe}; the output names no input record of its batch, so \
                         poison.policy cannot apply: build it with Record::forward or \
                         Output::for_input"
                    ),
                });
            };
            // Every output of the record goes; then the policy decides about the record.
            let at = record.input_ref();
            let mut tail = self.outputs.split_off(first);
            tail.retain(|o| o.input.as_ref() != Some(&at));
            self.outputs.extend(tail);
            let cause = format!(
                "its output to topic {topic:?} is larger than the broker accepts ({describe})"
            );
            let mut ctx = Context::new(&mut self.outputs, &self.poison, tally);
            if let Err(e) = ctx.poison(record, cause) {
                return Ok(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!(
            "application.id = \"a\"\nbootstrap.servers = \"b:9092\"\ninput.topics = [\"in\"]\n\
             output.topic = \"out\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_smaller_of_topic_and_producer_limits_applies_and_compression_leaves_the_topic_out() {
        let topics: BTreeMap<String, usize> = [("out".to_string(), 4096)].into();
        let l = Limits::new(&config(""), topics.clone());
        assert_eq!(l.limit("out").0, 4096);
        assert_eq!(l.limit("other").0, 1_000_000);
        let l = Limits::new(
            &config("producer.\"message.max.bytes\" = \"2000\""),
            topics.clone(),
        );
        assert_eq!(
            l.limit("out"),
            (2000, "the producer's message.max.bytes = 2000".into())
        );
        let l = Limits::new(&config("producer.\"compression.type\" = \"lz4\""), topics);
        assert_eq!(l.limit("out").0, 1_000_000);
    }

    #[test]
    fn the_wire_size_counts_key_value_headers_and_framing() {
        let o = Output::new(Some("key"), vec![0u8; 1000]).with_header("h", "vv");
        assert_eq!(
            wire_size(&o),
            BATCH_OVERHEAD + 3 + 1000 + 1 + 2 + HEADER_OVERHEAD
        );
    }
}
