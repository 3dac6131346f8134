//! What the CLI asks the cluster: groups and their members, committed offsets, watermarks,
//! offsets by time; and the one write it makes, committing a group's offsets.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use weir_kafka::admin::Admin;
use weir_kafka::clients::base_config;

/// A member of a consumer group.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// Partitions assigned to it: `(topic, partition)`.
    pub assignment: Vec<(String, i32)>,
}

/// A consumer group as the coordinator describes it.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub group: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<Member>,
}

/// A committed offset and its metadata.
#[derive(Clone, Debug)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
}

/// The cluster, for the CLI's verbs. Every call waits at most the `--timeout`.
pub struct Cluster {
    pub bootstrap: String,
    pub admin: Admin,
    pub timeout: Duration,
    /// read_committed: last stable offsets, offsets for times, group listing.
    metadata: BaseConsumer,
    /// read_uncommitted: log end offsets.
    uncommitted: BaseConsumer,
    /// Topics already in both clients' metadata caches.
    known: RefCell<BTreeSet<String>>,
}

impl Cluster {
    /// Connects and checks that a broker answers (a clear error naming the address if not).
    pub fn connect(bootstrap: &str, timeout: Duration) -> anyhow::Result<Self> {
        let admin = Admin::new(bootstrap, timeout)?;
        admin.ping()?;
        let metadata = base_config(bootstrap)
            .set("isolation.level", "read_committed")
            .create()
            .context("creating a metadata client")?;
        let uncommitted = base_config(bootstrap)
            .set("isolation.level", "read_uncommitted")
            .create()
            .context("creating a read_uncommitted client")?;
        Ok(Self {
            bootstrap: bootstrap.to_string(),
            admin,
            timeout,
            metadata,
            uncommitted,
            known: RefCell::new(BTreeSet::new()),
        })
    }

