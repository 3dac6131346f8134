//! Pulling a batch from the consumer, on a blocking thread.
//!
//! A batch is what `poll` returns within `max.batch.wait.ms` for its first record, plus whatever
//! is already buffered, up to `max.batch.records`. Rebalance callbacks run inside `poll`; when
//! one revokes partitions, records of those partitions that were collected earlier in the same
//! batch are dropped (the revocation committed the offsets *before* them, and a new owner, or
//! this instance after a re-assignment, reads them again from there), and the batch ends.
//!
//! The main loop runs this while it processes and commits the previous batch. When an abort —
//! in a callback of this poll, or in the main loop meanwhile — asked for a rewind, the seek is
//! made here between two polls, everything collected before it (including the record the last
//! poll returned) is dropped, and the batch ends; the main loop makes a rewind asked for after
//! the last poll itself, dropping the whole batch (see the engine's "Rewinds").

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use weir_core::{Bytes, Header, Record, TopicPartition};

use crate::engine::WeirConsumer;

/// One poll's result: records, and the error that ended the batch, if any.
#[derive(Debug, Default)]
pub(crate) struct Polled {
    pub(crate) records: Vec<Record>,
    pub(crate) error: Option<KafkaError>,
}

pub(crate) fn poll_batch(consumer: &Arc<WeirConsumer>, max: usize, wait: Duration) -> Polled {
    let handler = consumer.context();
    handler.revoked.lock().expect("poisoned").clear();
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    let mut polled = Polled::default();
    let mut timeout = wait;
    while polled.records.len() < max {
        let before = handler.revocations.load(Ordering::SeqCst);
        let next = consumer.poll(timeout);
        timeout = Duration::ZERO;
        if handler.rewind_if_pending() {
            // Everything polled so far, this poll's record included, precedes the seek: it is
            // read again.
            polled.records.clear();
            if let Some(Err(e)) = next {
                polled.error = Some(e);
            }
            break;
        }
        if handler.revocations.load(Ordering::SeqCst) != before {
            let revoked: Vec<TopicPartition> =
                std::mem::take(&mut *handler.revoked.lock().expect("poisoned"));
            polled.records.retain(|r| {
                !revoked
                    .iter()
                    .any(|tp| tp.partition == r.partition && *tp.topic == *r.topic)
            });
            if let Some(Ok(m)) = next {
                polled.records.push(to_record(&m, &mut topics));
            } else if let Some(Err(e)) = next {
                polled.error = Some(e);
            }
            break;
        }
        match next {
            None => break,
            Some(Ok(m)) => polled.records.push(to_record(&m, &mut topics)),
            Some(Err(e)) => {
                polled.error = Some(e);
                break;
            }
        }
    }
    polled
}

fn to_record(m: &BorrowedMessage<'_>, topics: &mut HashMap<String, Arc<str>>) -> Record {
    let topic = match topics.get(m.topic()) {
        Some(t) => Arc::clone(t),
        None => {
            let t: Arc<str> = Arc::from(m.topic());
            topics.insert(m.topic().to_string(), Arc::clone(&t));
            t
        }
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    key: h.key.to_string(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(Bytes::copy_from_slice),
        value: m.payload().map(Bytes::copy_from_slice),
        headers,
    }
}
