//! The worker: moves votes from the queue into the store, a batch at a time.
//!
//! Per batch: read (abandoned entries first, then new ones), move entries that are not votes
//! to the dead-letter log, apply the votes in one store transaction, and acknowledge only
//! after the commit. A crash anywhere leaves the batch unacknowledged, so it is delivered
//! again, and applying it again changes nothing. A dependency being down is waited out with
//! backoff, never a reason to exit or to acknowledge.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use tokio_util::sync::CancellationToken;
use voting_core::QueuedVote;
use voting_core::backoff::Backoff;
use voting_core::queue::{ConsumerSettings, Delivery, QueueConsumer, VoteQueue};
use voting_core::store::VoteStore;

use crate::http::connection::ConnectionLimits;
use crate::http::{Server, health_routes};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub consumer: ConsumerSettings,
    /// How often to trim acknowledged entries off the stream.
    pub trim_every: Duration,
}

/// The worker loop. Holds no connection until [`Worker::run`].
#[derive(Debug)]
pub struct Worker<Q, S> {
    config: WorkerConfig,
    queue: Q,
    store: S,
}

/// A worker as a service: the loop and its health endpoints.
#[derive(Debug)]
pub struct WorkerService<Q, S> {
    server: Server,
    worker: Worker<Q, S>,
}

impl<Q: VoteQueue, S: VoteStore> WorkerService<Q, S> {
    pub async fn build(
        addr: SocketAddr,
        config: WorkerConfig,
        connections: ConnectionLimits,
        queue: Q,
        store: S,
    ) -> std::io::Result<Self> {
        let (ready_queue, ready_store) = (queue.clone(), store.clone());
        let ready = move || {
            let (queue, store) = (ready_queue.clone(), ready_store.clone());
            async move {
                queue.ping().await.map_err(|e| e.to_string())?;
                store.ping().await.map_err(|e| e.to_string())
            }
        };
        let server = Server::bind(addr, Router::new().merge(health_routes(ready)), connections).await?;
        Ok(Self { server, worker: Worker::new(config, queue, store) })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Runs until `shutdown`; the batch in hand is finished first.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // The health server stops only after the loop, so it answers while the last batch ends.
        let stop_server = CancellationToken::new();
        let server = tokio::spawn(self.server.run(stop_server.clone()));
        self.worker.run(shutdown).await;
        stop_server.cancel();
        server.await.map_err(std::io::Error::other)?
    }
}

/// Retries an operation with backoff until it succeeds (`Some`), or until shutdown (`None`).
/// A macro rather than a function taking a closure: the operations borrow the consumer
/// mutably, which closures returning futures cannot express while staying `Send`.
macro_rules! retry {
    ($shutdown:expr, $what:literal, $attempt:expr) => {{
        let mut backoff = Backoff::default();
        loop {
            match $attempt.await {
                Ok(value) => break Some(value),
                Err(e) => {
                    tracing::warn!(error = %e, concat!("cannot ", $what, "; retrying"));
                    if !pause($shutdown, backoff.next_delay()).await {
                        break None;
                    }
                }
            }
        }
    }};
}

impl<Q: VoteQueue, S: VoteStore> Worker<Q, S> {
    pub fn new(config: WorkerConfig, queue: Q, store: S) -> Self {
        Self { config, queue, store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.config.consumer.name.clone();
        tracing::info!(worker.name = %name, "worker starting");
        let mut backoff = Backoff::default();
        let mut consumer = loop {
            match self.queue.consumer(self.config.consumer.clone()).await {
                Ok(consumer) => break consumer,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot join the consumer group; retrying");
                    if !pause(&shutdown, backoff.next_delay()).await {
                        return;
                    }
                }
            }
        };
        backoff.reset();
        let mut next_trim = Instant::now() + self.config.trim_every;
        // The read is never cancelled halfway: entries it returns must be applied or left
        // pending, and a read ends by itself within the block time.
        while !shutdown.is_cancelled() {
            let batch = match consumer.next_batch().await {
                Ok(batch) => {
                    backoff.reset();
                    batch
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the queue; retrying");
                    pause(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            };
            if !batch.is_empty() && !self.handle(&mut consumer, batch, &shutdown).await {
                break;
            }
            if Instant::now() >= next_trim {
                if let Err(e) = consumer.trim().await {
                    tracing::warn!(error = %e, "cannot trim the queue");
                }
                next_trim = Instant::now() + self.config.trim_every;
            }
        }
        tracing::info!(worker.name = %name, "worker stopped");
    }

    /// Applies and acknowledges one batch; false if shutdown interrupted it, leaving what was
    /// not committed unacknowledged for another worker.
    async fn handle(
        &self,
        consumer: &mut Q::Consumer,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let mut votes = Vec::with_capacity(batch.len());
        for delivery in &batch {
            match &delivery.payload {
                Ok(vote) => votes.push(QueuedVote { position: delivery.position, vote: vote.clone() }),
                Err(malformed) => {
                    tracing::warn!(entry = %delivery.position, reason = %malformed.reason, "entry is not a vote; moving it to the dead letters");
                    let dead = retry!(
                        shutdown,
                        "dead-letter an entry",
                        consumer.dead_letter(delivery, &malformed.reason)
                    );
                    if dead.is_none() {
                        return false;
                    }
                }
            }
        }
        if votes.is_empty() {
            return true;
        }
        if retry!(shutdown, "apply a batch to the store", self.store.apply(&votes)).is_none() {
            return false;
        }
        let positions: Vec<_> = votes.iter().map(|v| v.position).collect();
        // If acknowledging fails for good the batch comes back, and applying it again is harmless.
        if retry!(shutdown, "acknowledge a batch", consumer.ack(&positions)).is_none() {
            return false;
        }
        tracing::debug!(
            batch.votes = votes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch stored"
        );
        true
    }
}

/// Sleeps, unless shutdown comes first; true if the sleep ran out.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// A consumer name unique to this process: host, process id and a random suffix.
pub fn consumer_name(instance: &str) -> String {
    format!("{instance}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}
