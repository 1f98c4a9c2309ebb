//! The store on PostgreSQL (directly, or through Pgpool-II).

use std::io;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};

use super::{ChangeFeed, StoreError, VoteStore};
use crate::domain::{QueuedVote, Tallies, latest_per_voter};

/// The channel the tally triggers notify on each committed change.
pub const CHANGES_CHANNEL: &str = "votes_changed";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The privileges of the worker's and the result service's own roles, where they exist.
const SERVICE_ROLE_GRANTS: &str = include_str!("../../migrations/postgres-service-roles.sql");

/// How long a batch's transaction, a read of the tallies or a ping may go without an answer
/// before it is given up. Each takes milliseconds. A store that says nothing for this long is
/// not slow but gone without a word: the Pgpool-II of a node that died sends no reset, and the
/// connection would wait for an answer for as long as the kernel keeps it (forever, with
/// nothing left to send). In a Swarm run both workers sat on such connections for minutes,
/// healthy and counting nothing, after the node running Pgpool-II was killed; a result service
/// reading its tallies on one would serve them stale as long. 5 s, not more: with two Pgpool-IIs
/// a client of the one that went is stale for this long before it reconnects to the other, and
/// results may be 10 s stale at most (`docs/chaos.md`).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    answer_timeout: Duration,
}

impl PostgresStore {
    /// Does not connect: the first query does, so a service starts while PostgreSQL is down.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // Also bounds connecting: a failing-over Pgpool accepts connections it never
            // answers, and a request must not hang on that.
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.application_name("voting"));
        Ok(Self { pool, answer_timeout: ANSWER_TIMEOUT })
    }

    /// The same store, giving a statement up after `timeout` without an answer (tests).
    pub fn with_answer_timeout(self, timeout: Duration) -> Self {
        Self { answer_timeout: timeout, ..self }
    }

    /// Creates or updates the schema. Safe while the system runs: migrations take an advisory
    /// lock, each runs in a transaction, and applied ones are skipped. Then gives the services'
    /// roles their privileges (`migrations/postgres-service-roles.sql`), every time.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        sqlx::raw_sql(SERVICE_ROLE_GRANTS).execute(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `work` on a connection of the pool, given up as [`StoreError::Unavailable`] when
    /// the store does not answer within the answer timeout ([`ANSWER_TIMEOUT`]).
    ///
    /// A connection on which `work` failed is closed, never pooled again: its session may be
    /// left in a failed transaction that sqlx does not know of, and such a session refuses
    /// every statement but `ROLLBACK`, which sqlx would never send. sqlx rolls back only what
    /// its own `BEGIN` opened, and a `BEGIN` that fails opened nothing in its eyes; Pgpool-II
    /// answers every simple query of a session it marked failed with "current transaction is
    /// aborted", `BEGIN` included. In a Swarm run a worker retried one batch on such a
    /// connection for minutes after the cluster restarted, and its votes were never counted.
    /// A new connection costs milliseconds, once per error.
    async fn answered<T>(
        &self,
        what: &str,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.pool.acquire().await?;
        match tokio::time::timeout(self.answer_timeout, work(&mut connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                drop(connection.detach());
                Err(error)
            }
            Err(_) => {
                // The connection is mid-statement, maybe to a peer that is gone: it must not go
                // back to the pool, which would first ask it something and wait as long. A
                // detached connection is dropped without a word, and its slot is free at once.
                drop(connection.detach());
                Err(StoreError::Unavailable(sqlx::Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to {what} within {:?}", self.answer_timeout),
                ))))
            }
        }
    }
}

impl VoteStore for PostgresStore {
    type Changes = PostgresChanges;

    async fn apply(&self, votes: &[QueuedVote]) -> Result<(), StoreError> {
        self.answered("a batch", async |connection| commit_batch(connection, votes).await).await
    }

    async fn tallies(&self) -> Result<Tallies, StoreError> {
        let rows: Vec<(String, i64)> = self
            .answered("reading the tallies", async |connection| {
                Ok(sqlx::query_as("SELECT vote, votes FROM tallies").fetch_all(connection).await?)
            })
            .await?;
        Ok(super::tallies_from_rows(rows))
    }

    async fn changes(&self) -> Result<PostgresChanges, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(PostgresChanges { listener })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.answered("a ping", async |connection| {
            Ok(sqlx::query("SELECT 1").execute(connection).await.map(drop)?)
        })
        .await
    }
}

/// Applies a batch in one transaction on `connection` (see [`VoteStore::apply`]).
async fn commit_batch(connection: &mut PgConnection, votes: &[QueuedVote]) -> Result<(), StoreError> {
    let latest = latest_per_voter(votes);
    let mut ids = Vec::with_capacity(latest.len());
    let mut options = Vec::with_capacity(latest.len());
    let mut cast_at_ms = Vec::with_capacity(latest.len());
    let mut majors = Vec::with_capacity(latest.len());
    let mut minors = Vec::with_capacity(latest.len());
    for queued in latest {
        ids.push(queued.vote.voter.to_string());
        options.push(queued.vote.option.as_str());
        cast_at_ms.push(queued.vote.cast_at_ms);
        majors.push(queued.position.major as i64);
        minors.push(queued.position.minor as i64);
    }

    let mut tx = connection.begin().await?;
    // Batches from concurrent workers take their tally row locks in trigger order, which
    // can cross (one's inserts touch `a` then its updates `b`, the other's the reverse).
    // Taking this self-conflicting lock first serialises the batches instead of
    // deadlocking them; readers of the tallies are not blocked.
    sqlx::query("LOCK TABLE tallies IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO votes AS v (id, vote, cast_at, position_major, position_minor)
         SELECT id, vote, to_timestamp(cast_at_ms / 1000.0), major, minor
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
              AS batch (id, vote, cast_at_ms, major, minor)
         ON CONFLICT (id) DO UPDATE
         SET vote = excluded.vote, cast_at = excluded.cast_at,
             position_major = excluded.position_major, position_minor = excluded.position_minor
         WHERE (excluded.position_major, excluded.position_minor)
             > (v.position_major, v.position_minor)",
    )
    .bind(&ids)
    .bind(&options)
    .bind(&cast_at_ms)
    .bind(&majors)
    .bind(&minors)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `LISTEN votes_changed` on a connection of its own.
#[derive(Debug)]
pub struct PostgresChanges {
    listener: PgListener,
}

impl ChangeFeed for PostgresChanges {
    async fn changed(&mut self) -> Result<(), StoreError> {
        // `Ok(None)` is a lost connection that the next call re-establishes; notices sent in
        // between are gone, which is one more reason to re-read.
        self.listener.try_recv().await?;
        Ok(())
    }
}
