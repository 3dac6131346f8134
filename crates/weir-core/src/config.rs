//! Application configuration: Kafka-style names, a TOML file, a chained builder, validation.
//!
//! Keys are flat, dotted names as in Kafka's `.properties` files. In TOML they may be written
//! plain (`commit.interval.ms = 100`, which TOML reads as nested tables) or quoted
//! (`"commit.interval.ms" = 100`): both flatten to the same key. Three prefixes pass raw
//! librdkafka properties through:
//!
//! - `kafka.<property>` to both the consumer and the producer,
//! - `consumer.<property>` to the consumer only,
//! - `producer.<property>` to the producer only.
//!
//! Properties that weir manages itself (`group.id`, `isolation.level`, `transactional.id`, ...)
//! are refused in the passthrough with a pointer to the weir key that sets them. Every other key
//! is checked against the list below; an unknown key is an error, never silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The processing guarantee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs, input offsets (and state) commit atomically in one Kafka transaction per commit
    /// interval. Consumers of the outputs must read with `isolation.level=read_committed`.
    #[default]
    #[serde(alias = "exactly_once_v2")]
    ExactlyOnce,
    /// No transactions: input offsets are committed only after every output of the records
    /// before them was acknowledged. A crash may repeat outputs, never lose them.
    AtLeastOnce,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ExactlyOnce => "exactly_once",
            Self::AtLeastOnce => "at_least_once",
        })
    }
}

/// Where to start reading a partition for which the group has no committed offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// The earliest offset still in the log.
    #[default]
    Earliest,
    /// The end of the log (the last stable offset under exactly_once): only new records.
    Latest,
    /// Refuse to start: an error names the partitions that have no committed offset.
    None,
}

/// What happens to a record the operator reports as poison with `Context::poison`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonPolicy {
    /// Stop without committing past the record; the error names topic, partition and offset.
    #[default]
    Fail,
    /// Count and log the record, and go on.
    Skip,
    /// Produce the record, with `weir.error.*` headers, to `dead.letter.topic` inside the same
    /// transaction, and go on.
    DeadLetter,
}

/// How the consumer group assigns partitions to instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol with the cooperative-sticky assignor: incremental rebalances, the
    /// members' session and heartbeat timeouts set on the client.
    #[default]
    Classic,
    /// KIP-848's consumer protocol (Kafka 4.0+ brokers): the broker computes assignments and
    /// owns the session and heartbeat timeouts (`group.consumer.*` broker settings).
    Consumer,
}

