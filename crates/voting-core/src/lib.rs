//! The shared vocabulary of the voting platform, and the parts every service uses.
//!
//! - [`domain`]: options, ballots, voters, votes, queue positions, tallies, results.
//! - [`queue`]: the ordered log between vote and worker (Redis Streams, or embedded SQLite).
//! - [`store`]: votes and tallies behind worker and result (PostgreSQL, or embedded SQLite).
//! - [`telemetry`], [`shutdown`], [`backoff`], [`secrets`], [`duration`]: the plumbing every
//!   service shares, so all of them log, stop, retry, read secrets and durations the same way.

pub mod backoff;
pub mod domain;
pub mod duration;
pub mod queue;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use domain::{
    Ballot, BallotOption, OptionId, QueuePosition, QueuedVote, Results, Tallies, Vote, VoterId,
};
