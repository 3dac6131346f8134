//! The application: start-up checks, the main loop, graceful shutdown.
//!
//! ```text
//! start:    lock state dir, resolve instance id ─> cluster reachable? topics exist?
//!           ─> producer: init_transactions (fences and aborts this instance's previous
//!              incarnation) ─> on_start ─> subscribe
//! loop:     poll a batch (blocking thread; rebalance callbacks run here)
//!           ─> failure parked by a callback? stop
//!           ─> engine.process(batch) ─> commit if the interval elapsed
//!           ─> shutdown requested? leave the loop
//! shutdown: commit ─> unsubscribe (revoke callbacks run) ─> on_close ─> close the clients
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use weir_core::time::{TimestampExtractor, TIMER_STORE};
use weir_core::{AppInfo, Config, Guarantee, Processor, Record, RestoreProgress};
use weir_kafka::admin::Admin;
use weir_kafka::clients::consumer_config;

use crate::changelog::RestoreObserver;
use crate::engine::{Engine, WeirConsumer};
use crate::producer::DeliveryState;
use crate::rebalance::RebalanceHandler;
use crate::summary::{CommitReason, RunSummary, Wait};
use crate::threads::blocking;
use crate::txn::new_producer;
use crate::{instance, poll, telemetry, RuntimeError};

/// How long start-up waits for the cluster to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A weir application: a configuration, ready to run an operator.
///
/// ```no_run
/// # use weir_runtime::App;
/// # use weir_core::{Config, Processor};
/// # async fn demo(processor: impl Processor + 'static) -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::builder("orders-enricher", "localhost:9092")
///     .input_topic("orders")
///     .output_topic("orders-enriched")
///     .build()?;
/// App::new(config).run(processor).await?; // until SIGINT or SIGTERM
/// # Ok(()) }
/// ```
pub struct App {
    config: Arc<Config>,
    restore_observer: Option<RestoreObserver>,
    extractors: BTreeMap<String, TimestampExtractor>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("restore_observer", &self.restore_observer.is_some())
            .field("extractors", &self.extractors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl App {
    /// An application with a validated configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config: Arc::new(config),
            restore_observer: None,
            extractors: BTreeMap::new(),
        }
    }

    /// Reads the event time of `topic`'s records with `extract` (e.g. from a field of the
    /// value) instead of taking the record timestamp: what it returns becomes the record's
    /// `timestamp_ms` before the operator sees it, and moves the task's stream time
    /// (`weir_core::time`); `None` keeps the record's own timestamp.
    #[must_use]
    pub fn timestamp_extractor(
        mut self,
        topic: impl Into<String>,
        extract: impl Fn(&Record) -> Option<i64> + Send + Sync + 'static,
    ) -> Self {
        self.extractors.insert(topic.into(), Arc::new(extract));
        self
    }

    /// Calls `observer` as state is restored from a changelog: when a restore of a store of a
    /// task starts, after every applied batch (up to 10,000 records), and when it finishes.
    /// It runs on the restoring thread, so it must be quick (update a progress bar, a
    /// counter). Restores are also logged and exported as the
    /// `weir_restore_remaining_records` gauge, with or without an observer.
    #[must_use]
    pub fn on_restore_progress(
        mut self,
        observer: impl Fn(&RestoreProgress) + Send + Sync + 'static,
    ) -> Self {
        self.restore_observer = Some(Arc::new(observer));
        self
    }

