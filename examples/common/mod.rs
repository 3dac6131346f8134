//! What every example shares: the common flags (each with a `WEIR_*` environment variable),
//! turning them into a [`weir::Config`], and logging.

// Each example binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod totals;
pub mod windows;

/// Every example binary allocates with mimalloc, as a weir application should
/// ([`weir::MiMalloc`]) — the bench's raw-client ceiling too, so the contenders are compared
/// on the same allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: weir::MiMalloc = weir::MiMalloc;

use std::path::PathBuf;

use anyhow::Context as _;
use weir::{Config, ConfigMap};

/// The flags every example takes. A flag overrides the same key in `--config FILE`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Kafka brokers, host:port[,host:port...] (`bootstrap.servers`).
    #[arg(long, env = "WEIR_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,
    /// The application id: consumer group, transactional-id prefix (`application.id`).
    #[arg(long, env = "WEIR_APPLICATION_ID")]
    pub application_id: Option<String>,
    /// The topic to read (`input.topics`).
    #[arg(long, env = "WEIR_INPUT_TOPIC")]
    pub input_topic: Option<String>,
    /// The topic to write (`output.topic`).
    #[arg(long, env = "WEIR_OUTPUT_TOPIC")]
    pub output_topic: Option<String>,
    /// Where the instance id (and state) is kept (`state.dir`).
    #[arg(long, env = "WEIR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This instance's id (`instance.id`); by default persisted in the state directory.
    #[arg(long, env = "WEIR_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// `exactly_once` or `at_least_once` (`processing.guarantee`).
    #[arg(long, env = "WEIR_GUARANTEE")]
    pub guarantee: Option<String>,
    /// Commit interval in milliseconds (`commit.interval.ms`).
    #[arg(long, env = "WEIR_COMMIT_INTERVAL_MS")]
    pub commit_interval_ms: Option<u64>,
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "WEIR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Any other key, as key=value (repeatable), e.g. --set auto.offset.reset=latest.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl CommonArgs {
    /// The config file (if any) with the flags applied on top, plus `extra` keys.
    pub fn config(&self, extra: &[(&str, toml::Value)]) -> anyhow::Result<Config> {
        let mut map = match &self.config {
            Some(path) => Config::read_toml_file(path)?,
            None => ConfigMap::new(),
        };
        let mut put = |k: &str, v: Option<toml::Value>| {
            if let Some(v) = v {
                map.insert(k.to_string(), v);
            }
        };
        put(
            "bootstrap.servers",
            self.bootstrap_servers.clone().map(Into::into),
        );
        put(
            "application.id",
            self.application_id.clone().map(Into::into),
        );
        put(
            "input.topics",
            self.input_topic
                .clone()
                .map(|t| toml::Value::Array(vec![t.into()])),
        );
        put("output.topic", self.output_topic.clone().map(Into::into));
        put(
            "state.dir",
            self.state_dir
                .as_ref()
                .map(|d| d.display().to_string().into()),
        );
        put("instance.id", self.instance_id.clone().map(Into::into));
        put(
            "processing.guarantee",
            self.guarantee.clone().map(Into::into),
        );
        put(
            "commit.interval.ms",
            self.commit_interval_ms
                .map(|ms| toml::Value::Integer(ms as i64)),
        );
        for (k, v) in extra {
            put(k, Some(v.clone()));
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
            // Numbers and booleans as TOML would read them; anything else as text.
            let value = v
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| v.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(v.to_string()));
            map.insert(k.to_string(), value);
        }
        let fix = match &self.config {
            Some(path) => format!(
                "set the missing or wrong key in {} (--config), with a flag (see --help) or its WEIR_* variable",
                path.display()
            ),
            None => "set the missing or wrong key with a flag (see --help), its WEIR_* variable, or --config FILE".to_string(),
        };
        Config::from_map(map).context(fix)
    }
}

/// The poison-policy flags of the examples that parse their input.
#[derive(clap::Args, Debug, Clone)]
pub struct PoisonArgs {
    /// Where unparseable records go; selects poison.policy = dead_letter unless --poison-policy is given.
    #[arg(long, env = "WEIR_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// fail | skip | dead_letter (`poison.policy`).
    #[arg(long, env = "WEIR_POISON_POLICY")]
    pub poison_policy: Option<String>,
}

impl PoisonArgs {
    /// The config keys these flags set.
    pub fn keys(&self) -> Vec<(&'static str, toml::Value)> {
        let mut keys = Vec::new();
        if let Some(dlq) = &self.dead_letter_topic {
            keys.push(("dead.letter.topic", dlq.clone().into()));
            keys.push(("poison.policy", "dead_letter".into()));
        }
        if let Some(policy) = &self.poison_policy {
            keys.push(("poison.policy", policy.clone().into()));
        }
        keys
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_tracing() {
    init_tracing_with("info,rdkafka=warn");
}

/// Logs to stderr at `default` levels unless `RUST_LOG` says otherwise.
pub fn init_tracing_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
