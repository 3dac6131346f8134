//! weir's producer: handing outputs to librdkafka (large values without a copy, every topic by
//! its handle), delivery reports, and draining before a commit. Below the transactions (`txn`)
//! and the commit cycle; it imports nothing above it.
//!
//! # Produce without copies
//!
//!
//! rdkafka's `send` always asks librdkafka to copy the value (`RD_KAFKA_MSG_F_COPY`: a
//! `malloc` of the value's size and a `memcpy` on the main loop, for each record — and the
//! broker thread copies it once more into the produce request) and names the topic as a
//! string (a `CString` allocation per record, then a topic lookup under the client's write
//! lock). [`WeirProducer::produce`] calls `rd_kafka_producev` itself instead:
//!
//! - a value of [`HOLD_MIN`] bytes or more is not copied: librdkafka points at the output's
//!   [`Bytes`] — for a forwarded record, the consumer's fetch buffer — and the producer keeps a
//!   reference to it as the message's delivery opaque ([`Held`]) until the delivery report,
//!   after which librdkafka no longer reads the value (the contract of a produce without
//!   `RD_KAFKA_MSG_F_COPY`; librdkafka frees its own copies only then too). Smaller values are
//!   copied, which costs less than the reference and its release on the producer's thread;
//! - the topic is given as a handle (`rd_kafka_topic_t`), made once per producer and topic.

use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::ops::Deref;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;
use rdkafka::{ClientContext, Message};
use weir_core::{Bytes, Output};

/// The smallest value handed to librdkafka without a copy (see the module documentation).
pub(crate) const HOLD_MIN: usize = 512;

/// A message's delivery opaque: the value librdkafka points at, if it was not copied; dropped
/// by the delivery report.
#[derive(Debug)]
pub(crate) struct Held(Option<Bytes>);

impl IntoOpaque for Held {
    fn into_ptr(self) -> *mut c_void {
        match self.0 {
            None => ptr::null_mut(),
            Some(value) => Box::into_raw(Box::new(value)).cast(),
        }
    }

    #[allow(unsafe_code)]
    unsafe fn from_ptr(p: *mut c_void) -> Self {
        if p.is_null() {
            Held(None)
        } else {
            // SAFETY: a non-null opaque is a `Box<Bytes>` from `into_ptr`, and librdkafka hands
            // each message's opaque back once (its delivery report, or a failed `producev`).
            Held(Some(*unsafe { Box::from_raw(p.cast::<Bytes>()) }))
        }
    }
}

/// A topic handle, owned by one [`WeirProducer`].
#[derive(Debug)]
struct TopicHandle {
    name: Box<str>,
    rkt: *mut rd::rd_kafka_topic_t,
}

// SAFETY: librdkafka's topic handles may be used from any thread.
#[allow(unsafe_code)]
unsafe impl Send for TopicHandle {}

/// weir's producer: rdkafka's threaded producer, plus its topic handles.
pub(crate) struct WeirProducer {
    /// Destroyed (in `drop`) before `inner`: a handle must not outlive its client.
    topics: Mutex<Vec<TopicHandle>>,
    inner: ThreadedProducer<DeliveryContext>,
}

impl std::fmt::Debug for WeirProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeirProducer").finish_non_exhaustive()
    }
}

impl Deref for WeirProducer {
    type Target = ThreadedProducer<DeliveryContext>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl From<ThreadedProducer<DeliveryContext>> for WeirProducer {
    fn from(inner: ThreadedProducer<DeliveryContext>) -> Self {
        WeirProducer {
            topics: Mutex::new(Vec::new()),
            inner,
        }
    }
}

impl Drop for WeirProducer {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let topics = self.topics.get_mut().unwrap_or_else(|e| e.into_inner());
        for t in topics.drain(..) {
            // SAFETY: the handle came from `rd_kafka_topic_new` on `inner`'s client, which is
            // destroyed only after this (fields drop after `drop`). Messages still queued hold
            // references of their own.
            unsafe { rd::rd_kafka_topic_destroy(t.rkt) };
        }
    }
}

