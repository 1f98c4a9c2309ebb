//! The manager's tables (migration `0002_acme_certificates.sql`): what every replica reads —
//! the certificates it hands to Traefik, the challenge answers — through a pool, and what only
//! the leader writes, on the one connection that holds the leadership.

use std::future::Future;
use std::io;
use std::time::Duration;

use anyhow::Context;
use instant_acme::AccountCredentials;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::{Connection, Row};

use voting_core::store::postgres::ANSWER_TIMEOUT;

use super::seal::Sealer;

/// The advisory lock whose holder is the leader ("votcerts" in ASCII): one number for every
/// manager of the database.
const LEADER_LOCK: i64 = 0x766f_7463_6572_7473;

/// Gives a statement of the leader up after [`ANSWER_TIMEOUT`] without an answer, for the
/// store's reason: a Pgpool-II whose node died sends no reset, and a statement sent through it
/// waits for as long as the kernel retransmits it. In a Swarm run a leader sat on such a
/// connection for minutes and did no renewal. The error ends the leadership.
async fn answered<T>(work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
    tokio::time::timeout(ANSWER_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(io::Error::new(io::ErrorKind::TimedOut, "no answer from the database in time")))
    })
}

/// A certificate and its private key, as Traefik takes them.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    pub name: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

/// What every replica reads.
#[derive(Debug, Clone)]
pub struct CertStore {
    pool: PgPool,
    sealer: Sealer,
}

impl CertStore {
    pub fn new(pool: PgPool, sealer: Sealer) -> Self {
        Self { pool, sealer }
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1 FROM acme_certificates LIMIT 1").execute(&self.pool).await.map(drop)
    }

    /// The key authorization published for an HTTP-01 challenge `token`, if any.
    pub async fn challenge_answer(&self, token: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT key_authorization FROM acme_challenges WHERE token = $1")
            .bind(token)
            .fetch_optional(&self.pool)
            .await
    }

    /// Every stored certificate with its key opened.
    pub async fn served_certificates(&self) -> anyhow::Result<Vec<ServedCertificate>> {
        let rows =
            sqlx::query("SELECT name, certificate_pem, private_key FROM acme_certificates ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|row| {
                let name: String = row.get("name");
                let key = self
                    .sealer
                    .open(row.get("private_key"))
                    .with_context(|| format!("certificate {name}"))?;
                Ok(ServedCertificate {
                    certificate_pem: row.get("certificate_pem"),
                    key_pem: String::from_utf8(key).context("a private key that is not PEM text")?,
                    name,
                })
            })
            .collect()
    }
}

