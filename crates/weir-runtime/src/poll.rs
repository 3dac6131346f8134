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

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use weir_core::{Bytes, Header, Record, TopicPartition};

use rdkafka::consumer::BaseConsumer;

use crate::rebalance::{RebalanceHandler, RebalanceListener};

/// One poll's result: records, and the error that ended the batch, if any.
#[derive(Debug, Default)]
pub(crate) struct Polled {
    pub(crate) records: Vec<Record>,
    pub(crate) error: Option<KafkaError>,
    /// The consumer's position in each assigned partition right after the batch's last poll:
    /// past every record of the batch and of earlier batches, and past the transaction
    /// markers (and aborted records) the consumer read over, which are never handed to the
    /// application. Once the batch is processed, nothing before these offsets is unprocessed
    /// (see `Engine::step_over_markers`). Empty when the batch ended on a revocation or a
    /// rewind (then records polled were dropped, and the positions are not all processed).
    pub(crate) ends: Vec<(TopicPartition, i64)>,
}

/// Polls one batch into `records`, the buffer of a batch processed earlier: its capacity is
/// reused (growing a fresh `Vec` to thousands of records each batch moved every record several
/// times and faulted in new pages), and its records are dropped here first, on the thread that
/// allocated them, rather than on the main loop, which is then free for the next batch sooner
/// (measured at 100 B: 0.79 of the ceiling against 0.69 in the same rounds, with the same CPU
/// in the two threads together; docs/benchmarks.md).
pub(crate) fn poll_batch<L: RebalanceListener>(
    consumer: &Arc<BaseConsumer<RebalanceHandler<L>>>,
    max: usize,
    wait: Duration,
    mut records: Vec<Record>,
) -> Polled {
    records.clear();
    let handler = consumer.context();
    // One keep-alive per batch, not a clone of the consumer's own `Arc` per record: the poll
    // thread takes references to this one while the main thread drops the previous batch's.
    let alive = Arc::new(KeepAlive {
        _consumer: Arc::clone(consumer) as Arc<dyn std::any::Any + Send + Sync>,
    });
    handler.revoked.lock().expect("poisoned").clear();
    let mut topics = Topics::default();
    let mut polled = Polled {
        records,
        error: None,
        ends: Vec::new(),
    };
    let mut timeout = wait;
    let mut ends_valid = true;
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
            ends_valid = false;
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
                polled.records.push(to_record(m, &mut topics, &alive));
            } else if let Some(Err(e)) = next {
                polled.error = Some(e);
            }
            ends_valid = false;
            break;
        }
        match next {
            None => break,
            Some(Ok(m)) => polled.records.push(to_record(m, &mut topics, &alive)),
            Some(Err(e)) => {
                polled.error = Some(e);
                break;
            }
        }
    }
    if ends_valid {
        polled.ends = positions(consumer.as_ref());
    }
    polled
}

/// The consumer's positions (offset of the next message it will hand over) in its assigned
/// partitions, where it has one.
fn positions<C: Consumer<H>, H: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
) -> Vec<(TopicPartition, i64)> {
    let Ok(list) = consumer.position() else {
        return Vec::new();
    };
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// The batch's topic names, one `Arc<str>` per topic. Records come in runs of one partition,
/// so the last topic is checked first (a string comparison) before the map (a hash).
#[derive(Default)]
struct Topics {
    last: Option<Arc<str>>,
    all: HashSet<Arc<str>>,
}

impl Topics {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(last) = &self.last {
            if **last == *name {
                return Arc::clone(last);
            }
        }
        let t = match self.all.get(name) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(name);
                self.all.insert(Arc::clone(&t));
                t
            }
        };
        self.last = Some(Arc::clone(&t));
        t
    }
}

/// Keeps the consumer alive while values of one batch live (see [`Fetched`]).
struct KeepAlive {
    _consumer: Arc<dyn std::any::Any + Send + Sync>,
}