impl WeirProducer {
    /// `topic`'s handle, made on first use.
    #[allow(unsafe_code)]
    fn topic(&self, topic: &str) -> Result<*mut rd::rd_kafka_topic_t, KafkaError> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = topics.iter().find(|t| &*t.name == topic) {
            return Ok(t.rkt);
        }
        let name = CString::new(topic)?;
        // SAFETY: a valid client and a NUL-terminated name; NULL takes the client's topic
        // defaults, as a produce by name does.
        let rkt = unsafe {
            rd::rd_kafka_topic_new(
                self.inner.client().native_ptr(),
                name.as_ptr(),
                ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::InvalidTopic,
            ));
        }
        topics.push(TopicHandle {
            name: topic.into(),
            rkt,
        });
        Ok(rkt)
    }

    /// Hands `out` to librdkafka for `topic`. Errors are those of rdkafka's `send`
    /// (`KafkaError::MessageProduction` with librdkafka's code: `QueueFull` when the producer's
    /// window is full, `State` in a transaction's abortable state, `Fatal`, ...); on an error
    /// librdkafka has taken nothing, and `out` is as it was. On success `out`'s value may have
    /// been moved to the producer.
    #[allow(unsafe_code)]
    pub(crate) fn produce(&self, topic: &str, out: &mut Output) -> Result<(), KafkaError> {
        let rkt = self.topic(topic)?;
        // A held value moves into the opaque (its data does not move), and back on an error.
        let held = match out.value.take() {
            Some(v) if v.len() >= HOLD_MIN => Held(Some(v)),
            other => {
                out.value = other;
                Held(None)
            }
        };
        // A pointer, not a borrow: a held value's data stays where it is when it moves.
        let value = parts(held.0.as_deref().or(out.value.as_deref()));
        let flags = if held.0.is_some() {
            0
        } else {
            rd::RD_KAFKA_MSG_F_COPY
        };
        let headers = if out.headers.is_empty() {
            ptr::null_mut()
        } else {
            // SAFETY: `rd_kafka_header_add` copies name and value (lengths given, so no NUL is
            // needed).
            unsafe {
                let hs = rd::rd_kafka_headers_new(out.headers.len());
                for h in &out.headers {
                    let (v, n) = h
                        .value
                        .as_deref()
                        .map_or((ptr::null(), 0), |v| (v.as_ptr().cast::<c_void>(), v.len()));
                    rd::rd_kafka_header_add(
                        hs,
                        h.key.as_ptr().cast(),
                        h.key.len() as isize,
                        v,
                        n as isize,
                    );
                }
                hs
            }
        };
        let opaque = held.into_ptr();
        let message = Raw {
            partition: out.partition.unwrap_or(-1),
            flags,
            key: parts(out.key.as_deref()),
            value,
            opaque,
            timestamp_ms: out.timestamp_ms.unwrap_or(0),
            headers,
        };
        // SAFETY: librdkafka copies the key, the headers (it takes ownership of them on
        // success) and, with `RD_KAFKA_MSG_F_COPY`, the value; an uncopied value stays alive in
        // `opaque` until librdkafka hands it back.
        let err = unsafe { self.producev(rkt, message) };
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        // SAFETY: librdkafka took nothing: the opaque and the headers are still ours.
        unsafe {
            if let Held(Some(value)) = Held::from_ptr(opaque) {
                out.value = Some(value);
            }
            if !headers.is_null() {
                rd::rd_kafka_headers_destroy(headers);
            }
        }
        Err(KafkaError::MessageProduction(err.into()))
    }

    /// Hands a record of borrowed key and value to librdkafka for `topic`'s `partition`, copied
    /// (a changelog record, straight from the state's layer: no [`Output`] in between). Errors
    /// as [`produce`](Self::produce)'s; on an error librdkafka has taken nothing.
    #[allow(unsafe_code)]
    pub(crate) fn produce_copy(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        let rkt = self.topic(topic)?;
        let message = Raw {
            partition,
            flags: rd::RD_KAFKA_MSG_F_COPY,
            key: parts(Some(key)),
            value: parts(value),
            opaque: ptr::null_mut(),
            timestamp_ms: 0,
            headers: ptr::null_mut(),
        };
        // SAFETY: librdkafka copies the key and the value before returning.
        let err = unsafe { self.producev(rkt, message) };
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        Err(KafkaError::MessageProduction(err.into()))
    }

    /// `rd_kafka_producev` of `message` to the topic `rkt`.
    ///
    /// # Safety
    ///
    /// `rkt` is a handle of this producer's client, the key and value are valid for the call,
    /// `message.headers` is null or a valid headers list, and a value passed without
    /// `RD_KAFKA_MSG_F_COPY` stays alive until the delivery report hands `message.opaque` back.
    #[allow(unsafe_code)]
    unsafe fn producev(
        &self,
        rkt: *mut rd::rd_kafka_topic_t,
        message: Raw,
    ) -> rd::rd_kafka_resp_err_t {
        use rd::rd_kafka_vtype_t::*;
        let ((value_ptr, value_len), (key_ptr, key_len)) = (message.value, message.key);
        // SAFETY: every pointer is valid for the call (the caller's contract for the rest).
        unsafe {
            rd::rd_kafka_producev(
                self.inner.client().native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                rkt,
                RD_KAFKA_VTYPE_PARTITION,
                message.partition,
                RD_KAFKA_VTYPE_MSGFLAGS,
                message.flags,
                RD_KAFKA_VTYPE_VALUE,
                value_ptr,
                value_len,
                RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                message.opaque,
                RD_KAFKA_VTYPE_TIMESTAMP,
                message.timestamp_ms,
                RD_KAFKA_VTYPE_HEADERS,
                message.headers,
                RD_KAFKA_VTYPE_END,
            )
        }
    }
}

