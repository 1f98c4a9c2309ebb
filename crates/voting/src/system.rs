//! The whole system in one process: the vote service, the result service and workers over one
//! queue and one store. `voting up` runs it on embedded storage; the system tests run it on
//! real Redis and PostgreSQL. Each part is built and run as it is on its own ([`Service`]).

use std::net::SocketAddr;

use anyhow::Context;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use voting_core::queue::{ConsumerGroup, VoteQueue};
use voting_core::store::VoteStore;

use crate::result::{ResultConfig, ResultService};
use crate::service::Service;
use crate::vote::{VoteConfig, VoteService};
use crate::worker::{Worker, WorkerConfig};

#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub vote: VoteConfig,
    pub result: ResultConfig,
    pub worker: WorkerConfig,
    /// How many workers; each is a consumer of its own in the group.
    pub workers: usize,
}

/// The bound system.
#[derive(Debug)]
pub struct System<Q, G, S> {
    vote: VoteService<Q>,
    result: ResultService,
    workers: Vec<Worker<G, S>>,
}

impl<Q: VoteQueue, G: ConsumerGroup, S: VoteStore> System<Q, G, S> {
    /// Binds both services; `queue` and `group` are the two ends of one queue.
    pub async fn build(config: SystemConfig, queue: Q, group: G, store: S) -> anyhow::Result<Self> {
        let (vote_addr, result_addr) = (config.vote.addr, config.result.addr);
        let vote = VoteService::build(config.vote, queue)
            .await
            .with_context(|| format!("binding the vote service to {vote_addr}"))?;
        let result = ResultService::build(config.result, store.clone())
            .await
            .with_context(|| format!("binding the result service to {result_addr}"))?;
        let workers = (0..config.workers)
            .map(|_| Worker::new(config.worker.clone(), group.clone(), store.clone()))
            .collect();
        Ok(Self { vote, result, workers })
    }

    pub fn vote_addr(&self) -> SocketAddr {
        self.vote.local_addr()
    }

    pub fn result_addr(&self) -> SocketAddr {
        self.result.local_addr()
    }

    /// Runs every part until `shutdown`, or until one of them fails (a worker whose batches the
    /// store refuses), which stops the others too.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop = shutdown.child_token();
        let stop_all_on_error = |result: anyhow::Result<()>| {
            if result.is_err() {
                stop.cancel();
            }
            result
        };
        let vote = async { stop_all_on_error(self.vote.run(stop.clone()).await.context("vote service")) };
        let result =
            async { stop_all_on_error(self.result.run(stop.clone()).await.context("result service")) };
        let workers = join_all(
            self.workers
                .into_iter()
                .map(|worker| async { stop_all_on_error(worker.run(stop.clone()).await.context("worker")) }),
        );
        let (vote, result, workers) = tokio::join!(vote, result, workers);
        vote?;
        result?;
        workers.into_iter().collect()
    }
}
