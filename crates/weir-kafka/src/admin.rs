//! Topics, watermarks and committed offsets: blocking calls with explicit timeouts.
//!
//! These are used at start-up (is the cluster reachable, do the topics exist), by the test kit,
//! and by tools. Run them off async workers (`spawn_blocking`) when called from async code.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use rdkafka::ClientConfig;

use crate::clients::base_config;

/// An admin failure: what was asked, of which cluster, and why.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No broker answered.
    #[error(
        "cannot reach the Kafka cluster at {bootstrap} within {timeout:?}: {source}{}. Check \
         bootstrap.servers, the security settings if any (kafka.security.protocol, kafka.sasl.*, \
         kafka.ssl.*), and that the brokers are running and reachable from here",
        cause.as_ref().map(|c| format!(" (the client's last error: {c})")).unwrap_or_default()
    )]
    Unreachable {
        /// The bootstrap servers.
        bootstrap: String,
        /// How long weir waited.
        timeout: Duration,
        /// The client error.
        source: Box<KafkaError>,
        /// What the client last reported while trying (a refused TLS handshake, failed SASL
        /// authentication, ...).
        cause: Option<String>,
    },
    /// A topic does not exist.
    #[error("topic {topic:?} does not exist on {bootstrap}; create it first (or check the name)")]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        bootstrap: String,
    },
    /// Any other client error.
    #[error("{what} failed on {bootstrap}: {source}")]
    Kafka {
        /// The operation.
        what: String,
        /// The bootstrap servers.
        bootstrap: String,
        /// The client error.
        source: Box<KafkaError>,
    },
}

/// Remembers the last error librdkafka reported on a client (its error callback), so that a
/// request that times out can say why: refused TLS, failed SASL authentication, ...
#[derive(Debug, Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    fn last(&self) -> Option<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl rdkafka::ClientContext for LastError {
    // librdkafka logs a connection's failure (`FAIL`: refused, TLS handshake, SASL
    // authentication) from its own threads as it happens; error events would only arrive when
    // this client is polled, which it never is.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" || (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Error as i32) {
            if let Ok(mut last) = self.0.lock() {
                *last = Some(log_message.to_string());
            }
        }
        rdkafka::client::DefaultClientContext.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "admin client error");
        if let Ok(mut last) = self.0.lock() {
            *last = Some(reason.to_string());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// Committed offsets by (topic, partition): the offset and its metadata.
pub type CommittedOffsets = BTreeMap<(String, i32), (i64, String)>;

/// A topic to create.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor; -1 takes the broker's `default.replication.factor`.
    pub replication: i32,
    /// Topic configs (`cleanup.policy`, `min.insync.replicas`, ...).
    pub configs: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions and the broker's default replication factor
    /// (`default.replication.factor`: 1 on a single local broker, 3 on a 3-broker cluster).
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: -1,
            configs: Vec::new(),
        }
    }
}

