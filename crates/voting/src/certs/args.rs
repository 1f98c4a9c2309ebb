//! `voting certs`: its command line, and the wiring from it to a running [`CertsService`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use voting_core::duration::parse_duration;
use voting_core::secrets;

use super::acme::{self, AcmeSettings};
use super::seal::Sealer;
use super::store::{self, CertStore};
use super::{CertsConfig, CertsService};
use crate::cli::{ConnectionArgs, DatabaseArgs};
use crate::service::Service;

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Runs a manager replica: leadership, ordering and renewal, challenge answers, and the
    /// configuration Traefik's HTTP provider polls.
    Serve(Box<ServeArgs>),
    /// Asks the leader to renew certificates now, whatever their expiry (a key thought
    /// compromised, a CA's mass revocation); it does so at its next check.
    Renew(RenewArgs),
}

impl CertsArgs {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match self.command {
            CertsCommand::Serve(args) => args.run(shutdown).await,
            CertsCommand::Renew(args) => args.run().await,
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (challenge answers, Traefik's configuration, health).
    #[arg(long = "addr", env = "CERTS_ADDR", default_value = "0.0.0.0:8084")]
    pub addr: SocketAddr,
    /// The host names to hold certificates for, one certificate each.
    #[arg(long = "domain", env = "CERTS_DOMAINS", value_delimiter = ',', required = true)]
    pub domains: Vec<String>,
    /// The ACME server's directory.
    #[arg(
        long,
        env = "ACME_DIRECTORY_URL",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    pub acme_directory_url: String,
    /// The ACME account's contact address.
    #[arg(long, env = "ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A PEM root to trust for the ACME server's HTTPS instead of the system's (a test CA).
    #[arg(long, env = "ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// How long an order may take before this leader gives it up (the next check resumes it).
    #[arg(long, env = "ACME_ORDER_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    pub acme_order_timeout: Duration,
    /// Where the leader fetches each challenge answer itself before handing it in (as the CA
    /// will, asking for the domain); `http://<domain>` by default.
    #[arg(long, env = "ACME_SELF_CHECK_URL")]
    pub acme_self_check_url: Option<String>,
    /// How long that self-check may fail before the challenge is handed in anyway.
    #[arg(long, env = "ACME_SELF_CHECK_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub acme_self_check_timeout: Duration,
    /// Renew a certificate this long before it expires.
    #[arg(long, env = "CERTS_RENEW_BEFORE", value_parser = parse_duration, default_value = "30d")]
    pub renew_before: Duration,
    /// How often a replica tries for the leadership and the leader checks what is due.
    #[arg(long, env = "CERTS_CHECK_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub check_interval: Duration,
    /// The URL edge proxies reach the managers at, for the challenge route they are given.
    #[arg(long, env = "CERTS_CHALLENGE_URL", default_value = "http://certs:8084")]
    pub challenge_url: String,
    /// Seals private keys at rest (at least 32 characters, e.g. `openssl rand -hex 32`); every
    /// replica needs the same one, and changing it makes the stored keys unreadable.
    #[arg(long, env = "CERTS_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// A file holding CERTS_SECRET (a Docker secret); wins over CERTS_SECRET.
    #[arg(long, env = "CERTS_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The bearer token Traefik's HTTP provider must send to be given the certificates.
    #[arg(long, env = "CERTS_PROVIDER_TOKEN", hide_env_values = true)]
    pub provider_token: Option<String>,
    /// A file holding CERTS_PROVIDER_TOKEN (a Docker secret); wins over CERTS_PROVIDER_TOKEN.
    #[arg(long, env = "CERTS_PROVIDER_TOKEN_FILE")]
    pub provider_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

impl ServeArgs {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let secret = secrets::resolve("CERTS_SECRET", self.secret.clone(), self.secret_file.as_deref())?
            .context("CERTS_SECRET (or CERTS_SECRET_FILE) is required: it seals the private keys")?;
        let sealer = Sealer::from_secret(&secret)?;
        let provider_token = secrets::resolve(
            "CERTS_PROVIDER_TOKEN",
            self.provider_token.clone(),
            self.provider_token_file.as_deref(),
        )?
        .context("CERTS_PROVIDER_TOKEN (or CERTS_PROVIDER_TOKEN_FILE) is required: it guards the keys")?;
        if let Some(root) = &self.acme_ca_root {
            acme::check_root(root)?;
        }
        let store = self.database.store()?;
        let pool = store.pool().clone();
        let leader_options = (*pool.connect_options()).clone();
        let config = CertsConfig {
            addr: self.addr,
            domains: self.domains,
            acme: AcmeSettings {
                directory_url: self.acme_directory_url,
                contact_email: self.acme_email,
                ca_root: self.acme_ca_root,
                order_timeout: self.acme_order_timeout,
                self_check_url: self.acme_self_check_url,
                self_check_timeout: self.acme_self_check_timeout,
            },
            renew_before: self.renew_before,
            check_interval: self.check_interval,
            challenge_url: self.challenge_url,
            provider_token: provider_token.trim().to_owned(),
            connections: self.connections.limits(),
        };
        let service =
            CertsService::build(config, CertStore::new(pool, sealer.clone()), leader_options, sealer)
                .await
                .with_context(|| format!("binding {}", self.addr))?;
        tracing::info!(addr = %service.local_addr(), "certificate manager listening");
        service.run(shutdown).await
    }
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The certificates to renew (their domains).
    #[arg(required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl RenewArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let store = self.database.store()?;
        let marked = store::request_renewal(store.pool(), &self.names).await?;
        for name in &self.names {
            if marked.contains(name) {
                println!("{name}: renewal requested; the leader renews it at its next check");
            } else {
                println!("{name}: no such certificate");
            }
        }
        anyhow::ensure!(marked.len() == self.names.len(), "some certificates do not exist");
        Ok(())
    }
}
