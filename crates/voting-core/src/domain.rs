//! The domain types. Each is parsed once at the edge into a value that cannot be invalid, so
//! handlers, the worker and the stores only ever see votes that make sense.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

/// The id of a ballot option (`a`, `b`, `birds`): 1 to 32 characters of `[a-z0-9_-]`.
///
/// Short and plain on purpose: it travels in stream entries, table rows and URLs unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OptionId(Arc<str>);

impl OptionId {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, InvalidOptionId> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid { Ok(Self(raw.into())) } else { Err(InvalidOptionId) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an option id is 1 to 32 characters of a-z, 0-9, '_' and '-'")]
pub struct InvalidOptionId;

/// One option on the ballot: its id and the label people see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BallotOption {
    pub id: OptionId,
    pub label: String,
}

/// The configured ballot: at least two options, ids unique, in display order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    options: Arc<[BallotOption]>,
}

impl Ballot {
    /// Two options `a` and `b` with the given labels (the original's `OPTION_A` / `OPTION_B`).
    pub fn from_labels(a: &str, b: &str) -> Self {
        let option = |id: &str, label: &str| BallotOption {
            id: OptionId::parse(id).expect("static id is valid"),
            label: label.to_owned(),
        };
        Self { options: vec![option("a", a), option("b", b)].into() }
    }

    /// Parses `a=Cats,b=Dogs,c=Birds`.
    pub fn parse(spec: &str) -> Result<Self, InvalidBallot> {
        let mut options: Vec<BallotOption> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, label) = item
                .split_once('=')
                .ok_or_else(|| InvalidBallot(format!("`{item}` is not of the form id=Label")))?;
            let id =
                OptionId::parse(id.trim()).map_err(|e| InvalidBallot(format!("`{}`: {e}", id.trim())))?;
            let label = label.trim();
            if label.is_empty() {
                return Err(InvalidBallot(format!("option `{id}` has an empty label")));
            }
            if options.iter().any(|o| o.id == id) {
                return Err(InvalidBallot(format!("option `{id}` appears twice")));
            }
            options.push(BallotOption { id, label: label.to_owned() });
        }
        if options.len() < 2 {
            return Err(InvalidBallot("a ballot needs at least two options".into()));
        }
        Ok(Self { options: options.into() })
    }

    pub fn options(&self) -> &[BallotOption] {
        &self.options
    }

    /// The option with this id, if it is on the ballot: how raw input becomes a valid choice.
    pub fn option(&self, raw_id: &str) -> Option<&BallotOption> {
        self.options.iter().find(|o| o.id.as_str() == raw_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ballot: {0}")]
pub struct InvalidBallot(String);

/// A voter: 128 random bits, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoterId([u8; 16]);

impl VoterId {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for VoterId {
    type Err = InvalidVoterId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 16];
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidVoterId);
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidVoterId)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for VoterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Deliberately opaque: a voter id is personal data and must not end up in logs by accident.
impl fmt::Debug for VoterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VoterId(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a voter id is 32 lowercase hex digits")]
pub struct InvalidVoterId;

/// A vote as cast: who, for what, and when (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub voter: VoterId,
    pub option: OptionId,
    pub cast_at_ms: i64,
}

impl Vote {
    pub fn now(voter: VoterId, option: OptionId) -> Self {
        let cast_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self { voter, option, cast_at_ms }
    }
}

/// Where an entry sits in the queue's total order; of two votes by one voter, the one with the
/// greater position is the latest and wins, whatever order the worker sees them in.
///
/// For Redis it is the stream id `<ms>-<seq>`; for the embedded queue it is `<row id>-0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QueuePosition {
    pub major: u64,
    pub minor: u64,
}

impl fmt::Display for QueuePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

