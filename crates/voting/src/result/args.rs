//! `voting result`: its command line, and the wiring from it to a running [`ResultService`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{ResultConfig, ResultService};
use crate::cli::{BallotArgs, ConnectionArgs, DatabaseArgs, millis};
use crate::http::instance_name;
use crate::service::Service;

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Address to listen on.
    #[arg(long = "addr", env = "RESULT_ADDR", default_value = "0.0.0.0:8081")]
    pub addr: SocketAddr,
    /// Name shown in page footers; defaults to the host name.
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub refresh: RefreshArgs,
    #[command(flatten)]
    pub ballot: BallotArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

/// How often the tallies are read whatever notifications say: `voting result` and `voting up`
/// take the same setting.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Longest time (ms) between two reads of the tallies, whatever notifications say (10 to 2000).
    #[arg(long = "refresh-ms", env = "RESULT_REFRESH_MS", default_value = "1000", value_parser = refresh_millis, value_name = "MS")]
    pub refresh: Duration,
}

fn refresh_millis(text: &str) -> Result<Duration, String> {
    let refresh = millis(text)?;
    if (Duration::from_millis(10)..=Duration::from_millis(2000)).contains(&refresh) {
        Ok(refresh)
    } else {
        Err(format!("{text} ms is not in 10..=2000"))
    }
}

impl ResultArgs {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = ResultConfig {
            addr: self.addr,
            ballot: self.ballot.ballot()?,
            refresh: self.refresh.refresh,
            instance: instance_name(self.instance),
            connections: self.connections.limits(),
        };
        let service = ResultService::build(config, self.database.store()?)
            .await
            .with_context(|| format!("binding {}", self.addr))?;
        tracing::info!(addr = %service.local_addr(), "result service listening");
        service.run(shutdown).await
    }
}
