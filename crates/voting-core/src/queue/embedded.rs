//! The queue of `voting up`: a SQLite table in the data directory.
//!
//! Each vote is committed (WAL, `synchronous=NORMAL`) before it is acknowledged, so it survives
//! the process being killed; votes arriving together share one commit. There is one consumer, in the same process: it reads past an
//! in-memory cursor, and an acknowledged entry is deleted at once. After a restart the cursor
//! starts over, so every entry not yet acknowledged is delivered again: the same at-least-once
//! contract as the Redis queue, with redelivery instead of `XAUTOCLAIM`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use tokio::sync::Notify;

use super::group_commit::{BatchWriter, GroupCommit};
use super::{
    ConsumerGroup, ConsumerSettings, Delivery, QueueConsumer, QueueError, VoteQueue, decode_vote, fields,
};
use crate::domain::{QueuePosition, Vote};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS queue (
        position   INTEGER PRIMARY KEY AUTOINCREMENT,
        voter      TEXT    NOT NULL,
        option     TEXT    NOT NULL,
        cast_at_ms TEXT    NOT NULL
    );
    CREATE TABLE IF NOT EXISTS dead_letters (
        position   INTEGER PRIMARY KEY,
        voter      TEXT,
        option     TEXT,
        cast_at_ms TEXT,
        reason     TEXT NOT NULL
    );";

#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    pool: SqlitePool,
    /// Wakes the consumer when a vote is appended, so it does not poll.
    appended: Arc<Notify>,
    appender: GroupCommit,
}

impl EmbeddedQueue {
    pub async fn open(path: &Path) -> Result<Self, QueueError> {
        let pool = open_sqlite(path).await.map_err(QueueError::unavailable)?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(QueueError::unavailable)?;
        let appended = Arc::new(Notify::new());
        let appender = GroupCommit::spawn(Transaction { pool: pool.clone(), appended: appended.clone() });
        Ok(Self { pool, appended, appender })
    }
}

/// Writes a batch in one SQLite transaction, then wakes the consumer.
struct Transaction {
    pool: SqlitePool,
    appended: Arc<Notify>,
}

impl BatchWriter for Transaction {
    async fn write(&mut self, votes: &[Vote]) -> Result<Vec<Result<QueuePosition, QueueError>>, QueueError> {
        let mut tx = self.pool.begin().await.map_err(QueueError::unavailable)?;
        let mut positions = Vec::with_capacity(votes.len());
        for vote in votes {
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO queue (voter, option, cast_at_ms) VALUES (?, ?, ?) RETURNING position",
            )
            .bind(vote.voter.to_string())
            .bind(vote.option.as_str())
            .bind(vote.cast_at_ms.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(QueueError::unavailable)?;
            positions.push(Ok(QueuePosition { major: position as u64, minor: 0 }));
        }
        tx.commit().await.map_err(QueueError::unavailable)?;
        self.appended.notify_one();
        Ok(positions)
    }
}

/// One connection per file: SQLite has one writer anyway, and queueing in the pool is cheaper
/// than SQLite's busy-wait between connections.
pub(crate) async fn open_sqlite(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, a commit is in the OS's hands once written: it survives the process being
        // killed, though not the machine losing power.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new().max_connections(1).connect_with(options).await
}

impl VoteQueue for EmbeddedQueue {
    async fn publish(&self, vote: &Vote) -> Result<QueuePosition, QueueError> {
        self.appender.append(vote).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(QueueError::unavailable)?;
        Ok(())
    }

    async fn close(&self) {
        self.appender.close().await;
    }
}

/// The one file is both ends: the vote service writes it and the worker, in the same process,
/// reads it.
impl ConsumerGroup for EmbeddedQueue {
    type Consumer = EmbeddedConsumer;

    async fn join(&self, settings: ConsumerSettings) -> Result<EmbeddedConsumer, QueueError> {
        Ok(EmbeddedConsumer { queue: self.clone(), settings, delivered_up_to: 0 })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        VoteQueue::ping(self).await
    }
}

