//! `voting up`: vote, worker and result in one process, on embedded storage in a data
//! directory. The same service code as the deployed services, composed, with the embedded
//! queue and store in place of Redis and PostgreSQL.
//!
//! The data directory holds the cookie key and every vote: it is made private (0700, files
//! 0600) whatever the umask, and existing files are made so at every start.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser};
use tokio_util::sync::CancellationToken;
use voting_core::Ballot;
use voting_core::queue::embedded::EmbeddedQueue;
use voting_core::store::embedded::EmbeddedStore;

use crate::cli::{AbuseArgs, BallotArgs, Cli, Command, ConnectionArgs, CookieArgs};
use crate::http::connection::ConnectionLimits;
use crate::http::instance_name;
use crate::result::ResultConfig;
use crate::result::args::RefreshArgs;
use crate::system::{System, SystemConfig};
use crate::vote::VoteConfig;
use crate::vote::cookie::CookieKey;
use crate::worker::args::BatchArgs;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the embedded queue and store keep their files.
    #[arg(long, env = "DATA_DIR", default_value = "./voting-data")]
    pub data_dir: PathBuf,
    /// Address of the vote page.
    #[arg(long, env = "VOTE_ADDR", default_value = "127.0.0.1:8080")]
    pub vote_addr: SocketAddr,
    /// Address of the result page.
    #[arg(long, env = "RESULT_ADDR", default_value = "127.0.0.1:8081")]
    pub result_addr: SocketAddr,
    #[command(flatten)]
    pub ballot: BallotArgs,
    #[command(flatten)]
    pub cookie: CookieArgs,
    #[command(flatten)]
    pub abuse: AbuseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub batches: BatchArgs,
    #[command(flatten)]
    pub refresh: RefreshArgs,
}

impl UpArgs {
    pub fn config(self) -> anyhow::Result<UpConfig> {
        let instance = instance_name(None);
        // One set of connection caps for both listeners: they share the process's descriptors.
        let connections = self.connections.limits();
        let ballot = self.ballot.ballot()?;
        Ok(UpConfig {
            data_dir: self.data_dir,
            cookie_key: self.cookie.key()?,
            system: SystemConfig {
                vote: VoteConfig {
                    addr: self.vote_addr,
                    ballot: ballot.clone(),
                    // Replaced by the data directory's key when none is given.
                    cookie_key: CookieKey::random(),
                    instance: instance.clone(),
                    new_voters: self.abuse.new_voters(),
                    public_origins: self.abuse.public_origins,
                    connections: connections.clone(),
                },
                result: ResultConfig {
                    addr: self.result_addr,
                    ballot,
                    refresh: self.refresh.refresh,
                    instance: instance.clone(),
                    connections,
                },
                worker: self.batches.config(instance),
                workers: 1,
            },
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config()?;
        let data_dir = config.data_dir.clone();
        let up = Up::build(config).await?;
        println!("vote:   http://{}/", browsable(up.vote_addr()));
        println!("result: http://{}/", browsable(up.result_addr()));
        println!("data:   {}", data_dir.display());
        up.run(shutdown).await
    }
}

/// `0.0.0.0` is where we listen, not where a browser should go.
fn browsable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{}", addr.port()) } else { addr.to_string() }
}

#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    /// If not given, a key kept in the data directory, so voters stay voters across restarts.
    pub cookie_key: Option<CookieKey>,
    pub system: SystemConfig,
}

impl UpConfig {
    /// What `voting up ARGS` runs with: these arguments, the environment, and otherwise the
    /// command line's defaults, which are defined there and nowhere else.
    pub fn parse_from<T: Into<OsString> + Clone>(args: impl IntoIterator<Item = T>) -> anyhow::Result<Self> {
        let command_line =
            ["voting", "up"].map(OsString::from).into_iter().chain(args.into_iter().map(Into::into));
        match Cli::try_parse_from(command_line)?.command {
            Command::Up(args) => args.config(),
            _ => unreachable!("parsed as `voting up`"),
        }
    }

    /// `voting up` on loopback ports the system picks, its data in `data_dir`, with this ballot
    /// (`id=Label,...`) and the command line's defaults otherwise: what tests and embedders run.
    pub fn on_any_loopback_port(data_dir: &Path, ballot: &str) -> anyhow::Result<Self> {
        let data_dir = data_dir.as_os_str();
        Self::parse_from([
            "--data-dir".as_ref(),
            data_dir,
            "--vote-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--result-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--options".as_ref(),
            OsStr::new(ballot),
        ])
    }

    /// Both services' connection caps: one set, as they share the process's descriptors.
    pub fn set_connections(&mut self, limits: ConnectionLimits) {
        self.system.vote.connections = limits.clone();
        self.system.result.connections = limits;
    }

    /// The ballot both services show.
    pub fn set_ballot(&mut self, ballot: Ballot) {
        self.system.vote.ballot = ballot.clone();
        self.system.result.ballot = ballot;
    }
}

/// The bound all-in-one system, on embedded storage in its data directory.
#[derive(Debug)]
pub struct Up {
    system: System<EmbeddedQueue, EmbeddedQueue, EmbeddedStore>,
}

impl Up {
    pub async fn build(mut config: UpConfig) -> anyhow::Result<Self> {
        let data_dir = &config.data_dir;
        private_data_dir(data_dir)
            .with_context(|| format!("preparing the data directory {}", data_dir.display()))?;
        let queue = EmbeddedQueue::open(&private_database(data_dir, "queue.sqlite")?).await?;
        let store = EmbeddedStore::open(&private_database(data_dir, "store.sqlite")?).await?;
        config.system.vote.cookie_key = match config.cookie_key {
            Some(key) => key,
            None => stored_cookie_key(data_dir)?,
        };
        let system = System::build(config.system, queue.clone(), queue, store).await?;
        Ok(Self { system })
    }

    pub fn vote_addr(&self) -> SocketAddr {
        self.system.vote_addr()
    }

    pub fn result_addr(&self) -> SocketAddr {
        self.system.result_addr()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.system.run(shutdown).await
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