/// A polled message that owns the memory a record's value points into, so the value is shared
/// with librdkafka's fetch buffer instead of copied out of it (at 1 KB, that copy and the
/// allocation and cross-thread free that go with it were most of what weir spent per record
/// beyond the raw client; see docs/benchmarks.md). A value kept past `process` keeps its fetch
/// buffer (up to `fetch.max.bytes`) in memory; an operator that keeps values for long should
/// copy them (`Bytes::copy_from_slice`).
struct Fetched {
    message: BorrowedMessage<'static>,
    /// The message borrows from the consumer's client: keep the consumer alive (and so
    /// `rd_kafka_destroy` from running) until the last value of the batch is dropped. Declared
    /// after `message`, so it is dropped after it.
    _alive: Arc<KeepAlive>,
}

impl AsRef<[u8]> for Fetched {
    fn as_ref(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }
}

impl Fetched {
    fn new(message: BorrowedMessage<'_>, alive: &Arc<KeepAlive>) -> Self {
        // SAFETY: only the lifetime changes. It ties the message to the consumer whose client
        // owns the message's event; `_alive` keeps that consumer alive for as long as this
        // value exists, and drops it only after the message. `BorrowedMessage` is `Send` and
        // `Sync` (librdkafka messages may be read and destroyed on any thread).
        #[allow(unsafe_code)]
        let message = unsafe {
            std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(message)
        };
        Fetched {
            message,
            _alive: Arc::clone(alive),
        }
    }
}

fn to_record(m: BorrowedMessage<'_>, topics: &mut Topics, alive: &Arc<KeepAlive>) -> Record {
    let topic = topics.get(m.topic());
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
    let (partition, offset, timestamp_ms) = (m.partition(), m.offset(), m.timestamp().to_millis());
    // Keys are short: a copy costs less than sharing (and pins nothing).
    let key = m.key().map(key_bytes);
    let value = match m.payload() {
        None => None,
        Some([]) => Some(Bytes::new()),
        Some(_) => Some(Bytes::from_owner(Fetched::new(m, alive))),
    };
    Record {
        topic,
        partition,
        offset,
        timestamp_ms,
        key,
        value,
        headers,
    }
}

/// The longest key [`key_bytes`] keeps inline (a UUID in text is 36 bytes).
const INLINE_KEY: usize = 39;

/// A short key's bytes, held in the one allocation of its [`Bytes`].
struct InlineKey {
    len: u8,
    bytes: [u8; INLINE_KEY],
}

impl AsRef<[u8]> for InlineKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A copy of a record's key. A short key lives inline in the allocation that also holds its
/// reference count, so the operator's clone of it (`Record::forward`, `Output::new(record.key
/// .clone(), …)`) counts a reference in the cache line it reads the key from anyway.
/// `Bytes::copy_from_slice` would allocate once here and again on the first clone, on the main
/// loop, to share the copy — and that second allocation was freed here, on the polling thread,
/// when the batch's records were dropped.
fn key_bytes(key: &[u8]) -> Bytes {
    if key.len() > INLINE_KEY {
        return Bytes::copy_from_slice(key);
    }
    let mut inline = InlineKey {
        len: key.len() as u8,
        bytes: [0; INLINE_KEY],
    };
    inline.bytes[..key.len()].copy_from_slice(key);
    Bytes::from_owner(inline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_key_is_kept_inline_and_shared_by_its_clones() {
        for key in [&b""[..], b"k", &[7u8; INLINE_KEY], &[8u8; INLINE_KEY + 1]] {
            let bytes = key_bytes(key);
            assert_eq!(&bytes[..], key);
            let clone = bytes.clone();
            assert_eq!(clone.as_ptr(), bytes.as_ptr(), "the clone copied the key");
            drop(bytes);
            assert_eq!(&clone[..], key);
        }
    }

    #[test]
    fn each_topic_name_is_interned_once() {
        let mut topics = Topics::default();
        let a1 = topics.get("a");
        let a2 = topics.get("a");
        let b = topics.get("b");
        let a3 = topics.get("a");
        assert!(Arc::ptr_eq(&a1, &a2) && Arc::ptr_eq(&a1, &a3));
        assert_eq!((&*a1, &*b), ("a", "b"));
        assert_eq!(topics.all.len(), 2);
    }
}
