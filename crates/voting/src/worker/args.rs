//! `voting worker`: its command line, and the wiring from it to a running [`WorkerService`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use voting_core::queue::redis::RedisConsumerGroup;

use super::{WorkerConfig, WorkerService, WorkerServiceConfig};
use crate::cli::{ConnectionArgs, DatabaseArgs, RedisArgs, millis};
use crate::http::instance_name;
use crate::service::Service;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address of the health endpoints; each worker on a host needs its own (`127.0.0.1:0`
    /// picks a free port).
    #[arg(long = "addr", env = "WORKER_ADDR", default_value = "0.0.0.0:8082")]
    pub addr: SocketAddr,
    /// Name of this worker; defaults to the host name. The consumer name adds the process id.
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub batches: BatchArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// How a worker reads and stores: `voting worker` and `voting up` take the same settings.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Most votes per batch (one store transaction each).
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long (ms) an entry stays pending with a silent worker before another takes it over.
    #[arg(long = "claim-idle-ms", env = "WORKER_CLAIM_IDLE_MS", default_value = "30000", value_parser = millis, value_name = "MS")]
    pub claim_idle: Duration,
    /// How long (ms) one read waits for new votes.
    #[arg(long = "block-ms", env = "WORKER_BLOCK_MS", default_value = "1000", value_parser = millis, value_name = "MS")]
    pub block: Duration,
    /// How often (ms) acknowledged entries are trimmed off the queue.
    #[arg(long = "trim-interval-ms", env = "WORKER_TRIM_INTERVAL_MS", default_value = "5000", value_parser = millis, value_name = "MS")]
    pub trim_interval: Duration,
}

impl BatchArgs {
    pub fn config(&self, instance: String) -> WorkerConfig {
        WorkerConfig {
            instance,
            batch_size: self.batch_size as usize,
            claim_idle: self.claim_idle,
            block: self.block,
            trim_every: self.trim_interval,
        }
    }
}

impl WorkerArgs {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = WorkerServiceConfig {
            addr: self.addr,
            worker: self.batches.config(instance_name(self.instance)),
            connections: self.connections.limits(),
        };
        let url = self.redis.url()?;
        let group = RedisConsumerGroup::new(&url)
            .with_context(|| format!("REDIS_URL {}", voting_core::secrets::redact_url(&url)))?;
        let service = WorkerService::build(config, group, self.database.store()?).await?;
        tracing::info!(addr = %service.local_addr(), "worker health endpoints listening");
        service.run(shutdown).await
    }
}
