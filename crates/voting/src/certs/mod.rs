//! The certificate manager (`voting certs serve`): HTTPS certificates for every edge proxy,
//! ordered once.
//!
//! Traefik's open-source edition cannot share its ACME storage between instances, so with two
//! edge nodes each would order its own certificates (and Let's Encrypt refuses a sixth
//! duplicate a week). Instead, every manager replica:
//! - tries for the leadership, a PostgreSQL advisory lock ([`store::Leader`]); the leader alone
//!   orders and renews certificates ([`acme`]), recording each step so the next leader resumes
//!   the same order;
//! - answers HTTP-01 challenges from the database, so whichever edge proxy the CA reaches,
//!   whichever replica it routes to, the answer is there;
//! - serves Traefik's HTTP provider a dynamic configuration (`GET /traefik`) holding every
//!   certificate inline and the route of `/.well-known/acme-challenge/` to the managers; each
//!   Traefik polls it, so a renewal reaches every edge without a restart.
//!
//! Private keys are sealed at rest ([`seal`]) with the managers' secret; the provider endpoint
//! hands them out only to a caller holding the provider token.

pub mod acme;
pub mod args;
pub mod seal;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::acme::AcmeSettings;
use self::seal::Sealer;
use self::store::{CertStore, Leader};
use crate::http::connection::ConnectionLimits;
use crate::http::{Server, health_routes};
use crate::service::Service;

/// The Traefik entry point HTTP-01 challenges arrive on (port 80): `web` in our Traefik
/// configuration (deploy/traefik/traefik.yml).
pub const CHALLENGE_ENTRY_POINT: &str = "web";

/// After a certificate could not be had (its name does not resolve to an edge yet, the CA
/// refused), the leader waits this long before it tries that name again, twice as long after
/// each failure up to [`MAX_RETRY_WAIT`]: Let's Encrypt allows five failed validations per
/// name an hour.
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(60);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// Longest wait for the ACME server to answer one request: its client sets no timeout, and a
/// CA behind a dead route would hold the leadership forever.
const ACME_CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct CertsConfig {
    pub addr: SocketAddr,
    /// One certificate per domain, named after it.
    pub domains: Vec<String>,
    pub acme: AcmeSettings,
    /// Renew a certificate this long before it expires (Let's Encrypt's last 30 of 90 days).
    pub renew_before: Duration,
    /// How often a replica tries for the leadership, and the leader checks for due
    /// certificates and renewal requests.
    pub check_interval: Duration,
    /// The URL edge proxies reach the managers at, for the challenge route they are given.
    pub challenge_url: String,
    /// The bearer token Traefik's HTTP provider sends; keys are handed to nobody else.
    pub provider_token: String,
    pub connections: ConnectionLimits,
}

/// A bound manager: its HTTP endpoints and its leadership loop.
#[derive(Debug)]
pub struct CertsService {
    server: Server,
    manager: Manager,
}

impl CertsService {
    /// Binds; starts nothing. `leader_options` is where the leadership connection goes (the
    /// same database as `store`'s pool).
    pub async fn build(
        config: CertsConfig,
        store: CertStore,
        leader_options: PgConnectOptions,
        sealer: Sealer,
    ) -> std::io::Result<Self> {
        let state = AppState {
            store: store.clone(),
            challenge_url: config.challenge_url,
            provider_token_digest: Sha256::digest(config.provider_token.as_bytes()).into(),
        };
        let ready_store = store.clone();
        let ready = move || {
            let store = ready_store.clone();
            async move { store.ping().await.map_err(|e| format!("database: {e}")) }
        };
        let router = Router::new()
            .route("/.well-known/acme-challenge/{token}", get(challenge_answer))
            .route("/traefik", get(traefik_configuration))
            .with_state(state)
            .merge(health_routes(ready));
        let server = Server::bind(config.addr, router, config.connections).await?;
        let manager = Manager {
            leader_options,
            sealer,
            acme: config.acme,
            domains: config.domains,
            renew_before: config.renew_before,
            check_interval: config.check_interval,
        };
        Ok(Self { server, manager })
    }
}

impl Service for CertsService {
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (served, ()) = tokio::join!(self.server.run(shutdown.clone()), self.manager.run(shutdown));
        Ok(served?)
    }
}

/// The leadership loop of one replica.
#[derive(Debug)]
struct Manager {
    leader_options: PgConnectOptions,
    sealer: Sealer,
    acme: AcmeSettings,
    domains: Vec<String>,
    renew_before: Duration,
    check_interval: Duration,
}

