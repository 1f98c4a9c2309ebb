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
/// anything was; either way applying the batch again is harmless (applying is idempotent).
///
/// The two kinds call for opposite reactions. [`StoreError::Unavailable`] passes: the worker
/// retries with backoff and the result service answers 503 meanwhile. [`StoreError::Refused`]
/// does not: the same statement will fail the same way until an operator changes the schema,
/// a grant or the configuration, so the worker logs it as an error and stops (its process
/// exits non-zero and the orchestrator's restart policy tries again later, by which time a
/// migration that had not run yet has). It never dead-letters the batch: the votes are fine,
/// and they stay in the queue, unacknowledged, until a worker can store them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is down, unreachable, failing over or read-only after one, the pool timed
    /// out, or the transaction lost a serialization or deadlock race: worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the statement itself: a table, column or function missing, a
    /// privilege missing, a constraint or type violated, or the answer has a shape this code
    /// does not know. Retrying the same statement cannot succeed.
    #[error("store refused the statement: {0}")]
    Refused(#[source] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether retrying can help; see [`StoreError`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// SQLSTATE classes of statements that fail the same way every time: 22 data exception,
/// 23 integrity constraint violation, 2B dependent privilege descriptors still exist, 3F
/// invalid schema name, 42 syntax error or access rule violation (undefined table or column,
/// insufficient privilege). Every other class (08 connection, 25 read-only transaction on a
/// standby, 40 serialization or deadlock, 53 insufficient resources, 57 operator intervention
/// such as a shutdown, 58 system error, XX internal, and whatever Pgpool-II reports while it
/// fails over) is retried.
const REFUSED_SQLSTATE_CLASSES: [&str; 5] = ["22", "23", "2B", "3F", "42"];

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let refused = match &error {
            sqlx::Error::Database(database) => database
                .code()
                .is_some_and(|code| REFUSED_SQLSTATE_CLASSES.iter().any(|class| code.starts_with(class))),
            // The answer does not have the shape this code expects: the schema is not ours.
            sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::Configuration(_) => true,
            _ => false,
        };
        if refused { Self::Refused(error) } else { Self::Unavailable(error) }
    }
}