/// One record's arguments of `rd_kafka_producev` (see [`WeirProducer::producev`]).
#[derive(Clone, Copy)]
struct Raw {
    partition: i32,
    flags: i32,
    key: (*mut c_void, usize),
    value: (*mut c_void, usize),
    opaque: *mut c_void,
    timestamp_ms: i64,
    headers: *mut rd::rd_kafka_headers_t,
}

/// A byte string as librdkafka takes it: pointer and length (null for none).
fn parts(bytes: Option<&[u8]>) -> (*mut c_void, usize) {
    bytes.map_or((ptr::null_mut(), 0), |b| {
        (b.as_ptr() as *mut c_void, b.len())
    })
}

/// Counts failed deliveries since the last commit; read at commit time.
#[derive(Debug, Default)]
pub(crate) struct DeliveryState {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
    /// A record the broker refused as larger than the topic accepts: `(topic, description)`.
    /// Replaying cannot help, so this stops the application (see `Engine::on_failure`).
    too_large: Mutex<Option<(String, String, usize)>>,
    /// Whether any changelog topic is tracked: without one, a delivery takes no lock.
    tracking: AtomicBool,
    /// The changelog topics, and per changelog partition the highest offset delivered since
    /// the last commit (the next restore starts after it).
    changelogs: Mutex<ChangelogTracker>,
}

impl DeliveryState {
    /// The record the broker refused as too large since the last reset, if any.
    pub(crate) fn too_large(&self) -> Option<(String, String)> {
        let too_large = self.too_large.lock().expect("poisoned");
        too_large.as_ref().map(|(t, d, _)| (t.clone(), d.clone()))
    }

    pub(crate) fn reset(&self) {
        self.failed.store(0, Ordering::SeqCst);
        *self.first.lock().expect("poisoned") = None;
        *self.too_large.lock().expect("poisoned") = None;
        for delivered in self
            .changelogs
            .lock()
            .expect("poisoned")
            .topics
            .values_mut()
        {
            delivered.clear();
        }
    }

    /// The failed deliveries since the last commit, and the first failure's description.
    pub(crate) fn failures(&self) -> Option<(u64, String)> {
        let failed = self.failed.load(Ordering::SeqCst);
        (failed > 0).then(|| {
            let first = self.first.lock().expect("poisoned").clone();
            (failed, first.unwrap_or_default())
        })
    }

    pub(crate) fn track_changelogs(&self, topics: impl IntoIterator<Item = String>) {
        let mut changelogs = self.changelogs.lock().expect("poisoned");
        for topic in topics {
            changelogs.topics.entry(topic).or_default();
        }
        self.tracking
            .store(!changelogs.topics.is_empty(), Ordering::SeqCst);
    }

    pub(crate) fn take_changelog_offsets(&self) -> BTreeMap<(String, i32), i64> {
        let mut changelogs = self.changelogs.lock().expect("poisoned");
        let mut taken = BTreeMap::new();
        for (topic, delivered) in &mut changelogs.topics {
            taken.extend(
                std::mem::take(delivered)
                    .into_iter()
                    .map(|(p, o)| ((topic.clone(), p), o)),
            );
        }
        taken
    }
}

/// The changelog topics, each with the highest offset delivered per partition (looked up by
/// the delivered record's topic name, with no allocation: every delivery of a stateful
/// application comes through here).
#[derive(Debug, Default)]
struct ChangelogTracker {
    topics: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// The producer's context: records delivery failures.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryContext(pub(crate) Arc<DeliveryState>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Held;

