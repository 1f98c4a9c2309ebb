//! The command line. Every setting is a flag and an environment variable from one
//! definition, so `--help` lists each with its variable and default. Secrets can also come
//! from files (`<NAME>_FILE`, as Docker secrets are mounted).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use voting_core::Ballot;
use voting_core::secrets;
use voting_core::store::postgres::PostgresStore;
use voting_core::telemetry::LogFormat;

use crate::certs::args::CertsArgs;
use crate::http::client::Cidrs;
use crate::http::connection::ConnectionLimits;
use crate::result::args::ResultArgs;
use crate::up::UpArgs;
use crate::vote::args::VoteArgs;
use crate::vote::cookie::CookieKey;
use crate::vote::limit::NewVoterPolicy;
use crate::vote::origin::PublicOrigins;
use crate::worker::args::WorkerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "voting",
    version,
    about = "A voting platform: vote, worker and result services, or all three in one process."
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process, on embedded storage: no Redis, PostgreSQL or Docker needed.
    Up(UpArgs),
    /// The vote service: the voting page and API, in front of Redis.
    Vote(VoteArgs),
    /// Moves votes from Redis into PostgreSQL.
    Worker(WorkerArgs),
    /// The result service: live results from PostgreSQL.
    Result(ResultArgs),
    /// The certificate manager: HTTPS certificates ordered once (ACME) and served to every
    /// edge proxy.
    Certs(CertsArgs),
    /// Creates or updates the PostgreSQL schema, then exits. Safe to run while the system runs.
    Migrate(MigrateArgs),
    /// Sends votes to a vote service and reports throughput, latency and errors; with
    /// `--verify`, checks that exactly the acknowledged votes get counted.
    Load(voting_load::LoadArgs),
    /// Exits 0 when a service's health endpoint answers 2xx, 1 otherwise: a container
    /// `HEALTHCHECK` that needs no curl in the image.
    Healthcheck(HealthcheckArgs),
}

impl Command {
    /// Runs the subcommand until it is done or `shutdown`; each one's wiring is its module's.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match self {
            Self::Up(args) => args.run(shutdown).await,
            Self::Vote(args) => args.run(shutdown).await,
            Self::Worker(args) => args.run(shutdown).await,
            Self::Result(args) => args.run(shutdown).await,
            Self::Certs(args) => args.run(shutdown).await,
            Self::Migrate(args) => args.run().await,
            Self::Load(args) => args.run().await,
            Self::Healthcheck(args) => args.run().await,
        }
    }
}

/// Milliseconds, for the settings whose variables have always been `*_MS`.
pub fn millis(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("`{text}` is not a whole number of milliseconds"))
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The endpoint to ask: `/healthz` (alive) or `/readyz` (dependencies reachable).
    #[arg(long, env = "HEALTHCHECK_URL", default_value = "http://127.0.0.1:8080/healthz")]
    pub url: String,
    /// How long to wait for the answer.
    #[arg(long, value_parser = voting_core::duration::parse_duration, default_value = "2s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct BallotArgs {
    /// The ballot as `id=Label,...` (ids: a-z, 0-9, `_`, `-`); overrides OPTION_A and OPTION_B.
    #[arg(long = "options", env = "VOTE_OPTIONS")]
    pub options: Option<String>,
    /// Label of option `a`.
    #[arg(long, env = "OPTION_A", default_value = "Cats")]
    pub option_a: String,
    /// Label of option `b`.
    #[arg(long, env = "OPTION_B", default_value = "Dogs")]
    pub option_b: String,
}

impl BallotArgs {
    pub fn ballot(&self) -> anyhow::Result<Ballot> {
        match &self.options {
            Some(spec) => Ok(Ballot::parse(spec)?),
            None => Ok(Ballot::from_labels(&self.option_a, &self.option_b)),
        }
    }
}

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL (through HAProxy in the HA topology); may hold a password.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,
    /// A file holding REDIS_URL (a Docker secret); wins over REDIS_URL.
    #[arg(long, env = "REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
}

impl RedisArgs {
    pub fn url(&self) -> anyhow::Result<String> {
        Ok(secrets::resolve("REDIS_URL", Some(self.redis_url.clone()), self.redis_url_file.as_deref())?
            .unwrap_or_default())
    }
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (through Pgpool-II in the HA topology); may hold a password.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// A file holding DATABASE_URL (a Docker secret); wins over DATABASE_URL.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Most PostgreSQL connections this process opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 4)]
    pub database_max_connections: u32,
}

