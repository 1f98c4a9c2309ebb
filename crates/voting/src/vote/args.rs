//! `voting vote`: its command line, and the wiring from it to a running [`VoteService`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use voting_core::queue::Durability;
use voting_core::queue::redis::RedisQueue;
use voting_core::secrets;

use super::cookie::CookieKey;
use super::{VoteConfig, VoteService};
use crate::cli::{AbuseArgs, BallotArgs, ConnectionArgs, CookieArgs, RedisArgs, millis};
use crate::http::instance_name;
use crate::service::Service;

#[derive(Debug, Args)]
pub struct VoteArgs {
    /// Address to listen on.
    #[arg(long = "addr", env = "VOTE_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// `fast`: acknowledge once Redis has the vote; `replicated`: once a replica has it too.
    #[arg(long, env = "VOTE_DURABILITY", default_value = "fast")]
    pub durability: Durability,
    /// How long (ms) `replicated` waits for a replica before answering 503.
    #[arg(long = "replication-timeout-ms", env = "VOTE_REPLICATION_TIMEOUT_MS", default_value = "500", value_parser = millis, value_name = "MS")]
    pub replication_timeout: Duration,
    /// Name shown in page footers; defaults to the host name (the container id under Docker).
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub ballot: BallotArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub cookie: CookieArgs,
    #[command(flatten)]
    pub abuse: AbuseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl VoteArgs {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cookie_key = self.cookie.key()?.unwrap_or_else(|| {
            tracing::warn!("COOKIE_SECRET is not set: using a random key, so voters get new cookies after a restart and replicas refuse each other's");
            CookieKey::random()
        });
        let config = VoteConfig {
            addr: self.addr,
            ballot: self.ballot.ballot()?,
            cookie_key,
            instance: instance_name(self.instance),
            new_voters: self.abuse.new_voters(),
            public_origins: self.abuse.public_origins,
            connections: self.connections.limits(),
        };
        let url = self.redis.url()?;
        let queue = RedisQueue::new(&url, self.durability, self.replication_timeout)
            .with_context(|| format!("REDIS_URL {}", secrets::redact_url(&url)))?;
        let service =
            VoteService::build(config, queue).await.with_context(|| format!("binding {}", self.addr))?;
        tracing::info!(addr = %service.local_addr(), durability = %self.durability, "vote service listening");
        service.run(shutdown).await
    }
}