impl Manager {
    /// Tries for the leadership every check interval; while leading, keeps the certificates
    /// current. Any error ends the term (the connection, and with it the lock, is dropped):
    /// the next try, here or at another replica, starts from what the database recorded.
    async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = self.lead_if_free(&shutdown) => if let Err(e) = led {
                    tracing::warn!(error = format!("{e:#}"), "certificate leadership ended");
                },
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.check_interval) => {}
            }
        }
    }

    /// Returns at once when another replica leads; otherwise leads until an error. Cancelling it
    /// at any await point is safe: every step is recorded before the next.
    async fn lead_if_free(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let Some(mut leader) = Leader::try_acquire(&self.leader_options, self.sealer.clone()).await? else {
            return Ok(());
        };
        tracing::info!("leading: this replica orders and renews the certificates");
        let account = tokio::time::timeout(ACME_CALL_TIMEOUT, acme::account(&mut leader, &self.acme))
            .await
            .map_err(|_| anyhow::anyhow!("the ACME server did not answer within {ACME_CALL_TIMEOUT:?}"))??;
        // Every step of an order waits at most this long: the self-check, validation, issuance.
        let order_deadline = self.acme.self_check_timeout + self.acme.order_timeout * 2 + ACME_CALL_TIMEOUT;
        // When each name that failed may be tried again, and how long it waited last.
        let mut retries: HashMap<&str, (Instant, Duration)> = HashMap::new();
        loop {
            for domain in &self.domains {
                if retries.get(domain.as_str()).is_some_and(|(not_before, _)| Instant::now() < *not_before) {
                    continue;
                }
                let domains = std::slice::from_ref(domain);
                // A leader whose connection died stops here: the lock went with it.
                if !leader.is_due(domain, domains, self.renew_before).await? {
                    continue;
                }
                tracing::info!(domain, "a certificate is due");
                let obtained = tokio::time::timeout(
                    order_deadline,
                    acme::obtain(&mut leader, &account, &self.acme, domain, domains),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the order took longer than {order_deadline:?}")));
                match obtained {
                    Ok(()) => {
                        retries.remove(domain.as_str());
                    }
                    // The CA no longer knows the stored account (a test CA restarted, or the
                    // account was deactivated): forget it, and the next leader makes another.
                    Err(e) if acme::account_is_gone(&e) => {
                        leader.forget_account(&self.acme.directory_url).await?;
                        return Err(e.context("the CA no longer knows the stored account"));
                    }
                    // One name failing does not hold the others back.
                    Err(e) => {
                        let wait = retries
                            .get(domain.as_str())
                            .map_or(FIRST_RETRY_WAIT, |(_, waited)| (*waited * 2).min(MAX_RETRY_WAIT));
                        tracing::warn!(
                            domain,
                            error = format!("{e:#}"),
                            retry_in_s = wait.as_secs(),
                            "no certificate this time"
                        );
                        retries.insert(domain, (Instant::now() + wait, wait));
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.check_interval) => {}
            }
        }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    store: CertStore,
    challenge_url: String,
    provider_token_digest: [u8; 32],
}

/// `GET /.well-known/acme-challenge/{token}`: the key authorization, as RFC 8555 §8.3 asks.
async fn challenge_answer(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    // Tokens are base64url; anything else is nobody's challenge and never reaches the database.
    let well_formed = !token.is_empty()
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return StatusCode::NOT_FOUND.into_response();
    }
    match state.store.challenge_answer(&token).await {
        Ok(Some(answer)) => ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => unavailable("reading a challenge answer", &e),
    }
}

/// `GET /traefik`: the dynamic configuration every Traefik polls (its HTTP provider).
async fn traefik_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests compared, not the tokens: how long the comparison takes says nothing of the token.
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if digest != state.provider_token_digest {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")]).into_response();
    }
    let certificates = match state.store.served_certificates().await {
        Ok(certificates) => certificates,
        Err(e) => return unavailable("reading the certificates", &*e),
    };
    let configuration = json!({
        "http": {
            "routers": {
                "acme-challenge": {
                    "rule": "PathPrefix(`/.well-known/acme-challenge/`)",
                    "entryPoints": [CHALLENGE_ENTRY_POINT],
                    // Above the entry point's redirect to HTTPS: the CA asks over plain HTTP.
                    "priority": 100_000,
                    "service": "acme-challenge",
                }
            },
            "services": {
                "acme-challenge": { "loadBalancer": { "servers": [{ "url": state.challenge_url }] } }
            },
        },
        "tls": {
            "certificates": certificates
                .iter()
                .map(|c| json!({ "certFile": c.certificate_pem, "keyFile": c.key_pem }))
                .collect::<Vec<_>>(),
        },
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(configuration)).into_response()
}

/// 503: Traefik keeps the configuration it has, the CA retries its check.
fn unavailable(what: &str, error: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %error, "{what}");
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")]).into_response()
}