    /// Runs `processor` until SIGINT or SIGTERM, then commits the open transaction and returns.
    pub async fn run(
        self,
        processor: impl Processor + 'static,
    ) -> Result<RunSummary, RuntimeError> {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let (Ok(mut int), Ok(mut term)) = signals else {
            return Err(RuntimeError::Internal(
                "cannot install SIGINT/SIGTERM handlers".into(),
            ));
        };
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: committing and shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: committing and shutting down"),
            }
        };
        self.run_until(processor, shutdown).await
    }

    /// Runs `processor` until `shutdown` completes, then commits the open transaction and
    /// returns. Returns an error, without committing past the failure, when the application
    /// cannot go on.
    ///
    /// Stop it through `shutdown`, not by dropping the returned future (e.g. in a `select!`
    /// or a timeout): a dropped run cannot commit or leave the group cleanly.
    pub async fn run_until(
        self,
        processor: impl Processor + 'static,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, RuntimeError> {
        let result = self.run_inner(Box::new(processor), shutdown).await;
        telemetry::stopped(result.as_ref().err().map(ToString::to_string).as_deref());
        result
    }

    async fn run_inner(
        self,
        processor: Box<dyn Processor>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary, RuntimeError> {
        let config = Arc::clone(&self.config);
        let (instance_id, _lock) = instance::resolve(&config)?;
        let exactly_once = config.guarantee == Guarantee::ExactlyOnce;
        let transactional_id = config.transactional_id(&instance_id);

        if let Some(address) = config.metrics_address {
            telemetry::serve(address).map_err(|message| {
                RuntimeError::Config(weir_core::ConfigError::Invalid {
                    key: "metrics.address".into(),
                    message: format!("{message}; choose a free port, or leave the key out"),
                })
            })?;
        }
        let limits = check_cluster(&config).await?;

        // State stores: open RocksDB (a corrupt directory is moved aside, never reused) and make
        // sure every changelog topic exists with one partition per task.
        let mut stores = processor.stores();
        if let Some(s) = stores.iter().find(|s| s.name.starts_with("weir-")) {
            return Err(RuntimeError::Config(weir_core::ConfigError::Invalid {
                key: "Processor::stores".into(),
                message: format!(
                    "store name {:?} starts with \"weir-\", which is kept for weir's own stores: rename it",
                    s.name
                ),
            }));
        }
        if processor.timers() {
            stores.push(weir_core::StoreSpec::new(TIMER_STORE));
        }
        let delivery = Arc::new(DeliveryState::default());
        let state = if stores.is_empty() {
            None
        } else {
            let (state, topics) = open_state(&config, stores).await?;
            delivery.track_changelogs(topics);
            Some(state)
        };
        let producer = new_producer(&config, &transactional_id, &delivery).await?;
        // `commit.overlap`: a second transactional producer, under exactly_once.
        let spare = if exactly_once && config.commit_overlap {
            let second = config.second_transactional_id(&instance_id);
            Some(new_producer(&config, &second, &delivery).await?)
        } else {
            if exactly_once {
                // `commit.overlap` was turned off: a transaction the second producer left open
                // before must not hold the outputs back until it times out.
                let second = config.second_transactional_id(&instance_id);
                let leftover = new_producer(&config, &second, &delivery).await?;
                blocking(move || drop(leftover)).await;
            }
            None
        };
        telemetry::started(
            &config.application_id,
            &instance_id,
            &config.guarantee.to_string(),
            exactly_once.then_some(transactional_id.as_str()),
        );

        let mut engine = Engine::new(
            Arc::clone(&config),
            instance_id.clone(),
            transactional_id,
            processor,
            producer,
            delivery,
            state,
        );
        engine.set_restore_observer(self.restore_observer.clone());
        engine.set_extractors(self.extractors.clone());
        engine.set_limits(limits);
        if let Some(spare) = spare {
            engine.set_spare(spare);
        }
        let stall = Arc::clone(engine.stall_watch());
        crate::stall::watch(&stall);
        let engine = Arc::new(Mutex::new(engine));
        let (rewind_pending, committed) = engine.lock().await.shared_with_handler();
        let handler = RebalanceHandler {
            rewind_pending,
            committed,
            stall,
            engine: Arc::clone(&engine),
            handle: Handle::current(),
            revocations: AtomicU64::new(0),
            revoked: StdMutex::new(Vec::new()),
        };
        let consumer: WeirConsumer = consumer_config(&config, &instance_id)
            .create_with_context(handler)
            .map_err(|source| RuntimeError::Kafka {
                during: "creating the consumer".into(),
                source: source.into(),
            })?;
        let consumer = Arc::new(consumer);

        let started = {
            let mut engine = engine.lock().await;
            engine.set_consumer(&consumer);
            let info = AppInfo {
                application_id: config.application_id.clone(),
                instance_id: instance_id.clone(),
                guarantee: config.guarantee,
            };
            engine
                .processor()
                .on_start(&info)
                .await
                .map_err(|e| RuntimeError::Operator {
                    during: "on_start",
                    message: e.to_string(),
                })
        };
        let topics: Vec<&str> = config.input_topics.iter().map(String::as_str).collect();
        let result = match started {
            Ok(()) => match consumer.subscribe(&topics) {
                Ok(()) => main_loop(&config, &engine, &consumer, shutdown).await,
                Err(source) => Err(RuntimeError::Kafka {
                    during: "subscribing".into(),
                    source: source.into(),
                }),
            },
            Err(e) => Err(e),
        };

        let result = match result {
            Ok(()) => shut_down(&engine, &consumer).await,
            Err(e) => {
                let e = engine.lock().await.stop(e).await;
                leave_group(&consumer).await;
                Err(e)
            }
        };
        let summary = engine.lock().await.totals().clone();
        // Closing the clients blocks (leave group, flush, destroy); do it off the async
        // workers. The engine holds the producer.
        blocking(move || {
            drop(consumer);
            drop(engine);
        })
        .await;
        result.map(|()| summary)
    }
}

