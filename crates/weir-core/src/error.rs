//! Errors an operator returns, and what the runtime does with each.

use std::fmt;

/// A boxed error from an operator or a library it calls.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error an operator returns from [`Processor`](crate::Processor) methods.
///
/// Each variant has exactly one handling path in the runtime:
///
/// | variant | exactly_once | at_least_once |
/// |---|---|---|
/// | [`Retriable`](Self::Retriable) | abort the transaction, seek back to the committed offsets, call `on_abort`, retry after a back-off (up to `processing.retries` times in a row) | seek back to the committed offsets, call `on_abort`, retry likewise |
/// | [`Fatal`](Self::Fatal) | abort the transaction and stop the application with the error | stop without committing the batch |
/// | [`Poison`](Self::Poison) | abort and stop; returned by [`Context::poison`](crate::Context::poison) under `poison.policy = fail` | stop without committing the batch |
///
/// `?` on any `std::error::Error` gives [`Retriable`](Self::Retriable): a failed lookup or a
/// timeout is usually worth another attempt, and nothing of the failed attempt is ever committed.
/// Bad *input* is not retriable — hand the record to [`Context::poison`](crate::Context::poison)
/// instead, so that the poison policy decides.
pub enum ProcessError {
    /// A failure worth another attempt from the last committed offsets.
    Retriable(BoxError),
    /// A failure that retrying cannot fix: the application stops.
    Fatal(BoxError),
    /// A record that cannot be processed, under `poison.policy = fail`.
    Poison(PoisonRecord),
}

impl ProcessError {
    /// A failure worth another attempt (see the table on [`ProcessError`]).
    pub fn retriable(cause: impl Into<BoxError>) -> Self {
        Self::Retriable(cause.into())
    }

    /// A failure that stops the application (see the table on [`ProcessError`]).
    pub fn fatal(cause: impl Into<BoxError>) -> Self {
        Self::Fatal(cause.into())
    }
}

impl<E> From<E> for ProcessError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self::Retriable(Box::new(error))
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retriable(e) => write!(f, "retriable operator error: {e}"),
            Self::Fatal(e) => write!(f, "fatal operator error: {e}"),
            Self::Poison(p) => p.fmt(f),
        }
    }
}

impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A record the operator could not process, with where it is and why.
#[derive(Debug)]
pub struct PoisonRecord {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Why the operator rejected it.
    pub cause: BoxError,
}

impl fmt::Display for PoisonRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "poison record at topic {} partition {} offset {}: {}. Nothing at or after this offset \
             was committed. Fix the record's producer, or set `poison.policy` to `skip` or \
             `dead_letter` (with `dead.letter.topic`) to get past it",
            self.topic, self.partition, self.offset, self.cause
        )
    }
}

impl std::error::Error for PoisonRecord {}