impl FromStr for QueuePosition {
    type Err = InvalidQueuePosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (major, minor) = s.split_once('-').ok_or(InvalidQueuePosition)?;
        Ok(Self {
            major: major.parse().map_err(|_| InvalidQueuePosition)?,
            minor: minor.parse().map_err(|_| InvalidQueuePosition)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a queue position is <integer>-<integer>")]
pub struct InvalidQueuePosition;

/// A vote the queue accepted, with its place in the queue's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedVote {
    pub position: QueuePosition,
    pub vote: Vote,
}

/// Keeps only each voter's latest vote of a batch, so a batch never updates one row twice
/// (PostgreSQL refuses that within one `INSERT ... ON CONFLICT`) and the latest one wins.
pub fn latest_per_voter(votes: &[QueuedVote]) -> Vec<&QueuedVote> {
    let mut latest: std::collections::HashMap<VoterId, &QueuedVote> =
        std::collections::HashMap::with_capacity(votes.len());
    for vote in votes {
        latest
            .entry(vote.vote.voter)
            .and_modify(|kept| {
                if vote.position > kept.position {
                    *kept = vote;
                }
            })
            .or_insert(vote);
    }
    let mut latest: Vec<_> = latest.into_values().collect();
    // A stable order of rows avoids deadlocks between workers locking the same voters.
    latest.sort_unstable_by_key(|v| *v.vote.voter.as_bytes());
    latest
}

/// Vote counts per option, as the store keeps them.
pub type Tallies = std::collections::HashMap<OptionId, u64>;

/// What `/api/results` and every `/events` message carry: every ballot option in ballot order,
/// present even at zero, and the total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Results {
    pub options: Vec<OptionResult>,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OptionResult {
    pub id: String,
    pub label: String,
    pub votes: u64,
}

impl Results {
    pub fn new(ballot: &Ballot, tallies: &Tallies) -> Self {
        let options: Vec<OptionResult> = ballot
            .options()
            .iter()
            .map(|o| OptionResult {
                id: o.id.to_string(),
                label: o.label.clone(),
                votes: tallies.get(&o.id).copied().unwrap_or(0),
            })
            .collect();
        let total = options.iter().map(|o| o.votes).sum();
        Self { options, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_ids_are_short_and_plain() {
        assert!(OptionId::parse("a").is_ok());
        assert!(OptionId::parse("birds_2-x").is_ok());
        for bad in ["", "A", "a b", "é", "a=b", &"x".repeat(33)] {
            assert!(OptionId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_ballot_parses_in_order_and_rejects_duplicates() {
        let ballot = Ballot::parse("a=Cats, b=Dogs,c=Birds").unwrap();
        let ids: Vec<_> = ballot.options().iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(Ballot::parse("a=Cats,a=Dogs").is_err());
        assert!(Ballot::parse("a=Cats").is_err());
        assert!(Ballot::parse("a=Cats,b").is_err());
        assert!(Ballot::parse("a=Cats,b=").is_err());
    }

    #[test]
    fn voter_ids_round_trip_and_reject_anything_else() {
        let id = VoterId::random();
        assert_eq!(id.to_string().parse::<VoterId>().unwrap(), id);
        assert!("ABCDEF0123456789abcdef0123456789".parse::<VoterId>().is_err());
        assert!("abc".parse::<VoterId>().is_err());
        assert_eq!(format!("{id:?}"), "VoterId(..)");
    }

    #[test]
    fn the_latest_vote_of_a_voter_wins_within_a_batch() {
        let voter = VoterId::random();
        let vote = |major, option: &str| QueuedVote {
            position: QueuePosition { major, minor: 0 },
            vote: Vote { voter, option: OptionId::parse(option).unwrap(), cast_at_ms: 0 },
        };
        let batch = [vote(3, "b"), vote(5, "a"), vote(4, "b")];
        let latest = latest_per_voter(&batch);
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].vote.option.as_str(), "a");
    }

    #[test]
    fn results_list_every_option_in_ballot_order() {
        let ballot = Ballot::parse("b=Dogs,a=Cats,c=Birds").unwrap();
        let tallies = Tallies::from([(OptionId::parse("a").unwrap(), 2)]);
        let results = Results::new(&ballot, &tallies);
        assert_eq!(
            serde_json::to_string(&results).unwrap(),
            r#"{"options":[{"id":"b","label":"Dogs","votes":0},{"id":"a","label":"Cats","votes":2},{"id":"c","label":"Birds","votes":0}],"total":2}"#
        );
    }
}