/// A weir application's configuration. See `docs/configuration.md` for every key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `application.id`: names the consumer group, prefixes the transactional id and names the
    /// state directory. Letters, digits, `.`, `_` and `-` only.
    #[serde(rename = "application.id")]
    pub application_id: String,

    /// `bootstrap.servers`: the Kafka brokers, `host:port[,host:port...]`.
    #[serde(rename = "bootstrap.servers")]
    pub bootstrap_servers: String,

    /// `input.topics`: the topics to consume.
    #[serde(rename = "input.topics")]
    pub input_topics: Vec<String>,

    /// `output.topic`: where `Output`s without a topic go.
    #[serde(rename = "output.topic", default)]
    pub output_topic: Option<String>,

    /// `processing.guarantee`: `exactly_once` (default; alias `exactly_once_v2`) or
    /// `at_least_once`.
    #[serde(rename = "processing.guarantee", default)]
    pub guarantee: Guarantee,

    /// `commit.interval.ms`: how long one transaction (exactly_once) or one offset commit
    /// period (at_least_once) lasts. Default 100 ms.
    #[serde(
        rename = "commit.interval.ms",
        default = "defaults::commit_interval",
        with = "millis"
    )]
    pub commit_interval: Duration,

    /// `transaction.timeout.ms`: the broker aborts a transaction left open this long. Must be
    /// above `commit.interval.ms` and within the broker's `transaction.max.timeout.ms`
    /// (900000 by default). Default 10000, as Kafka Streams: when an instance dies with a
    /// transaction open, the partitions' new owner waits up to this long for the broker to
    /// abort it.
    #[serde(
        rename = "transaction.timeout.ms",
        default = "defaults::transaction_timeout",
        with = "millis"
    )]
    pub transaction_timeout: Duration,

    /// `stall.timeout.ms`: how long weir keeps replacing a failing producer (a broker outage,
    /// a lost controller quorum) with no successful commit in between before it stops the
    /// application with the last error. Default 300000 (5 minutes), as Kafka Streams'
    /// `task.timeout.ms`. Must be at least `transaction.timeout.ms`.
    #[serde(
        rename = "stall.timeout.ms",
        default = "defaults::stall_timeout",
        with = "millis"
    )]
    pub stall_timeout: Duration,

    /// `group.protocol`: `classic` (default; cooperative-sticky) or `consumer` (KIP-848).
    #[serde(rename = "group.protocol", default)]
    pub group_protocol: GroupProtocol,

    /// `static.membership`: join the group as a static member (KIP-345) with
    /// `group.instance.id = {application.id}-{instance.id}`. A restarted instance then gets its
    /// partitions back at once, without a rebalance and without waiting for its old session to
    /// expire; but a stopped one no longer leaves the group, so its partitions move only after
    /// the session timeout. Default false.
    #[serde(rename = "static.membership", default)]
    pub static_membership: bool,

    /// `commit.overlap`: under exactly_once, each interval commit runs in the background on one
    /// transactional producer while the next transaction fills on a second one (transactional
    /// id `{application.id}-{instance.id}#2`), so processing does not wait for the commit round
    /// trips. With state stores, the committing transaction's writes are prepared first and
    /// stay readable under the next one's until they are applied. Commits still complete in
    /// order, and a failed commit aborts the transaction after it too, with the state of both.
    /// Default true; false commits every transaction in line on one producer.
    #[serde(rename = "commit.overlap", default = "defaults::commit_overlap")]
    pub commit_overlap: bool,

    /// `auto.offset.reset`: `earliest` (default), `latest` or `none`.
    #[serde(rename = "auto.offset.reset", default)]
    pub auto_offset_reset: OffsetReset,

    /// `max.batch.records`: the most records handed to one `process` call. Default 5000.
    #[serde(rename = "max.batch.records", default = "defaults::max_batch_records")]
    pub max_batch_records: usize,

    /// `max.batch.wait.ms`: how long a poll waits for the first record of a batch. Default 50.
    #[serde(
        rename = "max.batch.wait.ms",
        default = "defaults::max_batch_wait",
        with = "millis"
    )]
    pub max_batch_wait: Duration,

    /// `processing.retries`: how many times in a row a `Retriable` operator error is retried
    /// (each time from the committed offsets) before the application stops. Default 3.
    #[serde(
        rename = "processing.retries",
        default = "defaults::processing_retries"
    )]
    pub processing_retries: u32,

    /// `state.dir`: where the instance id (and, with state stores, the state) is kept. Default
    /// `<temp dir>/weir`.
    #[serde(rename = "state.dir", default = "defaults::state_dir")]
    pub state_dir: PathBuf,

    /// `instance.id`: this instance's id; by default a random id created on first start and
    /// persisted in `{state.dir}/{application.id}/instance.id`.
    #[serde(rename = "instance.id", default)]
    pub instance_id: Option<String>,

    /// `poison.policy`: `fail` (default), `skip` or `dead_letter`.
    #[serde(rename = "poison.policy", default)]
    pub poison_policy: PoisonPolicy,

    /// `dead.letter.topic`: the dead-letter topic, required by `poison.policy = dead_letter`.
    #[serde(rename = "dead.letter.topic", default)]
    pub dead_letter_topic: Option<String>,

    /// `state.max.uncommitted.bytes`: bytes of uncommitted state writes (keys and values) that
    /// force an early commit, bounding the in-memory overlay. Default 64 MiB.
    #[serde(
        rename = "state.max.uncommitted.bytes",
        default = "defaults::state_max_uncommitted_bytes"
    )]
    pub state_max_uncommitted_bytes: usize,

    /// `state.cache.max.bytes`: a cache of committed store entries in memory (keys, values and
    /// about 64 bytes each), so that a key read again soon after its last commit does not go to
    /// RocksDB. Per instance; 0 turns it off. Default 32 MiB.
    #[serde(
        rename = "state.cache.max.bytes",
        default = "defaults::state_cache_max_bytes"
    )]
    pub state_cache_max_bytes: usize,

    /// `metrics.address`: serve Prometheus metrics at `http://{address}/metrics`, e.g.
    /// `"0.0.0.0:9464"` (an IP address and port). Default: not served (the metrics are still
    /// recorded into any `metrics` recorder the program installs itself). Consumer lag per
    /// partition is sampled every 5 s either way (librdkafka statistics).
    #[serde(rename = "metrics.address", default)]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// `kafka.*`: raw librdkafka properties for both clients.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,

    /// `consumer.*`: raw librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,

    /// `producer.*`: raw librdkafka properties for the producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub(super) fn commit_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn transaction_timeout() -> Duration {
        Duration::from_millis(10_000)
    }
    pub(super) fn stall_timeout() -> Duration {
        Duration::from_millis(300_000)
    }
    pub(super) fn commit_overlap() -> bool {
        true
    }
    pub(super) fn max_batch_records() -> usize {
        5000
    }
    pub(super) fn max_batch_wait() -> Duration {
        Duration::from_millis(50)
    }
    pub(super) fn state_max_uncommitted_bytes() -> usize {
        64 << 20
    }
    pub(super) fn state_cache_max_bytes() -> usize {
        32 << 20
    }
    pub(super) fn processing_retries() -> u32 {
        3
    }
    pub(super) fn state_dir() -> PathBuf {
        std::env::temp_dir().join("weir")
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// librdkafka properties weir sets itself, with the weir key (or reason) that governs each.
const MANAGED: &[(&str, &str)] = &[
    ("group.id", "it is `application.id`"),
    ("bootstrap.servers", "set `bootstrap.servers`"),
    (
        "enable.auto.commit",
        "weir commits offsets itself, only after processing",
    ),
    ("enable.auto.offset.store", "weir stores offsets itself"),
    ("isolation.level", "it follows `processing.guarantee`"),
    ("auto.offset.reset", "set `auto.offset.reset`"),
    ("transactional.id", "it is `{application.id}-{instance.id}`"),
    ("enable.idempotence", "weir's producer is always idempotent"),
    ("transaction.timeout.ms", "set `transaction.timeout.ms`"),
    ("group.protocol", "set `group.protocol`"),
    (
        "group.instance.id",
        "set `static.membership = true`; weir derives it from the instance id",
    ),
];

/// Consumer properties the KIP-848 consumer protocol moves to the broker.
const CLASSIC_ONLY: &[&str] = &[
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
];

/// A configuration error: which key, what is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse, or a key is unknown or has the wrong type.
    #[error("invalid configuration{}: {message}", origin.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if any.
        origin: Option<PathBuf>,
        /// The parser's message (it names the key).
        message: String,
    },
    /// A key has a value weir cannot run with.
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A flat map of dotted keys to TOML values: a config file, flattened, with overrides applied on
/// top (the examples put their command-line flags here).
pub type ConfigMap = BTreeMap<String, toml::Value>;