/// Asks the leader to renew `names` at its next check; returns those that exist.
pub async fn request_renewal(pool: &PgPool, names: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE acme_certificates SET renewal_requested_at = now() WHERE name = ANY($1) RETURNING name",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}

/// An order in progress, as the last leader left it.
#[derive(Debug)]
pub struct OrderRecord {
    pub url: String,
    /// The certificate's key, once the order was about to be finalized.
    pub key_pem: Option<String>,
}

/// The leadership: a session-level advisory lock, held for as long as this connection lives,
/// and every write of the leader made on that same connection. A leader whose connection died
/// (its PostgreSQL failed over, its node was cut off) has lost the lock with it, and its next
/// write fails instead of racing the next leader's.
#[derive(Debug)]
pub struct Leader {
    connection: PgConnection,
    sealer: Sealer,
}

impl Leader {
    /// The leadership if nobody holds it. Through Pgpool-II the lock goes to the primary:
    /// `pg_try_advisory_lock` is volatile, and Pgpool-II sends volatile functions there.
    pub async fn try_acquire(
        options: &PgConnectOptions,
        sealer: Sealer,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut connection = answered(PgConnection::connect_with(options)).await?;
        let acquired: bool = answered(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut connection),
        )
        .await?;
        if acquired {
            Ok(Some(Self { connection, sealer }))
        } else {
            // Closing ends the session: nothing of it lingers in a pool.
            connection.close().await.ok();
            Ok(None)
        }
    }

    pub async fn account(&mut self, directory_url: &str) -> anyhow::Result<Option<AccountCredentials>> {
        let sealed: Option<Vec<u8>> = answered(
            sqlx::query_scalar("SELECT credentials FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url)
                .fetch_optional(&mut self.connection),
        )
        .await?;
        sealed.map(|sealed| Ok(serde_json::from_slice(&self.sealer.open(&sealed)?)?)).transpose()
    }

    pub async fn save_account(
        &mut self,
        directory_url: &str,
        credentials: &AccountCredentials,
    ) -> anyhow::Result<()> {
        let sealed = self.sealer.seal(&serde_json::to_vec(credentials)?);
        answered(
            sqlx::query(
                "INSERT INTO acme_accounts (directory_url, credentials) VALUES ($1, $2)
             ON CONFLICT (directory_url) DO UPDATE SET credentials = EXCLUDED.credentials",
            )
            .bind(directory_url)
            .bind(sealed)
            .execute(&mut self.connection),
        )
        .await?;
        Ok(())
    }

    pub async fn forget_account(&mut self, directory_url: &str) -> Result<(), sqlx::Error> {
        answered(
            sqlx::query("DELETE FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url)
                .execute(&mut self.connection),
        )
        .await
        .map(drop)
    }

    /// Whether `name` needs a certificate: none yet, one for other domains, one expiring within
    /// `renew_before`, or a renewal an operator asked for.
    pub async fn is_due(
        &mut self,
        name: &str,
        domains: &[String],
        renew_before: Duration,
    ) -> Result<bool, sqlx::Error> {
        answered(
            sqlx::query_scalar(
                "SELECT NOT EXISTS (
                 SELECT FROM acme_certificates
                 WHERE name = $1 AND domains = $2 AND renewal_requested_at IS NULL
                   AND not_after > now() + make_interval(secs => $3))",
            )
            .bind(name)
            .bind(domains)
            .bind(renew_before.as_secs_f64())
            .fetch_one(&mut self.connection),
        )
        .await
    }

    pub async fn order(&mut self, name: &str) -> anyhow::Result<Option<OrderRecord>> {
        let row = answered(
            sqlx::query("SELECT order_url, private_key FROM acme_orders WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut self.connection),
        )
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key_pem = match row.get::<Option<Vec<u8>>, _>("private_key") {
            Some(sealed) => Some(String::from_utf8(self.sealer.open(&sealed)?)?),
            None => None,
        };
        Ok(Some(OrderRecord { url: row.get("order_url"), key_pem }))
    }

    /// Records an order the moment it is placed, before any challenge is answered.
    pub async fn record_order(
        &mut self,
        name: &str,
        domains: &[String],
        url: &str,
    ) -> Result<(), sqlx::Error> {
        answered(
            sqlx::query("INSERT INTO acme_orders (name, domains, order_url) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(domains)
                .bind(url)
                .execute(&mut self.connection),
        )
        .await
        .map(drop)
    }

    /// Records the certificate's key before the order is finalized with it.
    pub async fn record_order_key(&mut self, name: &str, key_pem: &str) -> Result<(), sqlx::Error> {
        answered(
            sqlx::query("UPDATE acme_orders SET private_key = $2 WHERE name = $1")
                .bind(name)
                .bind(self.sealer.seal(key_pem.as_bytes()))
                .execute(&mut self.connection),
        )
        .await
        .map(drop)
    }

    /// Drops an order the CA no longer accepts, and its challenges.
    pub async fn forget_order(&mut self, name: &str) -> Result<(), sqlx::Error> {
        answered(
            sqlx::query(
                "WITH gone AS (DELETE FROM acme_orders WHERE name = $1 RETURNING order_url)
             DELETE FROM acme_challenges WHERE order_url IN (SELECT order_url FROM gone)",
            )
            .bind(name)
            .execute(&mut self.connection),
        )
        .await
        .map(drop)
    }

    pub async fn publish_challenge(
        &mut self,
        token: &str,
        key_authorization: &str,
        order_url: &str,
    ) -> Result<(), sqlx::Error> {
        answered(
            sqlx::query(
                "INSERT INTO acme_challenges (token, key_authorization, order_url) VALUES ($1, $2, $3)
             ON CONFLICT (token) DO NOTHING",
            )
            .bind(token)
            .bind(key_authorization)
            .bind(order_url)
            .execute(&mut self.connection),
        )
        .await
        .map(drop)
    }

    /// Stores an issued certificate and ends its order, in one transaction.
    pub async fn store_certificate(
        &mut self,
        name: &str,
        domains: &[String],
        issued: &Issued,
        order_url: &str,
    ) -> Result<(), sqlx::Error> {
        let sealed_key = self.sealer.seal(issued.key_pem.as_bytes());
        let mut transaction = answered(self.connection.begin()).await?;
        answered(sqlx::query(
            "INSERT INTO acme_certificates (name, domains, certificate_pem, private_key, not_after, order_url)
             VALUES ($1, $2, $3, $4, to_timestamp($5), $6)
             ON CONFLICT (name) DO UPDATE SET
                 domains = EXCLUDED.domains, certificate_pem = EXCLUDED.certificate_pem,
                 private_key = EXCLUDED.private_key, not_after = EXCLUDED.not_after,
                 order_url = EXCLUDED.order_url, issued_at = now(), renewal_requested_at = NULL",
        )
        .bind(name)
        .bind(domains)
        .bind(&issued.certificate_pem)
        .bind(sealed_key)
        .bind(issued.not_after_unix as f64)
        .bind(order_url)
        .execute(&mut *transaction))
        .await?;
        answered(
            sqlx::query("DELETE FROM acme_orders WHERE name = $1").bind(name).execute(&mut *transaction),
        )
        .await?;
        answered(
            sqlx::query("DELETE FROM acme_challenges WHERE order_url = $1")
                .bind(order_url)
                .execute(&mut *transaction),
        )
        .await?;
        answered(transaction.commit()).await
    }
}

/// A certificate the CA issued, with its key and expiry.
#[derive(Debug)]
pub struct Issued {
    pub certificate_pem: String,
    pub key_pem: String,
    pub not_after_unix: i64,
}
