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
        .set("allow.auto.create.topics", "false");
    apply(&mut c, &config.kafka);
    apply(&mut c, &config.consumer);
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

/// The producer: idempotent and `acks=all` always; transactional with id
/// `{application.id}-{instance.id}` under exactly_once.
pub fn producer_config(config: &Config, instance_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "none");
    apply(&mut c, &config.kafka);
    apply(&mut c, &config.producer);
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set(
            "client.id",
            format!("{}-{}-producer", config.application_id, instance_id),
        )
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if config.guarantee == Guarantee::ExactlyOnce {
        c.set("transactional.id", config.transactional_id(instance_id))
            .set(
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
