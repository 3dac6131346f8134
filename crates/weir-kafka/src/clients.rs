//! librdkafka configuration of weir's two clients.
//!
//! Order of precedence, lowest first: weir's defaults, the `kafka.*` passthrough, the
//! `consumer.*` / `producer.*` passthrough, then the properties weir manages (which validation
//! already keeps out of the passthrough maps).

use rdkafka::ClientConfig;
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
    if config.metrics_address.is_some() {
        // The statistics carry the consumer lag per partition (`weir_consumer_lag`).
        c.set("statistics.interval.ms", "5000");
    }
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
pub fn producer_config(config: &Config, transactional_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "none");
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

/// A plain client configuration for admin calls and one-off reads.
pub fn base_config(bootstrap_servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers);
    c
}

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
    fn the_consumer_protocol_leaves_assignment_to_the_broker() {
        let c = consumer_config(&config("\"group.protocol\" = \"consumer\""), "i1");
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(c.get("partition.assignment.strategy"), None);
        assert_eq!(c.get("session.timeout.ms"), None);
    }
}