/// The cluster answers and every topic exists. Returns the output and dead-letter topics'
/// `max.message.bytes` (see `engine/oversize.rs`).
async fn check_cluster(config: &Config) -> Result<BTreeMap<String, usize>, RuntimeError> {
    let config = config.clone();
    let mut topics: Vec<String> = config.input_topics.clone();
    let outputs: Vec<String> = config
        .output_topic
        .iter()
        .chain(&config.dead_letter_topic)
        .cloned()
        .collect();
    topics.extend(outputs.iter().cloned());
    blocking(move || -> Result<BTreeMap<String, usize>, RuntimeError> {
        let admin = Admin::for_app(&config, STARTUP_TIMEOUT)?;
        admin.ping()?;
        for t in &topics {
            admin.partition_count(t)?;
        }
        let mut limits = BTreeMap::new();
        for t in outputs {
            if let Some(limit) = admin
                .topic_config(&t, "max.message.bytes")?
                .and_then(|v| v.parse().ok())
            {
                limits.insert(t, limit);
            }
        }
        Ok(limits)
    })
    .await
}

async fn open_state(
    config: &Arc<Config>,
    stores: Vec<weir_core::StoreSpec>,
) -> Result<(weir_state::StateManager, Vec<String>), RuntimeError> {
    let config = Arc::clone(config);
    blocking(move || {
        let path = config.app_state_dir().join("rocksdb");
        let topics = stores
            .iter()
            .filter(|s| s.changelog)
            .map(|s| weir_state::changelog_topic(&config.application_id, &s.name))
            .collect();
        let (mut state, moved) = weir_state::StateManager::open(&path, stores)?;
        state.set_cache_max_bytes(config.state_cache_max_bytes)?;
        if let Some(aside) = moved {
            tracing::warn!(aside = %aside.display(), "the corrupt state directory was moved aside; every task restores from its changelog");
        }
        let admin = Admin::for_app(&config, STARTUP_TIMEOUT)?;
        crate::changelog::ensure_changelogs(&config, &state, &admin)?;
        Ok((state, topics))
    })
    .await
}

