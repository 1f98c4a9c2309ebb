//! The store on PostgreSQL (directly, or through Pgpool-II).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::{ChangeFeed, StoreError, VoteStore};
use crate::domain::{QueuedVote, Tallies, latest_per_voter};

/// The channel the tally triggers notify on each committed change.
pub const CHANGES_CHANNEL: &str = "votes_changed";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
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
        Ok(Self { pool })
    }

    /// Creates or updates the schema. Safe while the system runs: migrations take an advisory
    /// lock, each runs in a transaction, and applied ones are skipped.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl VoteStore for PostgresStore {
    type Changes = PostgresChanges;

    async fn apply(&self, votes: &[QueuedVote]) -> Result<(), StoreError> {
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

        let mut tx = self.pool.begin().await?;
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

    async fn tallies(&self) -> Result<Tallies, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT vote, votes FROM tallies").fetch_all(&self.pool).await?;
        Ok(super::tallies_from_rows(rows))
    }

    async fn changes(&self) -> Result<PostgresChanges, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(PostgresChanges { listener })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
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
