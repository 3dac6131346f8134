//! Where blocking work runs: RocksDB writes and one-off client calls on tokio's blocking pool
//! ([`blocking`]); producer calls that librdkafka may never return from on detached threads of
//! their own ([`detached`]). A leaf: it imports nothing of weir's.

/// Runs a blocking client call on tokio's blocking pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking Kafka call panicked")
}

/// A producer call running on a thread of its own (see [`detached`]); await it for its result.
pub(crate) struct Detached<T> {
    result: tokio::sync::oneshot::Receiver<T>,
}

impl<T> Detached<T> {
    /// Whether the call has returned and its result waits to be taken.
    pub(crate) fn is_finished(&self) -> bool {
        !self.result.is_empty()
    }
}

impl<T> std::future::Future for Detached<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.result)
            .poll(cx)
            .map(|r| r.expect("a Kafka call on a detached thread panicked"))
    }
}

/// Runs a producer call that librdkafka may never return from on a detached thread of its
/// own, not on tokio's blocking pool: a runtime waits for its blocking-pool threads when it
/// shuts down, so one call blocked inside librdkafka (librdkafka#5456, #5511:
/// `send_offsets_to_transaction` while a coordinator broker disappears) would keep the process
/// from exiting, while a detached thread ends with the process. Transactional calls are a few
/// per commit, so a thread each costs nothing measurable.
pub(crate) fn detached<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Detached<T> {
    let (tx, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("weir-{name}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawning a thread for a Kafka call");
    Detached { result }
}