impl Config {
    /// Starts a builder with the two keys every application needs.
    pub fn builder(
        application_id: impl Into<String>,
        bootstrap_servers: impl Into<String>,
    ) -> ConfigBuilder {
        let mut map = ConfigMap::new();
        map.insert(
            "application.id".into(),
            toml::Value::String(application_id.into()),
        );
        map.insert(
            "bootstrap.servers".into(),
            toml::Value::String(bootstrap_servers.into()),
        );
        ConfigBuilder { map }
    }

    /// Reads a TOML file into a flat [`ConfigMap`] (not yet validated).
    pub fn read_toml_file(path: &Path) -> Result<ConfigMap, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::read_toml_str(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                origin: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text into a flat [`ConfigMap`] (not yet validated).
    pub fn read_toml_str(text: &str) -> Result<ConfigMap, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: None,
                message: e.message().to_string(),
            })?;
        let mut map = ConfigMap::new();
        flatten("", toml::Value::Table(table), &mut map);
        Ok(map)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_map(Self::read_toml_str(text)?)
    }

    /// Builds and validates a configuration from a flat map.
    pub fn from_map(map: ConfigMap) -> Result<Self, ConfigError> {
        let mut root = toml::Table::new();
        let mut pass: BTreeMap<&str, toml::Table> = BTreeMap::new();
        for (key, value) in map {
            let prefix = ["kafka", "consumer", "producer"]
                .into_iter()
                .find(|p| key.starts_with(p) && key[p.len()..].starts_with('.'));
            match prefix {
                Some(p) => {
                    let property = key[p.len() + 1..].to_string();
                    let text = match value {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    pass.entry(p)
                        .or_default()
                        .insert(property, toml::Value::String(text));
                }
                None => {
                    root.insert(key, value);
                }
            }
        }
        for (p, table) in pass {
            root.insert(p.to_string(), toml::Value::Table(table));
        }
        let config =
            Config::deserialize(toml::Value::Table(root)).map_err(|e| ConfigError::Parse {
                origin: None,
                message: e.to_string().trim().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that serde's types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.application_id.is_empty()
            && self
                .application_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !id_ok {
            return Err(invalid(
                "application.id",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '.', '_' and '-' \
                     (it names the consumer group, the transactional id and a directory)",
                    self.application_id
                ),
            ));
        }
        if let Some(id) = &self.instance_id {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(
                    "instance.id",
                    format!(
                        "{id:?} must be non-empty and use only letters, digits, '.', '_' and '-'"
                    ),
                ));
            }
        }
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "bootstrap.servers",
                "must name at least one broker, e.g. localhost:9092",
            ));
        }
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "input.topics",
                "must list at least one topic, and no empty names",
            ));
        }
        if let Some(out) = &self.output_topic {
            if self.input_topics.contains(out) {
                return Err(invalid(
                    "output.topic",
                    format!("{out:?} is also an input topic: the application would consume its own output forever"),
                ));
            }
        }
        if self.commit_interval.is_zero() {
            return Err(invalid("commit.interval.ms", "must be at least 1"));
        }
        if self.guarantee == Guarantee::ExactlyOnce
            && self.transaction_timeout <= self.commit_interval
        {
            return Err(invalid(
                "transaction.timeout.ms",
                format!(
                    "{} ms is not above commit.interval.ms ({} ms): a transaction stays open for a \
                     whole commit interval, so the broker would abort every one. Raise \
                     transaction.timeout.ms (default 10000) or lower commit.interval.ms",
                    self.transaction_timeout.as_millis(),
                    self.commit_interval.as_millis()
                ),
            ));
        }
        if self.stall_timeout < self.transaction_timeout {
            return Err(invalid(
                "stall.timeout.ms",
                format!(
                    "{} ms is below transaction.timeout.ms ({} ms): one producer failure can take \
                     that long to show. Raise stall.timeout.ms (default 300000)",
                    self.stall_timeout.as_millis(),
                    self.transaction_timeout.as_millis()
                ),
            ));
        }
        if self.max_batch_records == 0 {
            return Err(invalid("max.batch.records", "must be at least 1"));
        }
        match (&self.poison_policy, &self.dead_letter_topic) {
            (PoisonPolicy::DeadLetter, None) => return Err(invalid(
                "dead.letter.topic",
                "poison.policy = dead_letter needs a dead.letter.topic to send poison records to",
            )),
            (_, Some(dlq)) if self.input_topics.contains(dlq) => {
                return Err(invalid(
                    "dead.letter.topic",
                    format!("{dlq:?} is also an input topic"),
                ))
            }
            _ => {}
        }
        for (prefix, map) in [
            ("kafka", &self.kafka),
            ("consumer", &self.consumer),
            ("producer", &self.producer),
        ] {
            for key in map.keys() {
                if let Some((_, why)) = MANAGED.iter().find(|(k, _)| k == key) {
                    return Err(invalid(
                        &format!("{prefix}.{key}"),
                        format!("weir manages `{key}` itself: {why}"),
                    ));
                }
                if self.group_protocol == GroupProtocol::Consumer
                    && prefix != "producer"
                    && CLASSIC_ONLY.contains(&key.as_str())
                {
                    return Err(invalid(
                        &format!("{prefix}.{key}"),
                        format!(
                            "`{key}` belongs to the classic group protocol; with \
                             group.protocol = consumer the broker sets it (group.consumer.* \
                             broker settings). Remove it, or use group.protocol = classic"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `{application.id}-{instance.id}`: the stable transactional id of an instance.
    pub fn transactional_id(&self, instance_id: &str) -> String {
        format!("{}-{}", self.application_id, instance_id)
    }

    /// `{application.id}-{instance.id}#2`: the transactional id of an instance's second
    /// producer (`commit.overlap`). `#` cannot occur in an instance id, so it never collides
    /// with another instance's id.
    pub fn second_transactional_id(&self, instance_id: &str) -> String {
        format!("{}#2", self.transactional_id(instance_id))
    }

    /// The directory that holds this application's instance id (and state).
    pub fn app_state_dir(&self) -> PathBuf {
        self.state_dir.join(&self.application_id)
    }
}

fn flatten(prefix: &str, value: toml::Value, out: &mut ConfigMap) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other);
        }
    }
}

/// A chained builder for [`Config`], validated by [`build`](ConfigBuilder::build).
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    map: ConfigMap,
}

