//! The queue between vote and worker: an ordered, durable log of votes read by a group of
//! consumers with at-least-once delivery.
//!
//! Two implementations share this contract: [`redis::RedisQueue`] (the stream `votes`, consumer
//! group `workers`) for the services, and [`embedded::EmbeddedQueue`] (a SQLite table) for
//! `voting up`. The vote service is written once against [`VoteQueue`], the producer side, and
//! the worker against [`ConsumerGroup`] and [`QueueConsumer`], the consumer side.

pub mod embedded;
mod group_commit;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use crate::domain::{OptionId, QueuePosition, Vote, VoterId};

/// How a vote is written, and so when the voter may be told it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge once the queue's primary has the vote.
    #[default]
    Fast,
    /// Acknowledge only once a replica confirmed it too (`WAIT 1`), so a failover cannot lose it.
    Replicated,
}

/// The producer side, what the vote service needs: hands votes over with the durability it
/// was opened with.
pub trait VoteQueue: Clone + Send + Sync + 'static {
    /// Hands a vote over. `Ok` means the queue holds it with the configured durability, so
    /// the vote may be acknowledged to the voter; any error means it must not be.
    fn publish(&self, vote: &Vote) -> impl Future<Output = Result<QueuePosition, QueueError>> + Send;

    /// Whether the queue answers; backs `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Finishes writing the votes handed over so far and stops the queue's background task,
    /// for every clone; a vote published afterwards is refused. The vote service calls it once
    /// its server has stopped, so its `run` ends only after the last vote is answered.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The consumer side's way in, what the worker needs: the group that consumers join, each
/// with its own settings and connections.
pub trait ConsumerGroup: Clone + Send + Sync + 'static {
    type Consumer: QueueConsumer;

    /// A consumer in the group, with connections of its own; creates the group if it is new.
    fn join(
        &self,
        settings: ConsumerSettings,
    ) -> impl Future<Output = Result<Self::Consumer, QueueError>> + Send;

    /// Whether the queue answers; backs the worker's `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// The consumer side: what one worker needs.
pub trait QueueConsumer: Send + 'static {
    /// The next entries to apply: entries that a dead consumer left pending for longer than
    /// [`ConsumerSettings::claim_idle`] first, then new ones. Waits at most
    /// [`ConsumerSettings::block`] for new entries; an empty batch means none came.
    fn next_batch(&mut self) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send;

    /// Marks entries as done. Call only once their effects are committed: an entry never
    /// acknowledged is delivered again.
    fn ack(&mut self, positions: &[QueuePosition]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Moves an entry that cannot be parsed to the dead-letter log and acknowledges it.
    fn dead_letter(
        &mut self,
        entry: &Delivery,
        reason: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Drops entries that every consumer is done with, never one that is unacknowledged.
    fn trim(&mut self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// How a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// This consumer's name in the group; unique per process, so a restarted worker never
    /// mistakes another's pending entries for its own.
    pub name: String,
    /// Most entries per batch, and so per store transaction.
    pub batch_size: usize,
    /// How long an entry stays pending with a silent consumer before another takes it over.
    pub claim_idle: Duration,
    /// How long one read waits for new entries.
    pub block: Duration,
}

/// One entry as delivered: its position, and the vote, or why it is not one.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub position: QueuePosition,
    pub payload: Result<Vote, Malformed>,
}

/// An entry that is not a vote, kept whole so it can be moved to the dead-letter log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub fields: Vec<(String, String)>,
    pub reason: String,
}

/// Why the queue could not do what was asked. Either way the vote service answers 503 and
/// the worker retries; the difference matters to whoever counts votes from outside.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Not done: the queue is down or unreachable, or refused the command (a read-only
    /// replica after a failover, no good replica for `min-replicas-to-write`).
    #[error("queue unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// Maybe done: the command was sent but the connection broke or timed out before the
    /// reply, or the vote reached the primary but no replica confirmed it in time.
    #[error("queue outcome unknown: {0}")]
    Indeterminate(#[source] anyhow::Error),
}

