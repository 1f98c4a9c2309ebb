//! `voting`: parse the command line, set up logging and signals, run one part.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use voting::cli::{Cli, Command};
use voting::http::instance_name;
use voting::result::{ResultConfig, ResultService};
use voting::up::{Up, UpConfig};
use voting::vote::VoteConfig;
use voting::vote::cookie::CookieKey;
use voting::worker::{WorkerConfig, WorkerService};
use voting_core::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = run(cli.command).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    match command {
        Command::Up(args) => {
            let config = UpConfig {
                data_dir: args.data_dir,
                vote_addr: args.vote_addr,
                result_addr: args.result_addr,
                ballot: args.ballot.ballot()?,
                cookie_key: args.cookie.key()?,
                instance: instance_name(None),
                new_voters: args.abuse.new_voters(),
                public_origins: args.abuse.public_origins.clone(),
                connections: args.connections.limits(),
            };
            let up = Up::build(config.clone(), shutdown).await?;
            let vote = up.vote_addr()?;
            println!("vote:   http://{}:{}/", display_host(config.vote_addr), vote.port());
            println!("result: http://{}:{}/", display_host(config.result_addr), up.result_port());
            println!("data:   {}", config.data_dir.display());
            up.run().await
        }
        Command::Vote(args) => {
            let cookie_key = args.cookie.key()?.unwrap_or_else(|| {
                tracing::warn!("COOKIE_SECRET is not set: using a random key, so voters get new cookies after a restart and replicas refuse each other's");
                CookieKey::random()
            });
            let config = VoteConfig {
                ballot: args.ballot.ballot()?,
                cookie_key,
                instance: instance_name(args.instance.clone()),
                new_voters: args.abuse.new_voters(),
                public_origins: args.abuse.public_origins.clone(),
                connections: args.connections.limits(),
            };
            let server = voting::vote::build(args.addr, config, args.queue()?)
                .await
                .with_context(|| format!("binding {}", args.addr))?;
            tracing::info!(addr = %server.local_addr()?, durability = %args.durability, "vote service listening");
            Ok(server.run(shutdown).await?)
        }
        Command::Worker(args) => {
            let instance = instance_name(args.instance.clone());
            let config = WorkerConfig {
                consumer: args.settings(&instance),
                trim_every: Duration::from_millis(args.trim_interval_ms),
            };
            let queue = voting_core::queue::redis::RedisQueue::new(
                &args.redis.url()?,
                voting_core::queue::Durability::Fast,
                Duration::from_millis(500),
            )?;
            let service = WorkerService::build(
                args.addr,
                config,
                args.connections.limits(),
                queue,
                args.database.store()?,
            )
            .await
            .with_context(|| format!("binding {}", args.addr))?;
            tracing::info!(health.port = service.port(), "worker health endpoints listening");
            Ok(service.run(shutdown).await?)
        }
        Command::Result(args) => {
            let config = ResultConfig {
                ballot: args.ballot.ballot()?,
                refresh: Duration::from_millis(args.refresh_ms),
                instance: instance_name(args.instance.clone()),
                connections: args.connections.limits(),
            };
            let service = ResultService::build(args.addr, config, args.database.store()?, shutdown)
                .await
                .with_context(|| format!("binding {}", args.addr))?;
            tracing::info!(port = service.port(), "result service listening");
            Ok(service.run().await?)
        }
        Command::Load(args) => {
            let json = args.json;
            let report = voting::load::run(args.plan()?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            match &report.verify {
                Some(verification) if !verification.passed() => {
                    anyhow::bail!(
                        "verification failed: {} lost, {} extra",
                        verification.lost,
                        verification.extra
                    )
                }
                _ => Ok(()),
            }
        }
        Command::Healthcheck(args) => {
            let client = reqwest::Client::builder().timeout(args.timeout).build()?;
            let response =
                client.get(&args.url).send().await.with_context(|| format!("asking {}", args.url))?;
            anyhow::ensure!(response.status().is_success(), "{} answered {}", args.url, response.status());
            Ok(())
        }
        Command::Migrate(args) => {
            args.database.store()?.migrate().await.context("migrating the schema")?;
            tracing::info!("schema is up to date");
            Ok(())
        }
    }
}

/// `0.0.0.0` is where we listen, not where a browser should go.
fn display_host(addr: std::net::SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}