    /// Runs on the producer's thread; `_value` (an uncopied value, see the module documentation)
    /// is released when this returns.
    fn delivery(&self, result: &DeliveryResult<'_>, _value: Held) {
        if let (Ok(message), true) = (result, self.0.tracking.load(Ordering::Relaxed)) {
            let mut changelogs = self.0.changelogs.lock().expect("poisoned");
            if let Some(delivered) = changelogs.topics.get_mut(message.topic()) {
                let max = delivered
                    .entry(message.partition())
                    .or_insert(message.offset());
                *max = (*max).max(message.offset());
            }
        }
        if let Err((error, message)) = result {
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                // The broker refuses the whole batch: name its largest record.
                let size = message.key_len() + message.payload_len();
                let mut too_large = self.0.too_large.lock().expect("poisoned");
                if too_large
                    .as_ref()
                    .is_none_or(|(_, _, largest)| size > *largest)
                {
                    *too_large = Some((
                        message.topic().to_string(),
                        format!(
                            "partition {}: a record of {size} bytes (key {}, value {}) in the refused batch",
                            message.partition(),
                            message.key_len(),
                            message.payload_len()
                        ),
                        size,
                    ));
                }
            }
            self.0.failed.fetch_add(1, Ordering::SeqCst);
            let mut first = self.0.first.lock().expect("poisoned");
            if first.is_none() {
                *first = Some(format!(
                    "{}/{}: {error}",
                    message.topic(),
                    message.partition()
                ));
            }
        }
    }
}

/// Sends everything the producer holds at once, whatever `linger.ms` says, and waits (up to
/// 5 s) until nothing is in flight. rdkafka's `flush` — which `commit_transaction` calls
/// first — sleeps in `poll` for up to 100 ms whenever anything is still in flight, because the
/// `ThreadedProducer`'s own thread serves the delivery reports it waits for: measured, every
/// commit took ~105 ms instead of ~5 ms. librdkafka's own `rd_kafka_flush` does not poll when
/// delivery reports are events (as rdkafka has them): it marks the producer as flushing (so
/// batches that are lingering go out at once — the exactly_once producer lingers up to
/// 100 ms, see `weir_kafka::clients::producer_config`) and waits on a condition variable until
/// the last delivery report is served. With the queue empty, rdkafka's flush returns at once.
pub(crate) fn drain(producer: &WeirProducer) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while producer.in_flight_count() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        weir_kafka::clients::flush_now(producer.client(), left.min(Duration::from_millis(100)));
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rdkafka::producer::PurgeConfig;
    use rdkafka::ClientConfig;

    use super::DeliveryState;
    use super::*;

    /// Bytes whose owner reports being dropped.
    struct Watched(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for Watched {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    fn watched(len: usize) -> (Bytes, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let bytes = Bytes::from_owner(Watched(vec![7; len], Arc::clone(&dropped)));
        (bytes, dropped)
    }

    #[test]
    fn an_opaque_gives_back_the_value_it_holds() {
        let (value, dropped) = watched(HOLD_MIN);
        let p = Held(Some(value)).into_ptr();
        #[allow(unsafe_code)]
        let back = unsafe { Held::from_ptr(p) };
        assert_eq!(back.0.as_deref(), Some(&[7u8; HOLD_MIN][..]));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(back);
        assert!(dropped.load(Ordering::SeqCst));
        assert!(Held(None).into_ptr().is_null());
    }

    /// No broker is needed: librdkafka queues the message, and a purge fails it with a
    /// delivery report — which must release the held value, and only then.
    #[test]
    fn a_large_value_is_held_until_its_delivery_report_and_a_small_one_is_copied() {
        let producer: ThreadedProducer<DeliveryContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(DeliveryContext(Arc::new(DeliveryState::default())))
            .expect("producer");
        let producer = WeirProducer::from(producer);
        let (large, large_dropped) = watched(HOLD_MIN);
        let (small, small_dropped) = watched(HOLD_MIN - 1);
        let mut out = Output::new(Some("k"), large);
        producer.produce("t", &mut out).expect("queued");
        assert!(out.value.is_none(), "the large value moved to the producer");
        let mut small_out = Output::new(Some("k"), small);
        producer.produce("t", &mut small_out).expect("queued");
        assert!(small_out.value.is_some(), "the small value was copied");
        drop(small_out);
        assert!(small_dropped.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !large_dropped.load(Ordering::SeqCst),
            "released before its delivery report"
        );
        producer.purge(PurgeConfig::default().queue().inflight());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !large_dropped.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the delivery report never released the value"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            producer.topics.lock().unwrap().len(),
            1,
            "one handle per topic"
        );
    }
}
