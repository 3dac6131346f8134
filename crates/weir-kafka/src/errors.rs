//! Transaction error classes.
//!
//! librdkafka's transactional API reports every failure as one of three kinds, and the runtime
//! has exactly one handling path for each (weir-runtime's `txn` module holds the policy):
//!
//! | class | librdkafka says | weir does |
//! |---|---|---|
//! | [`Retriable`](TxnErrorClass::Retriable) | `rd_kafka_error_is_retriable` | repeat the same call after a short back-off; when the retries run out, as abortable |
//! | [`Abortable`](TxnErrorClass::Abortable) | `rd_kafka_error_txn_requires_abort` | `abort_transaction`, seek back to the committed offsets, process again |
//! | [`Fatal`](TxnErrorClass::Fatal) | `rd_kafka_error_is_fatal` | fenced ([`is_fenced`]): stop the application with a clear error; otherwise replace the producer and resume from the committed offsets, a bounded number of times |
//!
//! Errors that are none of these (an API used in the wrong state, a timeout outside a
//! transaction call) are treated as fatal: they mean weir's own state machine is wrong, and going
//! on could commit something it should not.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How a transaction error is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnErrorClass {
    /// Repeat the same call.
    Retriable,
    /// Abort the transaction and rewind to the committed offsets.
    Abortable,
    /// Stop.
    Fatal,
}

/// Classifies an error returned by a transactional producer call.
pub fn classify(error: &KafkaError) -> TxnErrorClass {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => TxnErrorClass::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnErrorClass::Abortable,
        KafkaError::Transaction(e) if e.is_retriable() => TxnErrorClass::Retriable,
        // `commit_transaction` flushes first; a flush that timed out left messages undelivered,
        // which the transaction cannot commit.
        KafkaError::Flush(_) => TxnErrorClass::Abortable,
        _ => TxnErrorClass::Fatal,
    }
}

/// Whether the error means another producer with the same transactional id took over.
pub fn is_fenced(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_fenced_code)
}

/// The error codes of fencing — the one list of them. Also what a producer's fatal error is
/// when it was fenced (`Client::fatal_error`, once every call reports only `ERR__FATAL`).
pub fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}
