//! `TestSystem`: real Redis and PostgreSQL processes, and the system (vote, worker and result,
//! composed as `voting up` composes them) built in this process on port 0, with typed helpers
//! for what tests do.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use voting::http::connection::ConnectionLimits;
use voting::result::ResultConfig;
use voting::system::{System, SystemConfig};
use voting::vote::VoteConfig;
use voting::vote::cookie::CookieKey;
use voting::vote::limit::NewVoterPolicy;
use voting::vote::origin::PublicOrigins;
use voting::worker::{Worker, WorkerConfig};
use voting_core::queue::Durability;
use voting_core::queue::redis::{RedisConsumerGroup, RedisQueue};
use voting_core::store::StoreError;
use voting_core::store::postgres::PostgresStore;
use voting_core::{Ballot, Results};
pub use voting_testkit::eventually;
use voting_testkit::{PostgresServer, Process, RedisServer};

pub const ANY_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Generous bound for anything the system does by itself (a worker draining, a service
/// recovering); tests poll and return as soon as it is done.
pub const SETTLE: Duration = Duration::from_secs(20);

pub struct TestSystem {
    pub redis: RedisServer,
    pub postgres: PostgresServer,
    pub vote_url: String,
    pub result_url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What a test wants running.
pub struct Options {
    pub workers: usize,
    pub claim_idle: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { workers: 1, claim_idle: Duration::from_secs(30) }
    }
}

impl TestSystem {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        // `RUST_LOG=debug cargo test ...` shows what the services log.
        if std::env::var_os("RUST_LOG").is_some() {
            voting_core::telemetry::init(voting_core::telemetry::LogFormat::Text);
        }
        let (redis, postgres) = tokio::task::spawn_blocking(|| {
            (RedisServer::start().expect("redis starts"), PostgresServer::start().expect("postgres starts"))
        })
        .await
        .unwrap();
        let ballot = Ballot::parse("a=Cats,b=Dogs,c=Birds").unwrap();
        let shutdown = CancellationToken::new();
        let store = PostgresStore::connect_lazy(&postgres.url(), 4).unwrap();
        store.migrate().await.expect("schema migrates");

        let config = SystemConfig {
            vote: VoteConfig {
                addr: ANY_PORT,
                ballot: ballot.clone(),
                cookie_key: CookieKey::new(b"test cookie key, 32 bytes long!!"),
                instance: "test".into(),
                new_voters: NewVoterPolicy::default(),
                public_origins: PublicOrigins::default(),
                connections: ConnectionLimits::default(),
            },
            result: ResultConfig {
                addr: ANY_PORT,
                ballot,
                refresh: Duration::from_millis(1000),
                instance: "test".into(),
                connections: ConnectionLimits::default(),
            },
            worker: worker_config(options.claim_idle),
            workers: options.workers,
        };
        let queue = RedisQueue::new(&redis.url(), Durability::Fast, Duration::from_millis(100)).unwrap();
        let group = RedisConsumerGroup::new(&redis.url()).unwrap();
        let system = System::build(config, queue, group, store).await.unwrap();
        let vote_url = format!("http://{}", system.vote_addr());
        let result_url = format!("http://{}", system.result_addr());
        let running = tokio::spawn(system.run(shutdown.clone()));
        Self {
            vote_url,
            result_url,
            redis,
            postgres,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
            tasks: vec![tokio::spawn(async move { running.await.unwrap().expect("the system runs") })],
            shutdown,
        }
    }

    /// A worker in this process; cancelling `stop` stops it after its batch.
    pub fn spawn_worker(
        &mut self,
        claim_idle: Duration,
        stop: CancellationToken,
    ) -> JoinHandle<Result<(), StoreError>> {
        let worker = Worker::new(
            worker_config(claim_idle),
            RedisConsumerGroup::new(&self.redis.url()).unwrap(),
            PostgresStore::connect_lazy(&self.postgres.url(), 2).unwrap(),
        );
        tokio::spawn(worker.run(stop))
    }

    /// `POST /api/vote` as the voter of `cookie` (a new voter without one).
    pub async fn vote(&self, option: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/api/vote", self.vote_url))
            .json(&serde_json::json!({ "vote": option }));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.expect("vote service answers")
    }

    /// Votes as a new voter, asserts it was accepted, and returns the voter's cookie.
    pub async fn vote_as_new_voter(&self, option: &str) -> String {
        let response = self.vote(option, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        cookie_of(&response)
    }

    pub async fn results(&self) -> Results {
        self.http.get(format!("{}/api/results", self.result_url)).send().await.unwrap().json().await.unwrap()
    }

    /// Votes per option id, in ballot order.
    pub async fn counts(&self) -> Vec<(String, u64)> {
        self.results().await.options.into_iter().map(|o| (o.id, o.votes)).collect()
    }

    /// Waits until `/api/results` shows exactly `expected` (a, b, c), or panics with what it shows.
    pub async fn wait_for_counts(&self, expected: [u64; 3]) {
        let counts = async || -> Vec<u64> { self.counts().await.into_iter().map(|(_, n)| n).collect() };
        let reached = eventually(SETTLE, async || counts().await == expected).await;
        assert!(reached, "results stayed at {:?}, expected {expected:?}", counts().await);
    }

    pub fn redis_command(&self, args: &[&str]) -> String {
        self.redis.command(args).expect("redis answers")
    }

    /// An integer reply of Redis, such as `XLEN votes`.
    pub fn redis_int(&self, args: &[&str]) -> i64 {
        let reply = self.redis_command(args);
        reply.trim_start_matches(':').trim().parse().unwrap_or_else(|_| panic!("{args:?} gave {reply}"))
    }

    /// Entries delivered to a worker and not yet acknowledged.
    pub fn pending(&self) -> i64 {
        let reply = self.redis_command(&["XPENDING", "votes", "workers"]);
        // The summary starts with the count as an integer reply.
        reply.lines().find_map(|l| l.strip_prefix(':')).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    pub async fn status_of(&self, url: &str) -> StatusCode {
        match self.http.get(url).send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Small batches and short waits, so tests see claims, trims and redeliveries quickly.
pub fn worker_config(claim_idle: Duration) -> WorkerConfig {
    WorkerConfig {
        instance: "test".into(),
        batch_size: 100,
        claim_idle,
        block: Duration::from_millis(200),
        trim_every: Duration::from_millis(500),
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The `voter_id=...` pair a response set, for use as a `Cookie` header.
pub fn cookie_of(response: &reqwest::Response) -> String {
    let set_cookie =
        response.headers().get("set-cookie").expect("a new voter gets a cookie").to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// `voting up` as a user runs it: the real binary on the given ports, with the same ballot as
/// [`TestSystem`].
pub struct UpProcess {
    pub process: Process,
    pub vote_url: String,
    pub result_url: String,
}

impl UpProcess {
    /// Starts `voting up` and waits until both services are ready.
    pub async fn start(data_dir: &std::path::Path, vote_port: u16, result_port: u16) -> Self {
        let vote_addr = format!("127.0.0.1:{vote_port}");
        let result_addr = format!("127.0.0.1:{result_port}");
        let process = Process::spawn(
            env!("CARGO_BIN_EXE_voting"),
            &[
                "up",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--vote-addr",
                &vote_addr,
                "--result-addr",
                &result_addr,
            ],
            &[("VOTE_OPTIONS", "a=Cats,b=Dogs,c=Birds")],
        )
        .unwrap();
        let up = Self {
            process,
            vote_url: format!("http://{vote_addr}"),
            result_url: format!("http://{result_addr}"),
        };
        let http = reqwest::Client::new();
        let ok = async |url: String| http.get(url).send().await.is_ok_and(|r| r.status() == StatusCode::OK);
        let ready = eventually(SETTLE, async || {
            ok(format!("{}/readyz", up.vote_url)).await && ok(format!("{}/readyz", up.result_url)).await
        })
        .await;
        assert!(ready, "voting up starts: {}", up.process.log());
        up
    }
}