#[derive(Debug)]
pub struct EmbeddedConsumer {
    queue: EmbeddedQueue,
    settings: ConsumerSettings,
    /// The greatest position delivered by this process.
    delivered_up_to: i64,
}

impl EmbeddedConsumer {
    async fn read(&mut self) -> Result<Vec<Delivery>, QueueError> {
        let rows = sqlx::query(
            "SELECT position, voter, option, cast_at_ms FROM queue WHERE position > ? ORDER BY position LIMIT ?",
        )
        .bind(self.delivered_up_to)
        .bind(self.settings.batch_size as i64)
        .fetch_all(&self.queue.pool)
        .await
        .map_err(QueueError::unavailable)?;
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let position: i64 = row.get(0);
            let fields = vec![
                (fields::VOTER.to_owned(), row.get::<String, _>(1)),
                (fields::OPTION.to_owned(), row.get::<String, _>(2)),
                (fields::CAST_AT.to_owned(), row.get::<String, _>(3)),
            ];
            self.delivered_up_to = position;
            batch.push(Delivery {
                position: QueuePosition { major: position as u64, minor: 0 },
                payload: decode_vote(&fields),
            });
        }
        Ok(batch)
    }
}

impl QueueConsumer for EmbeddedConsumer {
    async fn next_batch(&mut self) -> Result<Vec<Delivery>, QueueError> {
        let batch = self.read().await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        // A vote appended since the read left a permit, so this returns at once for it.
        let _ = tokio::time::timeout(self.settings.block, self.queue.appended.notified()).await;
        self.read().await
    }

    async fn ack(&mut self, positions: &[QueuePosition]) -> Result<(), QueueError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut delete = QueryBuilder::new("DELETE FROM queue WHERE position IN (");
        let mut list = delete.separated(", ");
        for position in positions {
            list.push_bind(position.major as i64);
        }
        delete.push(")");
        delete.build().execute(&self.queue.pool).await.map_err(QueueError::unavailable)?;
        Ok(())
    }

    async fn dead_letter(&mut self, entry: &Delivery, reason: &str) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT OR REPLACE INTO dead_letters (position, voter, option, cast_at_ms, reason)
             SELECT position, voter, option, cast_at_ms, ? FROM queue WHERE position = ?",
        )
        .bind(reason)
        .bind(entry.position.major as i64)
        .execute(&self.queue.pool)
        .await
        .map_err(QueueError::unavailable)?;
        self.ack(&[entry.position]).await
    }

    /// Nothing to do: acknowledged entries are deleted when acknowledged.
    async fn trim(&mut self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{OptionId, VoterId};

    fn a_vote() -> Vote {
        Vote::now(VoterId::random(), OptionId::parse("a").unwrap())
    }

    #[tokio::test]
    async fn closing_writes_every_vote_handed_over_and_refuses_later_ones() {
        let data = tempfile::tempdir().unwrap();
        let queue = EmbeddedQueue::open(&data.path().join("queue.sqlite")).await.unwrap();
        let publishing: Vec<_> = (0..200)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.publish(&a_vote()).await })
            })
            .collect();
        // Every publish is in the channel or written once each task has run to its await.
        tokio::task::yield_now().await;
        queue.close().await;
        let mut written = 0;
        for publish in publishing {
            if publish.await.unwrap().is_ok() {
                written += 1;
            }
        }
        let settings = ConsumerSettings {
            name: "count".into(),
            batch_size: 1000,
            claim_idle: Duration::from_secs(60),
            block: Duration::from_millis(10),
        };
        let queued = queue.join(settings).await.unwrap().next_batch().await.unwrap().len();
        assert_eq!(queued, written, "every vote acknowledged is in the queue, and only those");
        let late = queue.publish(&a_vote()).await;
        assert!(matches!(late, Err(QueueError::Unavailable(_))), "{late:?}");
    }
}
