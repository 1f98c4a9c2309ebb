//! `voting up`: vote, worker and result in one process, on embedded storage in a data
//! directory. The same service code as the deployed services, composed, with the embedded
//! queue and store in place of Redis and PostgreSQL.
//!
//! The data directory holds the cookie key and every vote: it is made private (0700, files
//! 0600) whatever the umask, and existing files are made so at every start.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use voting_core::Ballot;
use voting_core::queue::ConsumerSettings;
use voting_core::queue::embedded::EmbeddedQueue;
use voting_core::store::embedded::EmbeddedStore;

use crate::http::connection::ConnectionLimits;
use crate::result::{ResultConfig, ResultService};
use crate::vote::VoteConfig;
use crate::vote::cookie::CookieKey;
use crate::vote::limit::NewVoterPolicy;
use crate::vote::origin::PublicOrigins;
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
    pub new_voters: NewVoterPolicy,
    pub public_origins: PublicOrigins,
    /// One set of connection caps for both listeners: they share the process's descriptors.
    pub connections: ConnectionLimits,
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
        private_data_dir(&config.data_dir)
            .with_context(|| format!("preparing the data directory {}", config.data_dir.display()))?;
        let queue = EmbeddedQueue::open(&private_database(&config.data_dir, "queue.sqlite")?).await?;
        let store = EmbeddedStore::open(&private_database(&config.data_dir, "store.sqlite")?).await?;
        let cookie_key = match config.cookie_key {
            Some(key) => key,
            None => stored_cookie_key(&config.data_dir)?,
        };
        let vote = crate::vote::build(
            config.vote_addr,
            VoteConfig {
                ballot: config.ballot.clone(),
                cookie_key,
                instance: config.instance.clone(),
                new_voters: config.new_voters,
                public_origins: config.public_origins,
                connections: config.connections.clone(),
            },
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
                connections: config.connections,
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

/// Makes the data directory (and any missing parent) readable by its owner only, even if it
/// already existed.
fn private_data_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The path of a SQLite database in the data directory, the file created 0600 if missing and
/// made 0600 if not. SQLite gives its `-wal` and `-shm` files the database file's mode;
/// existing ones from an older start are made private too.
fn private_database(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = dir.join(format!("{name}{suffix}"));
        match fs::set_permissions(&file, fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.with_context(|| format!("making {} private", file.display()))?,
        }
    }
    Ok(path)
}

/// The cookie key of this data directory, made on first start. A key file that is there but
/// is not a key stops the start: replacing it would silently log every voter out.
fn stored_cookie_key(data_dir: &Path) -> anyhow::Result<CookieKey> {
    const KEY_BYTES: usize = 32;
    let path = data_dir.join("cookie-secret");
    match fs::read(&path) {
        Ok(secret) if secret.len() >= KEY_BYTES => {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
            Ok(CookieKey::new(&secret))
        }
        Ok(secret) => anyhow::bail!(
            "{} holds {} bytes, not a cookie key of {KEY_BYTES}; restore it, or delete it to make a new one \
             (every voter then gets a new cookie)",
            path.display(),
            secret.len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; KEY_BYTES] = rand::random();
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(&secret)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(CookieKey::new(&secret))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
