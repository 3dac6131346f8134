//! librdkafka configuration of weir's two clients.
//!
//! Order of precedence, lowest first: weir's defaults, the `kafka.*` passthrough, the
//! `consumer.*` / `producer.*` passthrough, then the properties weir manages (which validation
//! already keeps out of the passthrough maps).

use std::time::Duration;

use rdkafka::client::Client;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use weir_core::{Config, GroupProtocol, Guarantee, OffsetReset};

/// The consumer: a member of group `application.id`, offsets committed only by weir, reading
/// only committed records, with the cooperative-sticky assignor (classic protocol) or the
/// broker's assignor (KIP-848 `consumer` protocol).
pub fn consumer_config(config: &Config, instance_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    match config.group_protocol {
        GroupProtocol::Classic => {
            c.set("group.protocol", "classic")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "2000");
        }
        GroupProtocol::Consumer => {
            c.set("group.protocol", "consumer");
        }
    }
    c.set("fetch.wait.max.ms", "50")
        .set("fetch.queue.backoff.ms", "10")
        .set("allow.auto.create.topics", "false");
    // The statistics carry the consumer lag per partition (`weir_consumer_lag`), which also
    // tells weir's stall watch whether input waits.
    c.set("statistics.interval.ms", "5000");
    apply(&mut c, &config.kafka);
    apply(&mut c, &config.consumer);
    if config.static_membership {
        c.set("group.instance.id", config.transactional_id(instance_id));
    }
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.application_id)
        .set(
            "client.id",
            format!("{}-{}-consumer", config.application_id, instance_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Both guarantees read only committed records: an at_least_once application behind an
        // exactly_once one must not see the aborted attempts.
        .set("isolation.level", "read_committed")
        // weir resolves start offsets itself when partitions are assigned (see the runtime's
        // rebalance module); this is only the fallback if a position is ever lost.
        .set(
            "auto.offset.reset",
            match config.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
                OffsetReset::None => "error",
            },
        );
    c
}

/// The producer: idempotent and `acks=all` always; under exactly_once transactional with
/// `transactional_id` (`{application.id}-{instance.id}`, or its `#2` for `commit.overlap`),
/// which also names the client (`{transactional_id}-producer`).
///
/// Under exactly_once, outputs become visible only when their transaction commits, and every
/// commit flushes the producer (batches go out at once, whatever `linger.ms` says). So weir lets
/// batches fill for up to [`EOS_LINGER_MS`] instead of 5 ms — no latency a reader can see — and
/// keeps at most [`EOS_WINDOW_KBYTES`] unacknowledged in the producer. Together they keep
/// librdkafka's producer thread from spinning. With idempotence librdkafka 2.12 keeps one
/// produce request per partition in flight (its limit of 5 is checked against the partition's
/// in-flight *messages*), and whenever a partition has a ready batch (full, or past `linger.ms`)
/// behind that request, the thread calls `poll` with a zero timeout until the broker answers —
/// measured, 321,000 such calls per 200,000 records of 1 KB, a third of the pipeline's CPU,
/// taken from the broker it waits for on a small machine (docs/benchmarks.md). With a window of
/// a few batches and a long linger, few batches are ready while a request is in flight, and the
/// producer thread sleeps until the broker answers; the application waits for room in the
/// window instead.
pub fn producer_config(config: &Config, transactional_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("queue.buffering.max.messages", "500000")
        .set("compression.type", "none");
    if config.guarantee == Guarantee::ExactlyOnce {
        // The window must hold the largest message the producer accepts, or that message
        // could never be queued (a window set in the passthrough below is the application's).
        let largest = config
            .producer
            .get("message.max.bytes")
            .or_else(|| config.kafka.get("message.max.bytes"))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |bytes| bytes.div_ceil(1024));
        c.set("linger.ms", EOS_LINGER_MS.to_string()).set(
            "queue.buffering.max.kbytes",
            EOS_WINDOW_KBYTES.max(largest).to_string(),
        );
    } else {
        c.set("linger.ms", "5")
            .set("queue.buffering.max.kbytes", "1048576");
    }
    apply(&mut c, &config.kafka);
    apply(&mut c, &config.producer);
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", format!("{transactional_id}-producer"))
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if config.guarantee == Guarantee::ExactlyOnce {
        c.set("transactional.id", transactional_id).set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        );
    }
    c
}

/// `linger.ms` of the exactly_once producer (see [`producer_config`]).
pub const EOS_LINGER_MS: u64 = 100;

/// `queue.buffering.max.kbytes` of the exactly_once producer: four full batches (librdkafka's
/// `batch.size` is 1,000,000 bytes), so that few full batches wait behind the partitions'
/// requests in flight and make its producer thread spin (see [`producer_config`]).
pub const EOS_WINDOW_KBYTES: u64 = 4096;

/// librdkafka's `rd_kafka_flush` on a producer's client, for up to `timeout`: lingering batches
/// go out at once, and with delivery reports as events (as rdkafka has them) it waits on a
/// condition variable until the last one is served — where rdkafka's `flush` sleeps in `poll`
/// for up to 100 ms whenever anything is in flight. Returns whether nothing was left.
pub fn flush_now<C: ClientContext>(producer: &Client<C>, timeout: Duration) -> bool {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: `producer` is a live client handle for the whole call, and `rd_kafka_flush` may
    // be called from any thread (on a consumer it returns an error, not undefined behaviour).
    #[allow(unsafe_code)]
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.native_ptr(), ms) };
    err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
}