impl DatabaseArgs {
    pub fn store(&self) -> anyhow::Result<PostgresStore> {
        let url = secrets::resolve(
            "DATABASE_URL",
            Some(self.database_url.clone()),
            self.database_url_file.as_deref(),
        )?
        .unwrap_or_default();
        PostgresStore::connect_lazy(&url, self.database_max_connections)
            .with_context(|| format!("DATABASE_URL {}", secrets::redact_url(&url)))
    }
}

#[derive(Debug, Args)]
pub struct CookieArgs {
    /// Key that signs voter cookies, with at least 32 bytes of entropy (64 hex digits, e.g.
    /// `openssl rand -hex 32`); every vote replica needs the same one. Without it, `vote`
    /// makes a random key at each start (voters then get new cookies after a restart) and
    /// `up` keeps one in its data directory.
    #[arg(long, env = "COOKIE_SECRET", hide_env_values = true)]
    pub cookie_secret: Option<String>,
    /// A file holding COOKIE_SECRET (a Docker secret); wins over COOKIE_SECRET.
    #[arg(long, env = "COOKIE_SECRET_FILE")]
    pub cookie_secret_file: Option<PathBuf>,
}

impl CookieArgs {
    pub fn key(&self) -> anyhow::Result<Option<CookieKey>> {
        let secret = secrets::resolve(
            "COOKIE_SECRET",
            self.cookie_secret.clone(),
            self.cookie_secret_file.as_deref(),
        )?;
        Ok(secret.map(|secret| CookieKey::from_secret(&secret)).transpose()?)
    }
}

/// Limits on the connections of every HTTP listener of the process.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client, and whose connections are
    /// not capped per client address: the network the edge proxy reaches this service from.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1")]
    pub trusted_proxies: Cidrs,
    /// Most connections the process holds open; by default what its open-file limit allows,
    /// with room kept for its own files and upstream connections.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections one client address (an IPv6 /64) holds open.
    #[arg(long, env = "MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256)]
    pub max_connections_per_client: usize,
    /// After SIGTERM, how long (ms) to keep serving with `/healthz` failing and every response
    /// closing its connection, before accepting stops: longer than the load balancer takes
    /// to drop this backend (Traefik's provider refresh or health check interval).
    #[arg(long = "shutdown-drain-ms", env = "SHUTDOWN_DRAIN_MS", default_value = "0", value_parser = millis, value_name = "MS")]
    pub shutdown_drain: Duration,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits::new(
            self.max_connections,
            self.max_connections_per_client,
            self.trusted_proxies.clone(),
        )
        .draining_for(self.shutdown_drain)
    }
}

/// Who may vote how: new voters per client address and the sites that may post votes.
#[derive(Debug, Args)]
pub struct AbuseArgs {
    /// New voters (requests without a voter cookie) one client address (an IPv6 /64) may
    /// create per second, sustained; 0 turns the limit off.
    #[arg(long, env = "NEW_VOTER_RATE", default_value_t = 5.0)]
    pub new_voter_rate: f64,
    /// New voters a client address may create at once.
    #[arg(long, env = "NEW_VOTER_BURST", default_value_t = 20)]
    pub new_voter_burst: u32,
    /// Client addresses (CIDRs) never limited, e.g. this machine's own load tests.
    #[arg(long, env = "RATE_LIMIT_EXEMPT", default_value = "127.0.0.0/8,::1")]
    pub rate_limit_exempt: Cidrs,
    /// Origins besides the request's own host whose pages may post votes, e.g.
    /// `https://example.com`; posts from any other site are refused with 403.
    #[arg(long, env = "PUBLIC_ORIGINS", default_value = "")]
    pub public_origins: PublicOrigins,
}

impl AbuseArgs {
    pub fn new_voters(&self) -> NewVoterPolicy {
        NewVoterPolicy {
            rate: self.new_voter_rate,
            burst: self.new_voter_burst,
            exempt: self.rate_limit_exempt.clone(),
        }
    }
}

impl HealthcheckArgs {
    async fn run(self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(self.timeout).build()?;
        let response = client.get(&self.url).send().await.with_context(|| format!("asking {}", self.url))?;
        anyhow::ensure!(response.status().is_success(), "{} answered {}", self.url, response.status());
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl MigrateArgs {
    async fn run(self) -> anyhow::Result<()> {
        self.database.store()?.migrate().await.context("migrating the schema")?;
        tracing::info!("schema is up to date");
        Ok(())
    }
}
