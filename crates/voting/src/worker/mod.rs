//! The worker: moves votes from the queue into the store, a batch at a time.
//!
//! Per batch: read (abandoned entries first, then new ones), move entries that are not votes
//! to the dead-letter log, apply the votes in one store transaction, and acknowledge only
//! after the commit. A crash anywhere leaves the batch unacknowledged, so it is delivered
//! again, and applying it again changes nothing. A dependency being down is waited out with
//! backoff, never a reason to exit or to acknowledge. A store that refuses the statement
//! itself (a missing table or grant: [`StoreError::Refused`]) is the one reason to stop: the
//! worker logs it as an error and exits, and the batch stays queued.

pub mod args;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;
use voting_core::QueuedVote;
use voting_core::backoff::Backoff;
use voting_core::queue::{ConsumerGroup, ConsumerSettings, Delivery, QueueConsumer};
use voting_core::store::{StoreError, VoteStore};

use crate::http::connection::ConnectionLimits;
use crate::http::{Server, health_routes};
use crate::service::Service;

/// How one worker reads and stores.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker's consumer (with the process id and a random suffix).
    pub instance: String,
    /// Most votes per batch, and so per store transaction.
    pub batch_size: usize,
    /// How long an entry stays pending with a silent worker before another takes it over.
    pub claim_idle: Duration,
    /// How long one read waits for new votes.
    pub block: Duration,
    /// How often to trim acknowledged entries off the stream.
    pub trim_every: Duration,
}

impl WorkerConfig {
    /// The settings of a consumer of this worker, under a name no other consumer has.
    fn consumer(&self) -> ConsumerSettings {
        ConsumerSettings {
            name: consumer_name(&self.instance),
            batch_size: self.batch_size,
            claim_idle: self.claim_idle,
            block: self.block,
        }
    }
}

/// The worker loop. Holds no connection until [`Worker::run`].
#[derive(Debug)]
pub struct Worker<G, S> {
    config: WorkerConfig,
    group: G,
    store: S,
}

/// A worker as a service of its own: the loop and its health endpoints.
#[derive(Debug, Clone)]
pub struct WorkerServiceConfig {
    /// Where the health endpoints listen.
    pub addr: SocketAddr,
    pub worker: WorkerConfig,
    pub connections: ConnectionLimits,
}

#[derive(Debug)]
pub struct WorkerService<G, S> {
    server: Server,
    worker: Worker<G, S>,
}

impl<G: ConsumerGroup, S: VoteStore> WorkerService<G, S> {
    pub async fn build(config: WorkerServiceConfig, group: G, store: S) -> anyhow::Result<Self> {
        let (ready_group, ready_store) = (group.clone(), store.clone());
        let ready = move || {
            let (group, store) = (ready_group.clone(), ready_store.clone());
            async move {
                group.ping().await.map_err(|e| e.to_string())?;
                store.ping().await.map_err(|e| e.to_string())
            }
        };
        let router = Router::new().merge(health_routes(ready));
        let server = Server::bind(config.addr, router, config.connections).await.with_context(|| {
            format!(
                "binding the worker's health endpoints to {} (WORKER_ADDR); a second worker on this host \
                 needs an address of its own, e.g. WORKER_ADDR=127.0.0.1:0 for any free port",
                config.addr
            )
        })?;
        Ok(Self { server, worker: Worker::new(config.worker, group, store) })
    }
}

impl<G: ConsumerGroup, S: VoteStore> Service for WorkerService<G, S> {
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Runs until `shutdown`; the batch in hand is finished first. The health endpoints stop
    /// only after the loop, so they answer while the last batch ends.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop_server = CancellationToken::new();
        let work = async {
            let worked = self.worker.run(shutdown).await;
            stop_server.cancel();
            worked
        };
        let (served, worked) = tokio::join!(self.server.run(stop_server.clone()), work);
        worked?;
        Ok(served?)
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

impl<G: ConsumerGroup, S: VoteStore> Worker<G, S> {
    pub fn new(config: WorkerConfig, group: G, store: S) -> Self {
        Self { config, group, store }
    }

    /// Moves votes until `shutdown`, finishing the batch in hand first. Ends early, with the
    /// error, only when the store refuses a batch for good ([`StoreError::Refused`]): the batch
    /// stays in the queue for a worker that can store it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        let settings = self.config.consumer();
        let name = settings.name.clone();
        tracing::info!(worker.name = %name, "worker starting");
        let Some(mut consumer) =
            retry!(&shutdown, "join the consumer group", self.group.join(settings.clone()))
        else {
            return Ok(());
        };
        let mut backoff = Backoff::default();
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
            if !batch.is_empty() && !self.handle(&mut consumer, batch, &shutdown).await? {
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
        Ok(())
    }

    /// Applies and acknowledges one batch; false if shutdown interrupted it, leaving what was
    /// not committed unacknowledged for another worker; an error if the store refused it.
    async fn handle(
        &self,
        consumer: &mut G::Consumer,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<bool, StoreError> {
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
                        return Ok(false);
                    }
                }
            }
        }
        if votes.is_empty() {
            return Ok(true);
        }
        if !self.apply(&votes, shutdown).await? {
            return Ok(false);
        }
        let positions: Vec<_> = votes.iter().map(|v| v.position).collect();
        // If acknowledging fails for good the batch comes back, and applying it again is harmless.
        if retry!(shutdown, "acknowledge a batch", consumer.ack(&positions)).is_none() {
            return Ok(false);
        }
        tracing::debug!(
            batch.votes = votes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch stored"
        );
        Ok(true)
    }

    /// Commits the votes, retrying while the store is unavailable; false if shutdown came
    /// first, an error if the store refused them.
    async fn apply(&self, votes: &[QueuedVote], shutdown: &CancellationToken) -> Result<bool, StoreError> {
        let mut backoff = Backoff::default();
        loop {
            match self.store.apply(votes).await {
                Ok(()) => return Ok(true),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot apply a batch to the store; retrying");
                    if !pause(shutdown, backoff.next_delay()).await {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "the store refused a batch, and will refuse it again: stopping; the votes stay queued"
                    );
                    return Err(e);
                }
            }
        }
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
