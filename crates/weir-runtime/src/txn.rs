//! Transactional producer calls and what each class of their errors does — the one policy.
//!
//! Every transactional call (`init_transactions`, `send_offsets_to_transaction`,
//! `commit_transaction`, `abort_transaction`) goes through [`call`] (async: the main loop and
//! the rebalance callbacks) or [`call_blocking`] (a background commit's own thread). Both run
//! the call on a detached thread (see `threads`) with the same watchdog, and retry it with the
//! same schedule; what is left is one [`Failure`], and each failure has one path:
//!
//! | the call ended with | class (`weir_kafka::errors`) | [`Failure`] | the engine's path |
//! |---|---|---|---|
//! | a retriable error | retriable | — (retried [`RETRIES`] times, backing off 100 ms more each time) | — |
//! | a retriable error, retries spent | retriable | [`Abortable`](Failure::Abortable) | abort, rewind to the committed offsets, go on |
//! | an abortable error | abortable | [`Abortable`](Failure::Abortable) | abort, rewind, go on |
//! | a fatal error | fatal | [`Fatal`](Failure::Fatal) | fenced: stop; otherwise replace the producer and resume every task from the committed offsets (bounded) |
//! | no return within [`WATCHDOG`] | — | [`Stuck`](Failure::Stuck) | replace the producer, as fatal |
//!
//! A background commit waits for its state's prepare before `send_offsets_to_transaction` and
//! `commit_transaction`: a prepare that failed is [`State`](Failure::State), and stops the
//! application (the transaction is not committed).
//!
//! An `abort_transaction` that fails cannot itself be aborted: its abortable failures stop too.
//! At start-up (`init_transactions`) every failure stops, naming what the broker needs.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, ThreadedProducer};
use weir_core::Config;
use weir_kafka::clients::producer_config;
use weir_kafka::errors::{classify, TxnErrorClass};

use crate::producer::{DeliveryContext, DeliveryState, WeirProducer};
use crate::threads::detached;
use crate::{telemetry, RuntimeError};

/// Timeout given to every transactional call and offset query.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long weir waits for a transactional call that was given [`CALL_TIMEOUT`] before it
/// declares the producer stuck: librdkafka can block past its own timeout (librdkafka#5456,
/// #5511: `send_offsets_to_transaction` while a coordinator broker disappears).
pub(crate) const WATCHDOG: Duration = Duration::from_secs(45);

/// Retries of a call whose error is retriable.
pub(crate) const RETRIES: u32 = 10;

/// How a transactional call failed, once the policy's retries are spent.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Abort the transaction, rewind, go on.
    Abortable(KafkaError),
    /// The producer is unusable: fenced (stop), or healed by a new producer.
    Fatal(KafkaError),
    /// The call did not return within [`WATCHDOG`].
    Stuck,
    /// The state's prepare failed, so the transaction was not committed: stop.
    State(weir_state::StateStoreError),
}

/// A failed call: which one, and how.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) during: &'static str,
    pub(crate) failure: Failure,
}

/// The policy for one error: retry after a back-off, or end with a failure.
fn next(during: &'static str, error: KafkaError, attempt: u32) -> Result<Duration, Failed> {
    let failure = match classify(&error) {
        TxnErrorClass::Retriable if attempt < RETRIES => {
            let backoff = Duration::from_millis(100 * u64::from(attempt + 1));
            telemetry::retrying(during, &error.to_string(), attempt + 1, backoff);
            return Ok(backoff);
        }
        TxnErrorClass::Retriable | TxnErrorClass::Abortable => Failure::Abortable(error),
        TxnErrorClass::Fatal => Failure::Fatal(error),
    };
    Err(Failed { during, failure })
}

/// Runs a transactional call under the policy, from async code.
pub(crate) async fn call<F>(
    during: &'static str,
    producer: &Arc<WeirProducer>,
    f: F,
) -> Result<(), Failed>
where
    F: Fn(&WeirProducer) -> Result<(), KafkaError> + Send + Sync + Clone + 'static,
{
    let mut attempt = 0;
    loop {
        let (p, f) = (Arc::clone(producer), f.clone());
        let result = tokio::time::timeout(WATCHDOG, detached(during, move || f(&p))).await;
        match result {
            Err(_) => {
                return Err(Failed {
                    during,
                    failure: Failure::Stuck,
                })
            }
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => tokio::time::sleep(next(during, e, attempt)?).await,
        }
        attempt += 1;
    }
}

/// Runs a transactional call under the policy, blocking the calling thread (a background
/// commit's): the same watchdog and retries as [`call`].
pub(crate) fn call_blocking<F>(
    during: &'static str,
    producer: &Arc<WeirProducer>,
    f: F,
) -> Result<(), Failed>
where
    F: Fn(&WeirProducer) -> Result<(), KafkaError> + Send + Sync + Clone + 'static,
{
    let mut attempt = 0;
    loop {
        let (p, f) = (Arc::clone(producer), f.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("weir-{during}"))
            .spawn(move || {
                let _ = tx.send(f(&p));
            })
            .expect("spawning a thread for a Kafka call");
        match rx.recv_timeout(WATCHDOG) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("a Kafka call on a detached thread panicked")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(Failed {
                    during,
                    failure: Failure::Stuck,
                })
            }
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => std::thread::sleep(next(during, e, attempt)?),
        }
        attempt += 1;
    }
}

/// Creates the producer (idempotent; transactional under exactly_once, with its transactions
/// initialised).
pub(crate) async fn new_producer(
    config: &Config,
    transactional_id: &str,
    delivery: &Arc<DeliveryState>,
) -> Result<Arc<WeirProducer>, RuntimeError> {
    let producer: ThreadedProducer<DeliveryContext> = producer_config(config, transactional_id)
        .create_with_context(DeliveryContext(Arc::clone(delivery)))
        .map_err(|source| RuntimeError::Kafka {
            during: "creating the producer".into(),
            source: source.into(),
        })?;
    let producer = Arc::new(WeirProducer::from(producer));
    if config.guarantee == weir_core::Guarantee::ExactlyOnce {
        init_transactions(&producer, transactional_id).await?;
    }
    Ok(producer)
}

/// Fences any earlier producer with this transactional id and aborts its open transaction
/// (DESIGN.md, "Recovery": this comes before anything reads committed offsets).
async fn init_transactions(
    producer: &Arc<WeirProducer>,
    transactional_id: &str,
) -> Result<(), RuntimeError> {
    let failed = match call("init_transactions", producer, |p| {
        p.init_transactions(CALL_TIMEOUT)
    })
    .await
    {
        Ok(()) => return Ok(()),
        Err(failed) => failed,
    };
    let during = format!(
        "init_transactions for transactional id {transactional_id:?} (is the broker's \
         transaction coordinator available? it needs transaction.state.log.replication.factor \
         and min.isr no larger than the number of brokers)"
    );
    Err(match failed.failure {
        Failure::Abortable(source) | Failure::Fatal(source) => RuntimeError::Kafka {
            during,
            source: source.into(),
        },
        Failure::Stuck => RuntimeError::Stuck {
            during,
            waited: WATCHDOG,
        },
        Failure::State(e) => e.into(),
    })
}
