//! Test helpers on a running [`Kafka`]: topics, producing, reading to the end, offsets.
//!
//! All calls block; they panic with a message naming the topic or group when the cluster fails
//! them, since a test cannot go on anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use weir_kafka::admin::TopicSpec;
use weir_kafka::clients::{base_config, ReaderContext};
pub use weir_verify::ReadRecord;

use crate::Kafka;

/// The test kit's acknowledged sends, by topic (topic names are unique per test).
static ACKED: Mutex<BTreeMap<String, Vec<ReadRecord>>> = Mutex::new(BTreeMap::new());

/// One delivery report: `(record index, partition, offset, timestamp)` or the error.
type Ack = Result<(usize, i32, i64, Option<i64>), (usize, String)>;

/// `r` as a record to send to `topic`, with `i` as its delivery opaque.
fn base_record<'a>(
    topic: &'a str,
    i: usize,
    r: &'a TestRecord,
) -> BaseRecord<'a, [u8], [u8], usize> {
    let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: v.as_deref(),
        })
    });
    let mut rec = BaseRecord::with_opaque_to(topic, i).headers(headers);
    if let Some(p) = r.partition {
        rec = rec.partition(p);
    }
    if let Some(k) = r.key.as_deref() {
        rec = rec.key(k);
    }
    if let Some(v) = r.value.as_deref() {
        rec = rec.payload(v);
    }
    if let Some(t) = r.timestamp {
        rec = rec.timestamp(t);
    }
    rec
}

/// Collects the delivery reports of [`Kafka::produce`].
#[derive(Default)]
struct AckContext {
    acks: Mutex<Vec<Ack>>,
}

impl AckContext {
    /// The delivery reports so far, as the acknowledged records of `records` (by index);
    /// panics on a failed delivery, naming the record and `what` it was.
    fn take_acked(&self, records: &[TestRecord], what: &str) -> Vec<ReadRecord> {
        let acks = std::mem::take(&mut *self.acks.lock().expect("acks"));
        acks.into_iter()
            .map(|ack| match ack {
                Ok((i, partition, offset, timestamp)) => ReadRecord {
                    partition,
                    offset,
                    key: records[i].key.clone(),
                    value: records[i].value.clone(),
                    headers: records[i].headers.clone(),
                    timestamp,
                },
                Err((i, e)) => panic!(
                    "the broker did not acknowledge record #{i} {what}: {e}; the test's ground truth is the acknowledged sends"
                ),
            })
            .collect()
    }
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        let ack = match result {
            Ok(m) => Ok((i, m.partition(), m.offset(), m.timestamp().to_millis())),
            Err((e, m)) => Err((i, format!("{e} (partition {})", m.partition()))),
        };
        self.acks.lock().expect("acks").push(ack);
    }
}

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestRecord {
    /// Partition, or `None` for the key's partition.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record timestamp (`CreateTime`, milliseconds); `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
}

impl TestRecord {
    /// The same record with timestamp `ms`.
    #[must_use]
    pub fn at(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// A record with a text key and value, to a chosen partition.
    pub fn new(partition: i32, key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            partition: Some(partition),
            key: Some(key.into().into_bytes()),
            value: Some(value.into().into_bytes()),
            headers: Vec::new(),
            timestamp: None,
        }
    }
}

/// Which records a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones).
    ReadCommitted,
    /// Everything in the log, aborted transactions included.
    ReadUncommitted,
}

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read_committed",
            Self::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// A unique name for a topic, group or transactional id: `{prefix}-{random}`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

