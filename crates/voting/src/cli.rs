//! The command line. Every setting is a flag and an environment variable from one
//! definition, so `--help` lists each with its variable and default. Secrets can also come
//! from files (`<NAME>_FILE`, as Docker secrets are mounted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use voting_core::Ballot;
use voting_core::queue::redis::RedisQueue;
use voting_core::queue::{ConsumerSettings, Durability};
use voting_core::secrets;
use voting_core::store::postgres::PostgresStore;
use voting_core::telemetry::LogFormat;

use crate::http::client::Cidrs;
use crate::http::connection::ConnectionLimits;
use crate::vote::cookie::CookieKey;
use crate::vote::limit::NewVoterPolicy;
use crate::vote::origin::PublicOrigins;

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
    /// Creates or updates the PostgreSQL schema, then exits. Safe to run while the system runs.
    Migrate(MigrateArgs),
    /// Sends votes to a vote service and reports throughput, latency and errors; with
    /// `--verify`, checks that exactly the acknowledged votes get counted.
    Load(LoadArgs),
    /// Exits 0 when a service's health endpoint answers 2xx, 1 otherwise: a container
    /// `HEALTHCHECK` that needs no curl in the image.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The endpoint to ask: `/healthz` (alive) or `/readyz` (dependencies reachable).
    #[arg(long, env = "HEALTHCHECK_URL", default_value = "http://127.0.0.1:8080/healthz")]
    pub url: String,
    /// How long to wait for the answer.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "2s")]
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
    /// After SIGTERM, how long to keep serving with `/healthz` failing and every response
    /// closing its connection, before accepting stops: longer than the load balancer takes
    /// to drop this backend (Traefik's provider refresh or health check interval).
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits::new(
            self.max_connections,
            self.max_connections_per_client,
            self.trusted_proxies.clone(),
        )
        .draining_for(Duration::from_millis(self.shutdown_drain_ms))
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

#[derive(Debug, Args)]
pub struct VoteArgs {
    /// Address to listen on.
    #[arg(long = "addr", env = "VOTE_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// `fast`: acknowledge once Redis has the vote; `replicated`: once a replica has it too.
    #[arg(long, env = "VOTE_DURABILITY", default_value = "fast")]
    pub durability: Durability,
    /// How long `replicated` waits for a replica before answering 503.
    #[arg(long, env = "VOTE_REPLICATION_TIMEOUT_MS", default_value_t = 500)]
    pub replication_timeout_ms: u64,
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
    pub fn queue(&self) -> anyhow::Result<RedisQueue> {
        let url = self.redis.url()?;
        RedisQueue::new(&url, self.durability, Duration::from_millis(self.replication_timeout_ms))
            .with_context(|| format!("REDIS_URL {}", secrets::redact_url(&url)))
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address of the health endpoints.
    #[arg(long = "addr", env = "WORKER_ADDR", default_value = "0.0.0.0:8082")]
    pub addr: SocketAddr,
    /// Most votes per batch (one PostgreSQL transaction each).
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long an entry stays pending with a silent worker before another takes it over.
    #[arg(long, env = "WORKER_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,
    /// How long one read waits for new votes.
    #[arg(long, env = "WORKER_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// How often acknowledged entries are trimmed off the stream.
    #[arg(long, env = "WORKER_TRIM_INTERVAL_MS", default_value_t = 5000)]
    pub trim_interval_ms: u64,
    /// Name of this worker; defaults to the host name. The consumer name adds the process id.
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl WorkerArgs {
    pub fn settings(&self, instance: &str) -> ConsumerSettings {
        ConsumerSettings {
            name: crate::worker::consumer_name(instance),
            batch_size: self.batch_size as usize,
            claim_idle: Duration::from_millis(self.claim_idle_ms),
            block: Duration::from_millis(self.block_ms),
        }
    }
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Address to listen on.
    #[arg(long = "addr", env = "RESULT_ADDR", default_value = "0.0.0.0:8081")]
    pub addr: SocketAddr,
    /// Longest time between two reads of the tallies, whatever notifications say (at most 2000).
    #[arg(long, env = "RESULT_REFRESH_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=2000))]
    pub refresh_ms: u64,
    /// Name shown in page footers; defaults to the host name.
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub ballot: BallotArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
}

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
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Base URL of the vote service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// How many votes to send (default 1000 when --duration is not given either).
    #[arg(long)]
    pub votes: Option<u64>,
    /// How long to send votes, e.g. `30s`, `2m`.
    #[arg(long, value_parser = crate::load::parse_duration)]
    pub duration: Option<Duration>,
    /// Most votes in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Votes per second, open loop (latency measured from when each vote was due); without
    /// it, closed loop as fast as --concurrency allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// This many distinct voters, each with their own cookie, voting in turn and changing
    /// their minds; without it every vote is a new voter.
    #[arg(long)]
    pub voters: Option<u64>,
    /// Options and weights, e.g. `a=2,b=1`.
    #[arg(long, default_value = "a=1,b=1")]
    pub mix: String,
    /// Post the original app's form (`POST /`, `vote=a`) instead of the JSON API.
    #[arg(long)]
    pub form: bool,
    /// Per-vote timeout; a vote that times out is reported as unknown, not lost.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Result service URL: wait until its counts match what was acknowledged, and exit
    /// non-zero if they do not.
    #[arg(long, value_name = "RESULT_URL")]
    pub verify: Option<String>,
    /// How long --verify waits for the counts to converge.
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "60s")]
    pub verify_timeout: Duration,
    /// Also trust this CA certificate (PEM) for HTTPS, e.g. a test ACME server's root.
    #[arg(long = "ca-cert", value_name = "PEM_FILE")]
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Send requests for HOST to ADDR instead of resolving it, like curl's --resolve
    /// (repeatable), e.g. `vote.voting.test:10.89.0.50`.
    #[arg(long, value_name = "HOST:ADDR", value_parser = crate::load::parse_resolve)]
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl LoadArgs {
    pub fn plan(&self) -> anyhow::Result<crate::load::LoadPlan> {
        use std::io::IsTerminal;
        Ok(crate::load::LoadPlan {
            url: self.url.clone(),
            votes: self.votes,
            duration: self.duration,
            concurrency: self.concurrency,
            rate: self.rate,
            voters: self.voters,
            mix: crate::load::parse_mix(&self.mix)?,
            form: self.form,
            timeout: self.timeout,
            verify: self.verify.clone(),
            verify_timeout: self.verify_timeout,
            connection: crate::load::Connection::new(&self.ca_certs, self.resolve.clone())?,
            progress_bar: !self.json && std::io::stderr().is_terminal(),
        })
    }
}
