//! `voting up`: vote, worker and result in one process, on embedded storage in a data
//! directory. The same service code as the deployed services, composed, with the embedded
//! queue and store in place of Redis and PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use voting_core::Ballot;
use voting_core::queue::ConsumerSettings;
use voting_core::queue::embedded::EmbeddedQueue;
use voting_core::store::embedded::EmbeddedStore;

use crate::result::{ResultConfig, ResultService};
use crate::vote::VoteConfig;
use crate::vote::cookie::CookieKey;
use crate::worker::{Worker, WorkerConfig, consumer_name};

#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub vote_addr: SocketAddr,
    pub result_addr: SocketAddr,
    pub ballot: Ballot,
    /// If not given, a key kept in the data directory, so voters stay voters across restarts.
    pub cookie_key: Option<CookieKey>,
    pub instance: String,
}

/// The bound all-in-one system.
#[derive(Debug)]
pub struct Up {
    vote: crate::http::Server,
    result: ResultService,
    worker: Worker<EmbeddedQueue, EmbeddedStore>,
    shutdown: CancellationToken,
}

impl Up {
    pub async fn build(config: UpConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
        let queue = EmbeddedQueue::open(&config.data_dir.join("queue.sqlite")).await?;
        let store = EmbeddedStore::open(&config.data_dir.join("store.sqlite")).await?;
        let cookie_key = match config.cookie_key {
            Some(key) => key,
            None => stored_cookie_key(&config.data_dir)?,
        };
        let vote = crate::vote::build(
            config.vote_addr,
            VoteConfig { ballot: config.ballot.clone(), cookie_key, instance: config.instance.clone() },
            queue.clone(),
        )
        .await
        .with_context(|| format!("binding the vote service to {}", config.vote_addr))?;
        let result = ResultService::build(
            config.result_addr,
            ResultConfig {
                ballot: config.ballot,
                refresh: Duration::from_secs(1),
                instance: config.instance.clone(),
            },
            store.clone(),
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("binding the result service to {}", config.result_addr))?;
        let worker = Worker::new(
            WorkerConfig {
                consumer: ConsumerSettings {
                    name: consumer_name(&config.instance),
                    batch_size: 1000,
                    claim_idle: Duration::from_secs(30),
                    block: Duration::from_secs(1),
                },
                trim_every: Duration::from_secs(60),
            },
            queue,
            store,
        );
        Ok(Self { vote, result, worker, shutdown })
    }

    pub fn vote_addr(&self) -> std::io::Result<SocketAddr> {
        self.vote.local_addr()
    }

    pub fn result_port(&self) -> u16 {
        self.result.port()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let (vote, result, worker) = tokio::join!(
            self.vote.run(self.shutdown.clone()),
            self.result.run(),
            self.worker.run(self.shutdown.clone()),
        );
        let () = worker;
        vote.context("vote service")?;
        result.context("result service")?;
        Ok(())
    }
}

/// The cookie key of this data directory, made on first start.
fn stored_cookie_key(data_dir: &std::path::Path) -> anyhow::Result<CookieKey> {
    let path = data_dir.join("cookie-secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => Ok(CookieKey::new(&secret)),
        _ => {
            let secret: [u8; 32] = rand::random();
            std::fs::write(&path, secret).with_context(|| format!("writing {}", path.display()))?;
            Ok(CookieKey::new(&secret))
        }
    }
}