impl Kafka {
    /// Creates a topic with `partitions` partitions and the cluster's default replication.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(TopicSpec::new(name, partitions));
    }

    /// Creates a topic as specified.
    pub fn create_topic_with(&self, spec: TopicSpec) {
        let name = spec.name.clone();
        self.admin()
            .create_topics(&[spec])
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
    }

    /// Produces records (idempotent, acks=all), waits until all are acknowledged, and returns
    /// them as the broker acknowledged them (partition, offset, timestamp). A send the broker
    /// did not acknowledge fails the test: the acknowledged sends are the tests' ground truth
    /// ([`acknowledged`](Self::acknowledged), [`read_acknowledged`](Self::read_acknowledged)),
    /// as in Kafka's own transaction system tests.
    pub fn produce(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = TestRecord>,
    ) -> Vec<ReadRecord> {
        let records: Vec<TestRecord> = records.into_iter().collect();
        let producer: ThreadedProducer<AckContext> = base_config(self.bootstrap_servers())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(AckContext::default())
            .expect("test producer");
        for (i, r) in records.iter().enumerate() {
            let mut rec = base_record(topic, i, r);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("producing to {topic}: {e}"),
                }
            }
        }
        // Long enough to ride out the brokers' outages in the fault tests (two of three down,
        // then back), short of librdkafka's own message timeout (300 s).
        producer
            .flush(Duration::from_secs(240))
            .unwrap_or_else(|e| panic!("flushing records to {topic}: {e}"));
        let acked = producer
            .context()
            .take_acked(&records, &format!("sent to {topic}"));
        assert_eq!(
            acked.len(),
            records.len(),
            "{} of {} records sent to {topic} have no delivery report",
            records.len() - acked.len(),
            records.len()
        );
        ACKED
            .lock()
            .expect("acked")
            .entry(topic.to_string())
            .or_default()
            .extend(acked.iter().cloned());
        acked
    }

    /// Produces `transactions` to `topic` as an exactly-once upstream would: one transaction
    /// each, committed, or aborted where `abort(i)` says so. Returns the acknowledged records of
    /// the committed transactions (the ground truth, as for [`produce`](Self::produce)) and of
    /// the aborted ones (what a `read_committed` reader must never see). The log ends with a
    /// transaction marker.
    pub fn produce_transactions(
        &self,
        topic: &str,
        transactions: Vec<Vec<TestRecord>>,
        abort: impl Fn(usize) -> bool,
    ) -> (Vec<ReadRecord>, Vec<ReadRecord>) {
        let timeout = Duration::from_secs(30);
        let producer: ThreadedProducer<AckContext> = base_config(self.bootstrap_servers())
            .set("transactional.id", unique("weir-testkit-upstream"))
            .set("linger.ms", "5")
            .create_with_context(AckContext::default())
            .expect("transactional test producer");
        producer
            .init_transactions(timeout)
            .unwrap_or_else(|e| panic!("init_transactions for {topic}: {e}"));
        let (mut committed, mut aborted) = (Vec::new(), Vec::new());
        for (t, records) in transactions.into_iter().enumerate() {
            producer
                .begin_transaction()
                .unwrap_or_else(|e| panic!("begin_transaction for {topic}: {e}"));
            for (i, r) in records.iter().enumerate() {
                producer
                    .send(base_record(topic, i, r))
                    .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
            }
            producer
                .flush(timeout)
                .unwrap_or_else(|e| panic!("flushing transaction #{t} to {topic}: {e}"));
            let acked = producer
                .context()
                .take_acked(&records, &format!("of transaction #{t} to {topic}"));
            if abort(t) {
                producer
                    .abort_transaction(timeout)
                    .unwrap_or_else(|e| panic!("aborting transaction #{t} on {topic}: {e}"));
                aborted.extend(acked);
            } else {
                producer
                    .commit_transaction(timeout)
                    .unwrap_or_else(|e| panic!("committing transaction #{t} on {topic}: {e}"));
                committed.extend(acked);
            }
        }
        ACKED
            .lock()
            .expect("acked")
            .entry(topic.to_string())
            .or_default()
            .extend(committed.iter().cloned());
        (committed, aborted)
    }

    /// Every record the test kit's [`produce`](Self::produce) got acknowledged on `topic` (by any
    /// [`Kafka`] handle of this process), in partition and offset order.
    pub fn acknowledged(&self, topic: &str) -> Vec<ReadRecord> {
        let mut acked = ACKED
            .lock()
            .expect("acked")
            .get(topic)
            .cloned()
            .unwrap_or_default();
        acked.sort_by_key(|r| (r.partition, r.offset));
        acked
    }

    /// Reads `topic` to its end (`read_committed`) and checks it against the acknowledged sends:
    /// every acknowledged record at its offset with its key, value and headers, and nothing the
    /// test did not send. Returns what was read (with the log's timestamps), the ground truth
    /// to verify an application's output against.
    ///
    /// # Panics
    ///
    /// When nothing was produced to `topic` through [`produce`](Self::produce), or the log
    /// differs from the acknowledged sends (naming the first difference).
    pub fn read_acknowledged(&self, topic: &str) -> Vec<ReadRecord> {
        let acked = self.acknowledged(topic);
        assert!(
            !acked.is_empty(),
            "no acknowledged sends to {topic}: produce its records with Kafka::produce"
        );
        let read = self.read_to_end(topic, Isolation::ReadCommitted);
        let same = |a: &ReadRecord, r: &ReadRecord| {
            (a.partition, a.offset, &a.key, &a.value, &a.headers)
                == (r.partition, r.offset, &r.key, &r.value, &r.headers)
        };
        if let Some(i) =
            (0..acked.len().max(read.len())).find(|&i| match (acked.get(i), read.get(i)) {
                (Some(a), Some(r)) => !same(a, r),
                _ => true,
            })
        {
            panic!(
                "{topic} does not hold what the broker acknowledged: {} acknowledged, {} read; first difference at #{i}: acknowledged {:?}, read {:?}",
                acked.len(),
                read.len(),
                acked.get(i).map(|r| (r.partition, r.offset, r.key_text())),
                read.get(i).map(|r| (r.partition, r.offset, r.key_text())),
            );
        }
        read
    }

    /// `(partition → end offset)`: the last stable offset under `read_committed`, the high
    /// watermark under `read_uncommitted`.
    pub fn end_offsets(&self, topic: &str, isolation: Isolation) -> BTreeMap<i32, i64> {
        self.admin()
            .watermarks(topic, isolation == Isolation::ReadCommitted)
            .unwrap_or_else(|e| panic!("end offsets of {topic}: {e}"))
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect()
    }

    /// Reads every record of `topic` from the beginning to its current end, in partition
    /// then offset order.
    pub fn read_to_end(&self, topic: &str, isolation: Isolation) -> Vec<ReadRecord> {
        let ends = self.end_offsets(topic, isolation);
        let consumer: BaseConsumer<ReaderContext> = base_config(self.bootstrap_servers())
            .set("group.id", unique("weir-testkit-reader"))
            .set("isolation.level", isolation.name())
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // librdkafka's default (1 s) stops fetching for a second whenever the local queue
            // was full: a reader that reads a large topic to its end would mostly wait.
            .set("fetch.queue.backoff.ms", "10")
            .create_with_context(ReaderContext)
            .expect("test reader");
        let mut tpl = TopicPartitionList::new();
        let mut pending: BTreeSet<i32> = BTreeSet::new();
        for (&p, &end) in &ends {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
            if end > 0 {
                pending.insert(p);
            }
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "reading {topic} ({}) did not reach the end offsets {ends:?} within 120 s; still waiting for partitions {pending:?}",
                isolation.name()
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    if m.offset() + 1 >= ends[&m.partition()] {
                        pending.remove(&m.partition());
                    }
                    if m.offset() < ends[&m.partition()] {
                        out.push(ReadRecord::from_message(&m));
                    }
                }
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }

    /// The offsets `group` has committed on `topic` (`None`: no commit for that partition).
    pub fn committed_offsets(&self, group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
        self.admin()
            .committed_offsets(group, topic)
            .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"))
    }

    /// Moves `group`'s committed offsets on `topic` (the group must have no active members),
    /// as `kafka-consumer-groups.sh --reset-offsets` does.
    pub fn set_committed_offsets(&self, group: &str, topic: &str, offsets: &[(i32, i64)]) {
        let client: BaseConsumer = base_config(self.bootstrap_servers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offsets client");
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .expect("offset");
        }
        client
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .unwrap_or_else(|e| panic!("committing offsets for {group} on {topic}: {e}"));
    }

    /// Checks that no transaction is left open on `topic`: on every partition the
    /// `read_committed` end (last stable offset) equals the `read_uncommitted` end (high
    /// watermark). Returns the partitions that differ, with both ends.
    pub fn open_transactions(&self, topic: &str) -> Vec<(i32, i64, i64)> {
        let committed = self.end_offsets(topic, Isolation::ReadCommitted);
        let uncommitted = self.end_offsets(topic, Isolation::ReadUncommitted);
        committed
            .iter()
            .filter(|(p, lso)| uncommitted.get(p) != Some(lso))
            .map(|(p, lso)| (*p, *lso, uncommitted[p]))
            .collect()
    }

    /// Starts a `read_committed` reader of `topic` that runs *during* a test, from the beginning,
    /// in a thread of its own; [`LiveReader::finish`] stops it once it has read to the end.
    /// What it saw, compared with a final read, exposes aborted reads
    /// ([`crate::Report::check_live_read`]).
    pub fn live_reader(&self, topic: &str) -> LiveReader {
        let partitions: Vec<i32> = self
            .end_offsets(topic, Isolation::ReadCommitted)
            .into_keys()
            .collect();
        let consumer: BaseConsumer<ReaderContext> = base_config(self.bootstrap_servers())
            .set("group.id", unique("weir-testkit-live"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create_with_context(ReaderContext)
            .expect("live reader");
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let (ends_tx, ends_rx) = std::sync::mpsc::channel::<BTreeMap<i32, i64>>();
        let name = topic.to_string();
        let handle = std::thread::spawn(move || {
            let mut out: Vec<ReadRecord> = Vec::new();
            let mut next: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
            let mut ends: Option<(BTreeMap<i32, i64>, Instant)> = None;
            loop {
                if ends.is_none() {
                    if let Ok(e) = ends_rx.try_recv() {
                        ends = Some((e, Instant::now() + Duration::from_secs(120)));
                    }
                }
                if let Some((ends, deadline)) = &ends {
                    if ends
                        .iter()
                        .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end)
                    {
                        break;
                    }
                    // The position also moves past aborted records and transaction markers.
                    if let Ok(pos) = consumer.position() {
                        for e in pos.elements() {
                            if let Offset::Offset(o) = e.offset() {
                                let n = next.entry(e.partition()).or_insert(0);
                                *n = (*n).max(o);
                            }
                        }
                    }
                    assert!(
                        Instant::now() < *deadline,
                        "the live reader of {name} did not reach {ends:?} within 120 s (at {next:?})"
                    );
                }
                match consumer.poll(Duration::from_millis(100)) {
                    None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => tracing::warn!(topic = %name, error = %e, "live reader"),
                    Some(Ok(m)) => {
                        next.insert(m.partition(), m.offset() + 1);
                        out.push(ReadRecord::from_message(&m));
                    }
                }
            }
            out
        });
        LiveReader {
            topic: topic.to_string(),
            ends: ends_tx,
            handle,
        }
    }

    /// The group's state (e.g. `Empty`, `Stable`, `Dead` for a group that never existed) and
    /// its members' client ids.
    pub fn group_members(&self, group: &str) -> (String, Vec<String>) {
        let client: BaseConsumer = base_config(self.bootstrap_servers())
            .create()
            .expect("group client");
        // The group coordinator may still be loading (a new group, a moved coordinator).
        let deadline = Instant::now() + Duration::from_secs(60);
        let list = loop {
            match client.fetch_group_list(Some(group), Duration::from_secs(30)) {
                Ok(list) => break list,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(group, error = %e, "describing the group; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("describing group {group}: {e}"),
            }
        };
        list.groups()
            .iter()
            .find(|g| g.name() == group)
            .map(|g| {
                (
                    g.state().to_string(),
                    g.members()
                        .iter()
                        .map(|m| m.client_id().to_string())
                        .collect(),
                )
            })
            .unwrap_or_else(|| ("Dead".to_string(), Vec::new()))
    }
}

/// A `read_committed` reader running during a test: see [`Kafka::live_reader`].
#[derive(Debug)]
pub struct LiveReader {
    topic: String,
    ends: std::sync::mpsc::Sender<BTreeMap<i32, i64>>,
    handle: std::thread::JoinHandle<Vec<ReadRecord>>,
}

impl LiveReader {
    /// Reads on to the topic's current `read_committed` end, stops, and returns everything it
    /// saw in the order it saw it.
    pub fn finish(self, kafka: &Kafka) -> Vec<ReadRecord> {
        let ends = kafka.end_offsets(&self.topic, Isolation::ReadCommitted);
        let _ = self.ends.send(ends);
        self.handle.join().expect("the live reader panicked")
    }
}