/// A plain client configuration for admin calls and one-off reads.
pub fn base_config(bootstrap_servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers);
    c
}

/// The configuration of an application's other clients (the start-up admin client, the
/// changelog restore reader): its `kafka.*` passthrough — TLS, SASL, ... — and its
/// `bootstrap.servers`. Callers set what is particular to the client after this.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    apply(&mut c, &config.kafka);
    c.set("bootstrap.servers", &config.bootstrap_servers);
    c
}

/// The context of a reader that reads to the end of its partitions (the changelog restore, the
/// verifiers) with `enable.partition.eof`: reaching the end is what it waits for, so librdkafka's
/// partition-EOF reports go to `debug`, not to `error` as rdkafka's default context has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::debug!(%error, reason, "librdkafka: end of partition");
        } else {
            tracing::error!(%error, reason, "librdkafka: error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

fn apply(c: &mut ClientConfig, props: &std::collections::BTreeMap<String, String>) {
    for (k, v) in props {
        c.set(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(&format!(
            "\"application.id\" = \"app\"\n\"bootstrap.servers\" = \"localhost:9092\"\n\"input.topics\" = [\"in\"]\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn static_membership_derives_the_group_instance_id() {
        let c = consumer_config(&config(""), "i1");
        assert_eq!(c.get("group.instance.id"), None);
        let c = consumer_config(&config("\"static.membership\" = true"), "i1");
        assert_eq!(c.get("group.instance.id"), Some("app-i1"));
        let err = Config::from_toml_str(
            "\"application.id\" = \"app\"\n\"bootstrap.servers\" = \"b:1\"\n\"input.topics\" = [\"in\"]\n\"consumer.group.instance.id\" = \"x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("static.membership"), "{err}");
    }

    #[test]
    fn exactly_once_lingers_in_a_small_window_and_at_least_once_does_not() {
        let eos = producer_config(&config(""), "t");
        assert_eq!(eos.get("linger.ms"), Some("100"));
        assert_eq!(eos.get("queue.buffering.max.kbytes"), Some("4096"));
        let alo = producer_config(&config("\"processing.guarantee\" = \"at_least_once\""), "t");
        assert_eq!(alo.get("linger.ms"), Some("5"));
        assert_eq!(alo.get("queue.buffering.max.kbytes"), Some("1048576"));
        // The window grows to hold the largest message; an explicit window is left alone.
        let big = producer_config(
            &config("producer.\"message.max.bytes\" = \"10000000\""),
            "t",
        );
        assert_eq!(big.get("queue.buffering.max.kbytes"), Some("9766"));
        let set = producer_config(
            &config("producer.\"message.max.bytes\" = \"10000000\"\nproducer.\"queue.buffering.max.kbytes\" = \"2048\"\nproducer.\"linger.ms\" = \"7\""),
            "t",
        );
        assert_eq!(set.get("queue.buffering.max.kbytes"), Some("2048"));
        assert_eq!(set.get("linger.ms"), Some("7"));
    }

    #[test]
    fn every_other_client_gets_the_kafka_passthrough() {
        let c = client_config(&config(
            "kafka.\"security.protocol\" = \"ssl\"\nconsumer.\"fetch.min.bytes\" = \"7\"",
        ));
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("bootstrap.servers"), Some("localhost:9092"));
        // Only `kafka.*`: the consumer's own properties stay the consumer's.
        assert_eq!(c.get("fetch.min.bytes"), None);
    }

    /// Kerberos and OIDC are opt-in features (docs/operations.md): without them librdkafka
    /// refuses the configuration when the client is created, naming the mechanism.
    #[test]
    fn kerberos_and_oidc_need_their_features() {
        let create = |mechanism: (&str, &str)| {
            base_config("localhost:1")
                .set("security.protocol", "sasl_plaintext")
                .set(mechanism.0, mechanism.1)
                .create::<rdkafka::producer::BaseProducer>()
                .err()
                .map(|e| e.to_string())
        };
        let gssapi = create(("sasl.mechanism", "GSSAPI"));
        if cfg!(feature = "gssapi") {
            assert_eq!(gssapi, None);
        } else {
            let e = gssapi.expect("GSSAPI accepted without the gssapi feature");
            assert!(e.contains("GSSAPI"), "{e}");
        }
        let oidc = create(("sasl.oauthbearer.method", "oidc"));
        if cfg!(feature = "oidc") {
            assert_eq!(oidc, None);
        } else {
            let e = oidc.expect("OIDC accepted without the oidc feature");
            assert!(
                e.to_lowercase().contains("oidc") || e.contains("curl"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_consumer_protocol_leaves_assignment_to_the_broker() {
        let c = consumer_config(&config("\"group.protocol\" = \"consumer\""), "i1");
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(c.get("partition.assignment.strategy"), None);
        assert_eq!(c.get("session.timeout.ms"), None);
    }
}