/// Blocking admin operations against one cluster.
pub struct Admin {
    bootstrap: String,
    consumer: BaseConsumer<LastError>,
    /// The client settings every client of this admin is made with.
    base: ClientConfig,
    admin: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Admin {
    /// Connects lazily to `bootstrap`; every call waits at most `timeout`.
    pub fn new(bootstrap: &str, timeout: Duration) -> Result<Self, AdminError> {
        Self::with_config(&base_config(bootstrap), timeout)
    }

    /// An application's admin client: its `kafka.*` passthrough (TLS, SASL, ...) applies
    /// ([`client_config`](crate::clients::client_config)).
    pub fn for_app(config: &weir_core::Config, timeout: Duration) -> Result<Self, AdminError> {
        Self::with_config(&crate::clients::client_config(config), timeout)
    }

    /// Connects lazily with `base` (which names `bootstrap.servers`); every call waits at
    /// most `timeout`.
    pub fn with_config(base: &ClientConfig, timeout: Duration) -> Result<Self, AdminError> {
        let bootstrap = base
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_string();
        let kafka = |what: &str| {
            let bootstrap = bootstrap.clone();
            let what = what.to_string();
            move |source| AdminError::Kafka {
                what,
                bootstrap,
                source: Box::new(source),
            }
        };
        let consumer: BaseConsumer<LastError> = base
            .clone()
            .set("isolation.level", "read_committed")
            .create_with_context(LastError::default())
            .map_err(kafka("creating a metadata client"))?;
        let admin = base.create().map_err(kafka("creating an admin client"))?;
        Ok(Self {
            bootstrap,
            base: base.clone(),
            consumer,
            admin,
            timeout,
        })
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(KafkaError) -> AdminError + '_ {
        let what = what.into();
        move |source| AdminError::Kafka {
            what,
            bootstrap: self.bootstrap.clone(),
            source: Box::new(source),
        }
    }

    /// Checks that a broker answers a metadata request.
    pub fn ping(&self) -> Result<(), AdminError> {
        self.consumer
            .fetch_metadata(None, self.timeout)
            .map(|_| ())
            .inspect_err(|_| {
                // Error events (a failed SASL authentication, ...) reach the context when
                // the client is polled.
                let _ = self.consumer.poll(Duration::ZERO);
            })
            .map_err(|source| AdminError::Unreachable {
                bootstrap: self.bootstrap.clone(),
                timeout: self.timeout,
                source: Box::new(source),
                cause: self.consumer.context().last(),
            })
    }

    /// The partition count of `topic`, or [`AdminError::MissingTopic`].
    pub fn partition_count(&self, topic: &str) -> Result<i32, AdminError> {
        let md = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|source| match source {
                KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                    AdminError::MissingTopic {
                        topic: topic.to_string(),
                        bootstrap: self.bootstrap.clone(),
                    }
                }
                source => AdminError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    timeout: self.timeout,
                    source: Box::new(source),
                    cause: self.consumer.context().last(),
                },
            })?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as i32)
            }
            _ => Err(AdminError::MissingTopic {
                topic: topic.to_string(),
                bootstrap: self.bootstrap.clone(),
            }),
        }
    }

    /// Creates topics; a topic that already exists is not an error.
    pub fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), AdminError> {
        let configs: Vec<Vec<(&str, &str)>> = topics
            .iter()
            .map(|t| {
                t.configs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&configs)
            .map(|(t, cfg)| {
                cfg.iter().fold(
                    NewTopic::new(
                        &t.name,
                        t.partitions,
                        TopicReplication::Fixed(t.replication),
                    ),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = futures::executor::block_on(self.admin.create_topics(&new, &opts))
            .map_err(self.err("create topics"))?;
        for r in results {
            if let Err((topic, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(AdminError::Kafka {
                        what: format!("creating topic {topic:?}"),
                        bootstrap: self.bootstrap.clone(),
                        source: Box::new(KafkaError::AdminOp(code)),
                    });
                }
            }
        }
        // Creation is asynchronous on the brokers: wait until metadata shows every topic.
        for t in topics {
            let deadline = std::time::Instant::now() + self.timeout;
            while self.partition_count(&t.name).ok() != Some(t.partitions) {
                if std::time::Instant::now() > deadline {
                    return Err(AdminError::MissingTopic {
                        topic: t.name.clone(),
                        bootstrap: self.bootstrap.clone(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The value of topic config `name` (e.g. `cleanup.policy`), as the broker reports it.
    pub fn topic_config(&self, topic: &str, name: &str) -> Result<Option<String>, AdminError> {
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let spec = ResourceSpecifier::Topic(topic);
        let results = futures::executor::block_on(self.admin.describe_configs([&spec], &opts))
            .map_err(self.err(format!("describing the configs of {topic:?}")))?;
        match results.into_iter().next() {
            Some(Ok(resource)) => Ok(resource.get(name).and_then(|e| e.value.clone())),
            Some(Err(code)) => Err(self.err(format!("describing the configs of {topic:?}"))(
                KafkaError::AdminOp(code),
            )),
            None => Ok(None),
        }
    }

    /// Deletes topics (missing ones are ignored).
    pub fn delete_topics(&self, topics: &[&str]) -> Result<(), AdminError> {
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        futures::executor::block_on(self.admin.delete_topics(topics, &opts))
            .map_err(self.err("delete topics"))?;
        Ok(())
    }

    /// Grows `topic` to `partitions` partitions.
    pub fn add_partitions(&self, topic: &str, partitions: usize) -> Result<(), AdminError> {
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let new = rdkafka::admin::NewPartitions::new(topic, partitions);
        let results = futures::executor::block_on(self.admin.create_partitions(&[new], &opts))
            .map_err(self.err("create partitions"))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(self.err("create partitions")(KafkaError::AdminOp(code)));
            }
        }
        Ok(())
    }

    /// `(low, high)` watermarks of every partition of `topic`, where `high` is the last stable
    /// offset when `read_committed` and the high watermark otherwise.
    pub fn watermarks(
        &self,
        topic: &str,
        read_committed: bool,
    ) -> Result<BTreeMap<i32, (i64, i64)>, AdminError> {
        let partitions = self.partition_count(topic)?;
        let reader: BaseConsumer<LastError>;
        let client = if read_committed {
            &self.consumer
        } else {
            // The same client settings (TLS, SASL, ...), read_uncommitted.
            reader = self
                .base
                .clone()
                .set("isolation.level", "read_uncommitted")
                .create_with_context(LastError::default())
                .map_err(self.err("creating a read_uncommitted client"))?;
            &reader
        };
        (0..partitions)
            .map(|p| {
                client
                    .fetch_watermarks(topic, p, self.timeout)
                    .map(|w| (p, w))
                    .map_err(self.err(format!("watermarks of {topic}/{p}")))
            })
            .collect()
    }

    /// The offsets group `group` has committed on `topic`, by partition (`None`: no commit).
    pub fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, AdminError> {
        let partitions = self.partition_count(topic)?;
        let committed =
            self.committed(group, &BTreeMap::from([(topic.to_string(), partitions)]))?;
        Ok((0..partitions)
            .map(|p| (p, committed.get(&(topic.to_string(), p)).map(|c| c.0)))
            .collect())
    }

    /// The offsets (and their metadata) group `group` has committed on the given topics (with
    /// their partition counts); partitions without a commit are left out.
    pub fn committed(
        &self,
        group: &str,
        topics: &BTreeMap<String, i32>,
    ) -> Result<CommittedOffsets, AdminError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in topics {
            for p in 0..*partitions {
                tpl.add_partition(topic, p);
            }
        }
        if tpl.count() == 0 {
            return Ok(BTreeMap::new());
        }
        let client: BaseConsumer = base_config(&self.bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(self.err("creating an offsets client"))?;
        // Right after a broker starts, the group coordinator may still be loading: retry
        // until the timeout.
        let deadline = std::time::Instant::now() + self.timeout;
        let committed = loop {
            match client.committed_offsets(tpl.clone(), self.timeout) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, group, "committed offsets not available yet; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(self.err(format!("committed offsets of group {group:?}"))(e)),
            }
        };
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((
                    (e.topic().to_string(), e.partition()),
                    (o, e.metadata().to_string()),
                )),
                _ => None,
            })
            .collect())
    }
}
