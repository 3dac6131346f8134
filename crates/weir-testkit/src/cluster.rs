//! Choosing and starting a Kafka backend.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testcontainers::core::ImageExt;
use testcontainers::runners::SyncRunner;
use testcontainers::Container;
use testcontainers_modules::kafka::apache;
use weir_kafka::admin::Admin;

use crate::local::LocalCluster;

/// Why no Kafka backend could start: what failed and what to install or set.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A tool the local backend needs is missing or too old.
    #[error(
        "no Kafka for the tests: {tool} is needed to run a local broker ({detail}). Install it \
         (Debian: apt-get install openjdk-17-jre-headless maven), or run a Docker daemon, or \
         set WEIR_KAFKA_BOOTSTRAP=host:port to use an existing cluster"
    )]
    Missing {
        /// The tool.
        tool: String,
        /// What was seen.
        detail: String,
    },
    /// The local broker failed.
    #[error("no Kafka for the tests: {what}.\n{detail}")]
    Local {
        /// What failed.
        what: String,
        /// Output or log lines.
        detail: String,
    },
    /// The Docker backend failed.
    #[error("no Kafka for the tests: the apache/kafka container did not start: {0}. Unset DOCKER_HOST or stop Docker to use the local JVM broker instead")]
    Docker(String),
    /// `WEIR_KAFKA_BOOTSTRAP` is set but unreachable.
    #[error("no Kafka for the tests: WEIR_KAFKA_BOOTSTRAP={bootstrap} does not answer: {detail}")]
    External {
        /// The address.
        bootstrap: String,
        /// The error.
        detail: String,
    },
    /// File-system trouble.
    #[error("no Kafka for the tests: {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl StartError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Which backend a [`Kafka`] runs on.
#[derive(Debug)]
pub enum Backend {
    /// `WEIR_KAFKA_BOOTSTRAP`: someone else's cluster (no broker fault injection).
    External,
    /// A testcontainers `apache/kafka` container.
    Docker(Box<Container<apache::Kafka>>),
    /// JVM brokers on loopback.
    Local(LocalCluster),
}

/// A running Kafka cluster for tests, demos and benchmarks.
#[derive(Debug)]
pub struct Kafka {
    bootstrap: String,
    backend: Backend,
}

impl Kafka {
    /// Starts (or finds) a single-broker cluster, trying in order: `WEIR_KAFKA_BOOTSTRAP`,
    /// testcontainers when a Docker daemon answers, a local JVM broker.
    pub fn start() -> Result<Self, StartError> {
        if let Ok(bootstrap) = std::env::var("WEIR_KAFKA_BOOTSTRAP") {
            let admin = Admin::new(&bootstrap, Duration::from_secs(10)).map_err(|e| {
                StartError::External {
                    bootstrap: bootstrap.clone(),
                    detail: e.to_string(),
                }
            })?;
            admin.ping().map_err(|e| StartError::External {
                bootstrap: bootstrap.clone(),
                detail: e.to_string(),
            })?;
            return Ok(Self {
                bootstrap,
                backend: Backend::External,
            });
        }
        if docker_answers() {
            return Self::start_docker();
        }
        Self::start_local(1)
    }

    /// Starts a local JVM cluster of `nodes` brokers (each also a KRaft controller).
    pub fn start_local(nodes: usize) -> Result<Self, StartError> {
        let cluster = LocalCluster::start(nodes)?;
        Ok(Self {
            bootstrap: cluster.bootstrap_servers(),
            backend: Backend::Local(cluster),
        })
    }

    /// [`start_local`](Self::start_local) with a TLS and a SASL/SCRAM listener on every node
    /// besides PLAINTEXT (`local().and_then(LocalCluster::secured)` names them).
    pub fn start_local_secured(nodes: usize) -> Result<Self, StartError> {
        let cluster = LocalCluster::start_secured(nodes)?;
        Ok(Self {
            bootstrap: cluster.bootstrap_servers(),
            backend: Backend::Local(cluster),
        })
    }

    fn start_docker() -> Result<Self, StartError> {
        let image = apache::Kafka::default()
            .with_jvm_image()
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false");
        let container = image
            .start()
            .map_err(|e| StartError::Docker(e.to_string()))?;
        let port = container
            .get_host_port_ipv4(apache::KAFKA_PORT)
            .map_err(|e| StartError::Docker(e.to_string()))?;
        Ok(Self {
            bootstrap: format!("127.0.0.1:{port}"),
            backend: Backend::Docker(Box::new(container)),
        })
    }

    /// The process ids of the brokers when they run on this machine as local JVMs; empty for
    /// a container or someone else's cluster.
    pub fn broker_pids(&self) -> Vec<u32> {
        match &self.backend {
            Backend::Local(cluster) => cluster.pids(),
            Backend::External | Backend::Docker(_) => Vec::new(),
        }
    }

    /// A handle on a cluster someone else runs (the helpers work, broker faults do not).
    pub fn start_with_bootstrap(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_string(),
            backend: Backend::External,
        }
    }

    /// `host:port,...` to give clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The backend, e.g. to kill a broker of a [`Backend::Local`] cluster.
    pub fn backend_mut(&mut self) -> &mut Backend {
        &mut self.backend
    }

    /// The local cluster (e.g. for [`LocalCluster::dump_partition`]); `None` on other
    /// backends.
    pub fn local(&self) -> Option<&LocalCluster> {
        match &self.backend {
            Backend::Local(c) => Some(c),
            _ => None,
        }
    }

    /// The local cluster, for broker fault injection; `None` on other backends.
    pub fn local_mut(&mut self) -> Option<&mut LocalCluster> {
        match &mut self.backend {
            Backend::Local(c) => Some(c),
            _ => None,
        }
    }

    /// A short name of the backend, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::External => "external (WEIR_KAFKA_BOOTSTRAP)",
            Backend::Docker(_) => "testcontainers apache/kafka",
            Backend::Local(_) => "local JVM broker",
        }
    }

    /// An admin handle with a 30 s timeout per call.
    pub fn admin(&self) -> Admin {
        Admin::new(&self.bootstrap, Duration::from_secs(30)).expect("admin client")
    }
}

fn docker_answers() -> bool {
    let socket =
        std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists();
    socket
        && crate::process::try_output_within(
            Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
            std::time::Duration::from_secs(30),
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
}
