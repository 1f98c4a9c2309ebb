//! The store behind the worker and the result service: every voter's latest vote, and the
//! tallies kept beside them in the same transaction.
//!
//! [`postgres::PostgresStore`] serves the services; [`embedded::EmbeddedStore`] (SQLite) serves
//! `voting up`. Both apply a batch the same way: idempotent and ordered by queue position.

pub mod embedded;
pub mod postgres;

use std::future::Future;

use crate::domain::{OptionId, QueuedVote, Tallies};

pub trait VoteStore: Clone + Send + Sync + 'static {
    type Changes: ChangeFeed;

    /// Applies a batch in one transaction. For each voter the vote with the greatest queue
    /// position wins, against the batch and against what is stored, so a redelivered or
    /// reordered batch changes nothing it should not. Tallies move in the same transaction,
    /// and listeners hear of it after the commit.
    fn apply(&self, votes: &[QueuedVote]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The current counts per option; costs one row per option.
    fn tallies(&self) -> impl Future<Output = Result<Tallies, StoreError>> + Send;

    /// A subscription to "the tallies may have changed".
    fn changes(&self) -> impl Future<Output = Result<Self::Changes, StoreError>> + Send;

    /// Whether the store answers; backs `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Signals that tallies may have changed.
pub trait ChangeFeed: Send + 'static {
    /// Waits for the next committed batch, or for a reconnect after which notices may have been
    /// missed. Either way the caller re-reads the tallies.
    fn changed(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Tallies from `(vote, votes)` rows, as both stores keep them. Rows of options we would never
/// accept (an adopted database of the original app, say) are not ours to show.
fn tallies_from_rows(rows: Vec<(String, i64)>) -> Tallies {
    rows.into_iter()
        .filter_map(|(vote, votes)| Some((OptionId::parse(&vote).ok()?, votes.max(0) as u64)))
        .collect()
}

/// Why the store could not do what was asked. Nothing was committed, or it is not known that
/// anything was: the worker retries the batch (applying is idempotent), result answers 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is down, unreachable, failing over, or the pool timed out.
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}