impl ConfigBuilder {
    /// Sets any key by its dotted name (including `kafka.*`, `consumer.*`, `producer.*`).
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        self.map.insert(key.into(), value.into());
        self
    }

    /// Adds an input topic.
    #[must_use]
    pub fn input_topic(mut self, topic: impl Into<String>) -> Self {
        let entry = self
            .map
            .entry("input.topics".into())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(topics) = entry {
            topics.push(toml::Value::String(topic.into()));
        }
        self
    }

    /// Sets `output.topic`.
    #[must_use]
    pub fn output_topic(self, topic: impl Into<String>) -> Self {
        self.set("output.topic", topic.into())
    }

    /// Sets `processing.guarantee`.
    #[must_use]
    pub fn guarantee(self, guarantee: Guarantee) -> Self {
        self.set("processing.guarantee", guarantee.to_string())
    }

    /// Sets `commit.interval.ms`.
    #[must_use]
    pub fn commit_interval(self, interval: Duration) -> Self {
        self.set("commit.interval.ms", millis_value(interval))
    }

    /// Sets `auto.offset.reset`.
    #[must_use]
    pub fn auto_offset_reset(self, reset: OffsetReset) -> Self {
        let name = match reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
            OffsetReset::None => "none",
        };
        self.set("auto.offset.reset", name)
    }

    /// Sets `state.dir`.
    #[must_use]
    pub fn state_dir(self, dir: impl AsRef<Path>) -> Self {
        self.set("state.dir", dir.as_ref().display().to_string())
    }

    /// Sets `instance.id`.
    #[must_use]
    pub fn instance_id(self, id: impl Into<String>) -> Self {
        self.set("instance.id", id.into())
    }

    /// Sets `poison.policy`, and `dead.letter.topic` for [`PoisonPolicy::DeadLetter`].
    #[must_use]
    pub fn poison_policy(self, policy: PoisonPolicy, dead_letter_topic: Option<&str>) -> Self {
        let name = match policy {
            PoisonPolicy::Fail => "fail",
            PoisonPolicy::Skip => "skip",
            PoisonPolicy::DeadLetter => "dead_letter",
        };
        let this = self.set("poison.policy", name);
        match dead_letter_topic {
            Some(t) => this.set("dead.letter.topic", t),
            None => this,
        }
    }

    /// Sets a raw librdkafka property for both clients (`kafka.<key>`).
    #[must_use]
    pub fn kafka(self, key: &str, value: impl Into<String>) -> Self {
        self.set(format!("kafka.{key}"), value.into())
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        Config::from_map(self.map)
    }
}