async fn main_loop(
    config: &Config,
    engine: &Arc<Mutex<Engine>>,
    consumer: &Arc<WeirConsumer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (max, wait) = (config.max_batch_records, config.max_batch_wait);
    let start_poll = |buffer: Vec<Record>| {
        let c = Arc::clone(consumer);
        tokio::task::spawn_blocking(move || poll::poll_batch(&c, max, wait, buffer))
    };
    // Two batch buffers take turns: one is filled by the poll in flight while the other's
    // records are processed; processed, it goes to the poll after next, which drops its records
    // before it polls into it (see `poll::poll_batch`).
    let mut spare: Vec<Record> = Vec::new();
    let mut in_flight = Some(start_poll(Vec::new()));
    let result = loop {
        let Some(poll) = in_flight.take() else {
            break Ok(());
        };
        let waiting = std::time::Instant::now();
        let mut polled = poll.await.expect("polling panicked");
        let mut engine = engine.lock().await;
        engine.waited(Wait::Input, waiting.elapsed());
        // No poll is in flight here: a rewind asked for after the batch's last poll is made
        // now, and the batch, all from before it, dropped.
        match engine.rewind_now().await {
            Ok(true) => {
                polled.records.clear();
                polled.ends.clear();
            }
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        // The next batch is polled while this one is processed and committed.
        in_flight = Some(start_poll(std::mem::take(&mut spare)));
        let stepped = step(config, &mut engine, &mut polled).await;
        spare = polled.records;
        if let Err(e) = stepped {
            if !engine.producer_failed() {
                break Err(e);
            }
            // The producer is unusable (fenced, or a fatal transactional error such as a
            // transaction the broker timed out during a broker failure): a new one with the
            // same transactional id, and every task resumed from the committed offsets.
            if let Err(e) = engine.replace_producer(e).await {
                break Err(e);
            }
        }
        if shutdown.as_mut().now_or_never().is_some() {
            break Ok(());
        }
    };
    // The batch polled meanwhile is not processed: nothing of it is committed, so it is read
    // again from the committed offsets. Its poll may run a rebalance callback, which needs the
    // engine unlocked (it is: the guard went with the loop).
    if let Some(poll) = in_flight {
        let _ = poll.await;
    }
    result
}

/// One turn of the loop after a poll: errors parked by rebalance callbacks, poll errors, a
/// background commit that has finished, the batch, and the commit when it is due.
async fn step(
    config: &Config,
    engine: &mut Engine,
    polled: &mut poll::Polled,
) -> Result<(), RuntimeError> {
    if let Some(e) = engine.take_failure() {
        return Err(e);
    }
    if let Some(e) = polled.error.take() {
        if let Err(e) = poll_error(e) {
            return Err(name_missing_input(config, e).await);
        }
        engine.trouble();
    }
    engine.settle_if_finished().await?;
    engine.extract_timestamps(&mut polled.records);
    engine.process(&polled.records).await?;
    engine.step_over_markers(&polled.ends).await?;
    engine.fire_processing_timers().await?;
    if engine.commit_due() {
        let waiting = std::time::Instant::now();
        let committed = engine.commit(CommitReason::Interval).await;
        engine.waited(Wait::Commit, waiting.elapsed());
        committed?;
    }
    match engine.take_failure() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Errors the consumer reports while polling: those that cannot heal stop the application,
/// the rest (a broker restarting, a connection dropped) are logged while librdkafka recovers.
fn poll_error(error: KafkaError) -> Result<(), RuntimeError> {
    use RDKafkaErrorCode as C;
    let fatal = match &error {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) | KafkaError::Global(code) => matches!(
            code,
            C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::AutoOffsetReset
                | C::Fatal
        ),
        _ => false,
    };
    if fatal {
        Err(RuntimeError::Kafka {
            during: "consuming".into(),
            source: error.into(),
        })
    } else {
        telemetry::transient("poll", &error.to_string());
        Ok(())
    }
}

/// A consumer error about an unknown topic does not say which: the admin client tells which
/// input topic no longer exists (deleted while the application ran), and the error names it.
async fn name_missing_input(config: &Config, error: RuntimeError) -> RuntimeError {
    let unknown = matches!(
        &error,
        RuntimeError::Kafka { source, .. } if matches!(
            source.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        )
    );
    if !unknown {
        return error;
    }
    let config = config.clone();
    let missing = blocking(move || {
        let Ok(admin) = Admin::for_app(&config, STARTUP_TIMEOUT) else {
            return Vec::new();
        };
        config
            .input_topics
            .iter()
            .filter(|t| {
                matches!(
                    admin.partition_count(t),
                    Err(weir_kafka::admin::AdminError::MissingTopic { .. })
                )
            })
            .cloned()
            .collect::<Vec<_>>()
    })
    .await;
    match (missing.is_empty(), error) {
        (false, RuntimeError::Kafka { source, .. }) => RuntimeError::Kafka {
            during: format!(
                "consuming: input topic {} no longer exists (deleted while the application ran?); \
                 recreate it, or fix input.topics, and start again. Consuming",
                missing
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            source,
        },
        (_, error) => error,
    }
}

/// Graceful shutdown: commit, leave the group (the revoke callback commits anything the
/// operator emits on revoke), close the operator.
async fn shut_down(
    engine: &Arc<Mutex<Engine>>,
    consumer: &Arc<WeirConsumer>,
) -> Result<(), RuntimeError> {
    {
        let mut engine = engine.lock().await;
        if let Err(e) = engine.commit(CommitReason::Shutdown).await {
            if !engine.producer_failed() {
                return Err(e);
            }
            // Nothing of the last transaction committed; the partitions' next owner processes
            // its records again from the committed offsets. The stop itself is clean.
            tracing::warn!(error = %e, "the last transaction could not commit while shutting down; its records are processed again by the next owner");
        }
    }
    leave_group(consumer).await;
    let mut engine = engine.lock().await;
    if let Some(e) = engine.take_failure() {
        return Err(engine.stop(e).await);
    }
    engine
        .processor()
        .on_close()
        .await
        .map_err(|e| RuntimeError::Operator {
            during: "on_close",
            message: e.to_string(),
        })
}

/// Unsubscribes and serves the revoke callback, so the group rebalances at once instead of
/// after the session timeout. Records polled meanwhile are not processed: their offsets were
/// not committed, so they are read again by the next owner.
async fn leave_group(consumer: &Arc<WeirConsumer>) {
    let c = Arc::clone(consumer);
    blocking(move || {
        c.unsubscribe();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && c.assignment().map(|a| a.count() > 0).unwrap_or(false)
        {
            let _ = c.poll(Duration::from_millis(100));
        }
    })
    .await;
}