impl QueueError {
    /// Not done, for this reason.
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(error.into())
    }

    /// Whether the write may have happened despite the error.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Indeterminate(_))
    }

    /// The same error for another vote of a batch that failed as a whole.
    pub fn same_again(&self) -> Self {
        match self {
            Self::Unavailable(e) => Self::Unavailable(anyhow::anyhow!("{e:#}")),
            Self::Indeterminate(e) => Self::Indeterminate(anyhow::anyhow!("{e:#}")),
        }
    }
}

/// The fields of a vote entry, shared by both queues so their entries look the same.
pub(crate) mod fields {
    pub const VOTER: &str = "voter";
    pub const OPTION: &str = "option";
    pub const CAST_AT: &str = "cast_at";
}

/// Reads a vote out of an entry's fields, or says why it is not one. Public for the fuzz
/// targets: an entry is input from whoever can write to the queue.
pub fn decode_vote(fields: &[(String, String)]) -> Result<Vote, Malformed> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let malformed = |reason: String| Malformed { fields: fields.to_vec(), reason };
    let voter: VoterId = field(fields::VOTER)
        .ok_or_else(|| malformed("no voter field".into()))?
        .parse()
        .map_err(|e| malformed(format!("voter: {e}")))?;
    let option = OptionId::parse(field(fields::OPTION).ok_or_else(|| malformed("no option field".into()))?)
        .map_err(|e| malformed(format!("option: {e}")))?;
    let cast_at_ms = field(fields::CAST_AT)
        .ok_or_else(|| malformed("no cast_at field".into()))?
        .parse()
        .map_err(|_| malformed("cast_at is not an integer of milliseconds".into()))?;
    Ok(Vote { voter, option, cast_at_ms })
}

/// Encodes a vote as entry fields.
pub fn encode_vote(vote: &Vote) -> [(&'static str, String); 3] {
    [
        (fields::VOTER, vote.voter.to_string()),
        (fields::OPTION, vote.option.to_string()),
        (fields::CAST_AT, vote.cast_at_ms.to_string()),
    ]
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Self::Fast),
            "replicated" => Ok(Self::Replicated),
            other => Err(format!("`{other}`: expected `fast` or `replicated`")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Replicated => "replicated",
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

    use super::*;

    #[test]
    fn a_vote_survives_encoding() {
        let vote = Vote::now(VoterId::random(), OptionId::parse("a").unwrap());
        let fields: Vec<_> = encode_vote(&vote).map(|(k, v)| (k.to_owned(), v)).into();
        assert_eq!(decode_vote(&fields).unwrap(), vote);
    }

    proptest::proptest! {
        #[test]
        fn any_entry_decodes_to_a_vote_that_encodes_back_or_to_a_reason(
            fields in proptest::collection::vec(
                (proptest::sample::select(vec!["voter", "option", "cast_at", "other", ""]).prop_map(str::to_owned), ".{0,40}"),
                0..6,
            )
        ) {
            match decode_vote(&fields) {
                Ok(vote) => {
                    let again: Vec<_> = encode_vote(&vote).map(|(k, v)| (k.to_owned(), v)).into();
                    proptest::prop_assert_eq!(decode_vote(&again).unwrap(), vote);
                }
                Err(malformed) => {
                    proptest::prop_assert!(!malformed.reason.is_empty());
                    proptest::prop_assert_eq!(malformed.fields, fields);
                }
            }
        }

        #[test]
        fn every_vote_survives_encoding(voter in proptest::array::uniform16(0u8..), option in "[a-z0-9_-]{1,32}", cast_at_ms in proptest::num::i64::ANY) {
            let voter: VoterId = hex::encode(voter).parse().unwrap();
            let vote = Vote { voter, option: OptionId::parse(&option).unwrap(), cast_at_ms };
            let fields: Vec<_> = encode_vote(&vote).map(|(k, v)| (k.to_owned(), v)).into();
            proptest::prop_assert_eq!(decode_vote(&fields).unwrap(), vote);
        }
    }

    #[test]
    fn an_entry_that_is_not_a_vote_says_why() {
        let fields = vec![("voter".to_owned(), "nope".to_owned())];
        let err = decode_vote(&fields).unwrap_err();
        assert!(err.reason.starts_with("voter"), "{}", err.reason);
        assert_eq!(err.fields, fields);
    }
}
