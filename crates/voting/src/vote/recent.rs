//! What each recent voter last chose, so the ballot can mark their choice when they come back.
//!
//! A small bounded map in memory, filled when a vote is acknowledged: at most `capacity`
//! voters, each forgotten after `ttl`. It is only a courtesy for the page, never the record of
//! a vote: with several vote replicas each knows only the voters it served (a voter sent to
//! another replica sees an unmarked ballot, and voting still works), and a restart forgets it.
//! A load test that makes a new voter per request only cycles the oldest entries out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voting_core::{OptionId, VoterId};

/// Enough for the voters of the last few minutes of a busy poll, in a few MB.
pub const DEFAULT_CAPACITY: usize = 50_000;
/// Long enough for a voter to come back to the page; short enough to stay small.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);

/// Cheap to clone; every clone shares the same map.
#[derive(Debug, Clone)]
pub struct RecentChoices {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    choices: HashMap<VoterId, (OptionId, Instant)>,
    /// Insertion order, oldest first, for eviction. A voter who votes again has a newer entry
    /// here; the stale one is skipped when it reaches the front (its time no longer matches).
    order: VecDeque<(VoterId, Instant)>,
}

impl Default for RecentChoices {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl RecentChoices {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self { inner: Arc::default(), capacity: capacity.max(1), ttl }
    }

    /// Remembers that `voter`'s latest acknowledged vote is `option`.
    pub fn remember(&self, voter: VoterId, option: OptionId) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.choices.insert(voter, (option, now));
        inner.order.push_back((voter, now));
        self.evict(&mut inner, now);
    }

    /// What `voter` last chose, if they voted here within the TTL.
    pub fn get(&self, voter: &VoterId) -> Option<OptionId> {
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (option, at) = inner.choices.get(voter)?;
        (at.elapsed() < self.ttl).then(|| option.clone())
    }

    /// Drops entries from the front while the map is over capacity or they have expired.
    fn evict(&self, inner: &mut Inner, now: Instant) {
        // The order queue can hold stale duplicates; bound it too, so it cannot grow without end.
        while let Some(&(voter, at)) = inner.order.front() {
            let over = inner.choices.len() > self.capacity || inner.order.len() > 2 * self.capacity;
            if !over && now.duration_since(at) < self.ttl {
                break;
            }
            inner.order.pop_front();
            if inner.choices.get(&voter).is_some_and(|(_, latest)| *latest == at) {
                inner.choices.remove(&voter);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().choices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(id: &str) -> OptionId {
        OptionId::parse(id).unwrap()
    }

    #[test]
    fn a_voter_s_latest_choice_is_remembered() {
        let recent = RecentChoices::default();
        let voter = VoterId::random();
        assert_eq!(recent.get(&voter), None);
        recent.remember(voter, option("a"));
        recent.remember(voter, option("b"));
        assert_eq!(recent.get(&voter), Some(option("b")));
    }

    #[test]
    fn the_oldest_voters_are_forgotten_beyond_the_capacity() {
        let recent = RecentChoices::new(3, DEFAULT_TTL);
        let voters: Vec<VoterId> = (0..5).map(|_| VoterId::random()).collect();
        for voter in &voters {
            recent.remember(*voter, option("a"));
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.get(&voters[0]), None);
        assert_eq!(recent.get(&voters[4]), Some(option("a")));
    }

    #[test]
    fn a_voter_who_votes_again_is_not_evicted_by_their_older_entry() {
        let recent = RecentChoices::new(2, DEFAULT_TTL);
        let (early, other) = (VoterId::random(), VoterId::random());
        recent.remember(early, option("a"));
        recent.remember(other, option("a"));
        recent.remember(early, option("b")); // early's first entry is now stale
        recent.remember(VoterId::random(), option("a")); // evicts `other`, skipping the stale one
        assert_eq!(recent.get(&early), Some(option("b")));
        assert_eq!(recent.get(&other), None);
    }

    #[test]
    fn choices_expire_after_the_ttl() {
        let recent = RecentChoices::new(10, Duration::ZERO);
        let voter = VoterId::random();
        recent.remember(voter, option("a"));
        assert_eq!(recent.get(&voter), None);
        assert_eq!(recent.len(), 0);
    }
}