fn millis_value(d: Duration) -> toml::Value {
    toml::Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        application.id = "orders"
        bootstrap.servers = "localhost:9092"
        input.topics = ["in"]
    "#;

    #[test]
    fn plain_and_quoted_dotted_keys_are_the_same_key() {
        let plain = Config::from_toml_str(&format!("{MINIMAL}\ncommit.interval.ms = 250")).unwrap();
        let quoted =
            Config::from_toml_str(&format!("{MINIMAL}\n\"commit.interval.ms\" = 250")).unwrap();
        assert_eq!(plain.commit_interval, Duration::from_millis(250));
        assert_eq!(plain, quoted);
    }

    #[test]
    fn defaults_are_kafka_streams_like() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.guarantee, Guarantee::ExactlyOnce);
        assert_eq!(c.commit_interval, Duration::from_millis(100));
        assert_eq!(c.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(c.poison_policy, PoisonPolicy::Fail);
        assert_eq!(c.transaction_timeout, Duration::from_millis(10_000));
        assert_eq!(c.group_protocol, GroupProtocol::Classic);
    }

    #[test]
    fn consumer_protocol_refuses_classic_only_properties() {
        let c =
            Config::from_toml_str(&format!("{MINIMAL}\ngroup.protocol = \"consumer\"")).unwrap();
        assert_eq!(c.group_protocol, GroupProtocol::Consumer);
        let err = Config::from_toml_str(&format!(
            "{MINIMAL}\ngroup.protocol = \"consumer\"\n\"consumer.session.timeout.ms\" = \"6000\""
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`consumer.session.timeout.ms`"), "{err}");
        assert!(err.contains("group.consumer"), "{err}");
        let err = Config::from_toml_str(&format!("{MINIMAL}\ngroup.protocol = \"eager\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("group.protocol"), "{err}");
    }

    #[test]
    fn passthrough_prefixes_split_by_client() {
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}\nkafka.linger.ms = 5\nconsumer.\"fetch.max.bytes\" = 1048576\n[producer]\ncompression.type = \"lz4\""
        ))
        .unwrap();
        assert_eq!(c.kafka.get("linger.ms").map(String::as_str), Some("5"));
        assert_eq!(
            c.consumer.get("fetch.max.bytes").map(String::as_str),
            Some("1048576")
        );
        assert_eq!(
            c.producer.get("compression.type").map(String::as_str),
            Some("lz4")
        );
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err =
            Config::from_toml_str(&format!("{MINIMAL}\ncommit.intervall.ms = 5")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `commit.intervall.ms`"), "{msg}");
    }

    #[test]
    fn transaction_timeout_must_exceed_commit_interval() {
        let err = Config::from_toml_str(&format!(
            "{MINIMAL}\ncommit.interval.ms = 5000\ntransaction.timeout.ms = 5000"
        ))
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`transaction.timeout.ms`"), "{msg}");
        assert!(
            msg.contains("not above commit.interval.ms (5000 ms)"),
            "{msg}"
        );
        // at_least_once has no transactions, so the same numbers are fine there.
        Config::from_toml_str(&format!(
            "{MINIMAL}\ncommit.interval.ms = 5000\ntransaction.timeout.ms = 5000\nprocessing.guarantee = \"at_least_once\""
        ))
        .unwrap();
    }

    #[test]
    fn stall_timeout_defaults_to_five_minutes_and_must_cover_a_transaction() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.stall_timeout, Duration::from_secs(300));
        let err =
            Config::from_toml_str(&format!("{MINIMAL}\nstall.timeout.ms = 9999")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`stall.timeout.ms`"), "{msg}");
        assert!(
            msg.contains("9999 ms is below transaction.timeout.ms (10000 ms)"),
            "{msg}"
        );
        let c = Config::from_toml_str(&format!("{MINIMAL}\nstall.timeout.ms = 10000")).unwrap();
        assert_eq!(c.stall_timeout, Duration::from_secs(10));
    }

    #[test]
    fn managed_librdkafka_properties_are_refused() {
        let err = Config::from_toml_str(&format!(
            "{MINIMAL}\nconsumer.\"enable.auto.commit\" = true"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("`consumer.enable.auto.commit`"),
            "{err}"
        );
        assert!(err.to_string().contains("only after processing"), "{err}");
    }

    #[test]
    fn dead_letter_needs_a_topic_and_bad_enum_values_are_named() {
        let err = Config::from_toml_str(&format!("{MINIMAL}\npoison.policy = \"dead_letter\""))
            .unwrap_err();
        assert!(err.to_string().contains("`dead.letter.topic`"), "{err}");
        let err = Config::from_toml_str(&format!("{MINIMAL}\nauto.offset.reset = \"smallest\""))
            .unwrap_err();
        assert!(err.to_string().contains("smallest"), "{err}");
        assert!(err.to_string().contains("earliest"), "{err}");
    }

    #[test]
    fn builder_validates_like_the_file() {
        let err = Config::builder("bad id!", "localhost:9092")
            .input_topic("in")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("`application.id`"), "{err}");
        let ok = Config::builder("app", "localhost:9092")
            .input_topic("in")
            .output_topic("out")
            .guarantee(Guarantee::AtLeastOnce)
            .commit_interval(Duration::from_millis(20))
            .kafka("linger.ms", "1")
            .build()
            .unwrap();
        assert_eq!(ok.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(ok.transactional_id("i1"), "app-i1");
        let err = Config::builder("app", "localhost:9092")
            .input_topic("in")
            .output_topic("in")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("consume its own output"), "{err}");
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;

    /// The TOML example in docs/configuration.md parses and validates.
    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("end of the block");
        let config = Config::from_toml_str(&doc[start..end]).unwrap();
        assert_eq!(config.poison_policy, PoisonPolicy::DeadLetter);
        assert_eq!(
            config.producer.get("compression.type").map(String::as_str),
            Some("lz4")
        );
        assert_eq!(
            config.kafka.get("client.rack").map(String::as_str),
            Some("eu-west-1a")
        );
    }
}
