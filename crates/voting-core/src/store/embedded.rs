//! The store of `voting up`: SQLite in the data directory, same tables and rules as PostgreSQL.

use std::path::Path;
use std::sync::Arc;

use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

use super::{ChangeFeed, StoreError, VoteStore};
use crate::domain::{QueuedVote, Tallies, latest_per_voter};
use crate::queue::embedded::open_sqlite;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    pool: SqlitePool,
    /// Bumped after every commit; the in-process stand-in for `NOTIFY`.
    committed: Arc<watch::Sender<u64>>,
}

impl EmbeddedStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = open_sqlite(path).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, committed: Arc::new(watch::Sender::new(0)) })
    }
}

impl VoteStore for EmbeddedStore {
    type Changes = EmbeddedChanges;

    async fn apply(&self, votes: &[QueuedVote]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for queued in latest_per_voter(votes) {
            sqlx::query(
                "INSERT INTO votes (id, vote, cast_at_ms, position_major, position_minor)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE
                 SET vote = excluded.vote, cast_at_ms = excluded.cast_at_ms,
                     position_major = excluded.position_major, position_minor = excluded.position_minor
                 WHERE (excluded.position_major, excluded.position_minor)
                     > (votes.position_major, votes.position_minor)",
            )
            .bind(queued.vote.voter.to_string())
            .bind(queued.vote.option.as_str())
            .bind(queued.vote.cast_at_ms)
            .bind(queued.position.major as i64)
            .bind(queued.position.minor as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.committed.send_modify(|generation| *generation += 1);
        Ok(())
    }

    async fn tallies(&self) -> Result<Tallies, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT vote, votes FROM tallies").fetch_all(&self.pool).await?;
        Ok(super::tallies_from_rows(rows))
    }

    async fn changes(&self) -> Result<EmbeddedChanges, StoreError> {
        Ok(EmbeddedChanges { committed: self.committed.subscribe() })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[derive(Debug)]
pub struct EmbeddedChanges {
    committed: watch::Receiver<u64>,
}

impl ChangeFeed for EmbeddedChanges {
    async fn changed(&mut self) -> Result<(), StoreError> {
        if self.committed.changed().await.is_err() {
            // The store is gone, so nothing will change again.
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}
