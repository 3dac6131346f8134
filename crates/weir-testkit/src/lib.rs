//! weir-testkit: a real Apache Kafka for tests, demos and benchmarks — never a mock.
//!
//! [`Kafka::start`] picks the first backend that works:
//!
//! 1. `WEIR_KAFKA_BOOTSTRAP=host:port`: an existing cluster (no broker fault injection);
//! 2. a Docker daemon answers: testcontainers with the `apache/kafka` image (KRaft);
//! 3. otherwise a local Apache Kafka (KRaft) run with Java 17+ from the Maven Central artifacts
//!    ([`local`]).
//!
//! If none can start, [`shared`] panics with the reason and what to install: tests fail loudly,
//! they never pass or skip without a broker.
//!
//! Tests share one broker per test binary ([`shared`]) and keep out of each other's way with
//! [`unique`] topic, group and transactional ids; fault-injection tests start clusters of their
//! own ([`Kafka::start_local`]). [`verify`] (the `weir-verify` crate, shared with the `weir verify`
//! command) names every duplicated, lost or reordered record.

mod cluster;
pub mod io;
pub mod local;
pub mod metrics;
pub mod process;

use std::sync::OnceLock;

pub use cluster::{Backend, Kafka, StartError};
pub use io::{unique, Isolation, LiveReader, ReadRecord, TestRecord};
pub use process::{
    command, example_bin, example_command, output_within, ChildProcess, OutputWithin,
};
pub use weir_kafka::admin::TopicSpec;
/// The exactly-once verifier: the `weir-verify` crate.
pub use weir_verify as verify;
pub use weir_verify::{expected_windows, verify_copy, verify_totals, verify_windows, Report};

/// The broker shared by every test of this test binary, started on first use.
///
/// # Panics
///
/// When no backend can start, with the reason and what to install or set.
pub fn shared() -> &'static Kafka {
    refuse_inherited_failpoints();
    static SHARED: OnceLock<Result<Kafka, String>> = OnceLock::new();
    let kafka = SHARED.get_or_init(|| {
        Kafka::start()
            .inspect(|k| {
                eprintln!(
                    "weir-testkit: Kafka at {} ({})",
                    k.bootstrap_servers(),
                    k.backend_name()
                );
            })
            .map_err(|e| e.to_string())
    });
    match kafka {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    }
}

/// The failpoints are read by the runtime in the test process itself (in-process tests), which
/// [`command`] cannot scrub: a `WEIR_FAILPOINT` left in the shell would crash or fail tests that
/// never asked for it. Refuse to run instead.
fn refuse_inherited_failpoints() {
    for var in ["WEIR_FAILPOINT", "WEIR_FAILPOINT_ERROR"] {
        if let Some(v) = std::env::var_os(var) {
            panic!(
                "{var}={} is set in the environment of the tests; the tests set their own failpoints: unset it",
                v.to_string_lossy()
            );
        }
    }
}