    /// Every topic (internal ones excluded) and its partition count.
    pub fn topics(&self) -> anyhow::Result<BTreeMap<String, i32>> {
        let md = self
            .metadata
            .fetch_metadata(None, self.timeout)
            .context("fetching the cluster's metadata")?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// The partitions of `topic`, or a clear error if it does not exist.
    pub fn partitions(&self, topic: &str) -> anyhow::Result<i32> {
        Ok(self.admin.partition_count(topic)?)
    }

    /// Every group the coordinators know (or one group, described).
    pub fn groups(&self, group: Option<&str>) -> anyhow::Result<Vec<Group>> {
        // A coordinator that is still loading answers with an error for a while.
        let deadline = Instant::now() + self.timeout;
        let list = loop {
            match self.metadata.fetch_group_list(group, self.timeout) {
                Ok(list) => break list,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "listing groups; retrying");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e).context("listing the consumer groups"),
            }
        };
        Ok(list
            .groups()
            .iter()
            .filter(|g| g.state() != "Dead")
            .map(|g| Group {
                group: g.name().to_string(),
                state: g.state().to_string(),
                protocol_type: g.protocol_type().to_string(),
                protocol: g.protocol().to_string(),
                members: g
                    .members()
                    .iter()
                    .map(|m| Member {
                        member_id: m.id().to_string(),
                        client_id: m.client_id().to_string(),
                        host: m.client_host().to_string(),
                        assignment: m.assignment().map(parse_assignment).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect())
    }

    /// One group (members, state); `None` when the coordinator does not know it.
    pub fn group(&self, group: &str) -> anyhow::Result<Option<Group>> {
        Ok(self
            .groups(Some(group))?
            .into_iter()
            .find(|g| g.group == group))
    }

    /// The offsets `group` committed on `topics` (partition counts given), stable offsets.
    pub fn committed(
        &self,
        group: &str,
        topics: &BTreeMap<String, i32>,
    ) -> anyhow::Result<BTreeMap<(String, i32), Committed>> {
        Ok(self
            .admin
            .committed(group, topics)?
            .into_iter()
            .map(|(tp, (offset, metadata))| (tp, Committed { offset, metadata }))
            .collect())
    }

    /// Every committed offset of `group`, on any topic.
    pub fn all_committed(&self, group: &str) -> anyhow::Result<BTreeMap<(String, i32), Committed>> {
        self.committed(group, &self.topics()?)
    }

    /// `(log start, log end, last stable)` offsets of a partition.
    pub fn watermarks(&self, topic: &str, partition: i32) -> anyhow::Result<(i64, i64, i64)> {
        // The clients answer watermark queries only for topics in their metadata cache.
        if self.known.borrow_mut().insert(topic.to_string()) {
            self.metadata
                .fetch_metadata(Some(topic), self.timeout)
                .with_context(|| format!("metadata of {topic}"))?;
            self.uncommitted
                .fetch_metadata(Some(topic), self.timeout)
                .with_context(|| format!("metadata of {topic}"))?;
        }
        let (low, lso) = self
            .metadata
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("last stable offset of {topic}/{partition}"))?;
        let (_, high) = self
            .uncommitted
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("log end offset of {topic}/{partition}"))?;
        Ok((low, high, lso))
    }

    /// The first offset of each partition with a timestamp at or after `ms` (`None`: none yet).
    pub fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        ms: i64,
    ) -> anyhow::Result<BTreeMap<i32, Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                .context("a timestamp query")?;
        }
        let found = self
            .metadata
            .offsets_for_times(tpl, self.timeout)
            .with_context(|| format!("offsets for time {ms} on {topic}"))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                (e.partition(), o)
            })
            .collect())
    }

    /// Commits `offsets` (with metadata) for `group`. The group must have no active member.
    pub fn commit(
        &self,
        group: &str,
        offsets: &[((String, i32), i64, String)],
    ) -> anyhow::Result<()> {
        let client = self.group_client(group)?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o, meta) in offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .context("an offset to commit")?;
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(meta.clone());
            }
        }
        client
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| format!("committing group {group:?}'s new offsets"))
    }

    /// Deletes `topics` and waits until the cluster no longer lists them.
    pub fn delete_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.admin.delete_topics(&names)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let present = self.topics()?;
            if topics.iter().all(|t| !present.contains_key(t)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the topics {topics:?} were still listed 60 s after their deletion");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn group_client(&self, group: &str) -> anyhow::Result<BaseConsumer> {
        base_config(&self.bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a group client")
    }
}

/// Decodes a consumer protocol assignment: version (int16), then an array of (topic string,
/// partition int32 array), then user data, all big-endian (Kafka's `ConsumerProtocol`).
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    fn i16_(b: &mut &[u8]) -> Option<i16> {
        Some(i16::from_be_bytes(take(b, 2)?.try_into().ok()?))
    }
    fn i32_(b: &mut &[u8]) -> Option<i32> {
        Some(i32::from_be_bytes(take(b, 4)?.try_into().ok()?))
    }
    let mut b = bytes;
    let mut out = Vec::new();
    let parse = |b: &mut &[u8], out: &mut Vec<(String, i32)>| -> Option<()> {
        i16_(b)?;
        let topics = i32_(b)?;
        for _ in 0..topics.max(0) {
            let len = i16_(b)?;
            let topic = String::from_utf8(take(b, len.max(0) as usize)?.to_vec()).ok()?;
            let n = i32_(b)?;
            for _ in 0..n.max(0) {
                out.push((topic.clone(), i32_(b)?));
            }
        }
        Some(())
    };
    let _ = parse(&mut b, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode_and_garbage_gives_what_was_read() {
        let mut b = vec![0, 1, 0, 0, 0, 2];
        for (topic, parts) in [("orders", vec![2i32, 0]), ("b", vec![])] {
            b.extend((topic.len() as i16).to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        assert_eq!(
            parse_assignment(&b),
            vec![("orders".to_string(), 0), ("orders".to_string(), 2)]
        );
        assert_eq!(parse_assignment(&b[..12]), Vec::<(String, i32)>::new());
        assert_eq!(parse_assignment(&[]), Vec::<(String, i32)>::new());
    }
}
