//! The latest tallies, kept by one task per process and read by every client.
//!
//! The task re-reads the tallies on each change notification, after every (re)subscription
//! (notifications sent while disconnected are lost), and at least every `refresh` anyway.
//! When the store is down it keeps the last tallies it read and reports itself not ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use voting_core::backoff::Backoff;
use voting_core::store::{ChangeFeed, VoteStore};
use voting_core::{Ballot, Results, Tallies};

/// One version of the results, with its JSON rendered once for every client.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub results: Arc<Results>,
    pub json: Arc<str>,
}

impl Snapshot {
    fn new(results: Results) -> Self {
        let json = serde_json::to_string(&results).expect("results serialize").into();
        Self { results: Arc::new(results), json }
    }
}

/// The reading side, cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    latest: watch::Receiver<Snapshot>,
    /// Whether the last read of the store succeeded.
    fresh: Arc<AtomicBool>,
}

impl Feed {
    pub fn new<S: VoteStore>(ballot: Ballot, store: S, refresh: Duration) -> (Self, Follow<S>) {
        let empty = Snapshot::new(Results::new(&ballot, &Tallies::new()));
        let (sender, latest) = watch::channel(empty);
        let fresh = Arc::new(AtomicBool::new(false));
        let follow = Follow { ballot, store, refresh, sender, fresh: fresh.clone() };
        (Self { latest, fresh }, follow)
    }

    pub fn latest(&self) -> Snapshot {
        self.latest.borrow().clone()
    }

    /// A receiver that sees the current snapshot first, then each change.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        let mut receiver = self.latest.clone();
        receiver.mark_changed();
        receiver
    }

    pub fn ready(&self) -> Result<(), String> {
        if self.fresh.load(Ordering::Relaxed) { Ok(()) } else { Err("the store does not answer".into()) }
    }
}

/// How long subscribing to the store's changes may take. A subscription is a connection and a
/// `LISTEN`; sent on a pooled connection to a Pgpool-II whose node went silently, the `LISTEN`
/// waited for an answer for as long as the kernel kept the connection, and every re-read with
/// it: in a Swarm run both result services answered 503 for minutes after such a node came back.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The writing side: the task that follows the store.
#[derive(Debug)]
pub struct Follow<S> {
    ballot: Ballot,
    store: S,
    refresh: Duration,
    sender: watch::Sender<Snapshot>,
    fresh: Arc<AtomicBool>,
}

impl<S: VoteStore> Follow<S> {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut every = tokio::time::interval(self.refresh);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            let mut changes = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.store.changes()).await {
                Ok(Ok(changes)) => Some(changes),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot subscribe to store changes; polling until it can");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        "no answer to subscribing to store changes in {SUBSCRIBE_TIMEOUT:?}; polling until it can"
                    );
                    None
                }
            };
            self.reread().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => self.reread().await,
                    changed = async { changes.as_mut().unwrap().changed().await }, if changes.is_some() => {
                        match changed {
                            Ok(()) => {
                                backoff.reset();
                                self.reread().await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "lost the store change subscription");
                                break;
                            }
                        }
                    }
                }
                if changes.is_none() && self.fresh.load(Ordering::Relaxed) {
                    break; // the store is back: subscribe again
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn reread(&self) {
        match self.store.tallies().await {
            Ok(tallies) => {
                let results = Results::new(&self.ballot, &tallies);
                self.sender.send_if_modified(|current| {
                    let changed = *current.results != results;
                    if changed {
                        *current = Snapshot::new(results);
                    }
                    changed
                });
                if !self.fresh.swap(true, Ordering::Relaxed) {
                    tracing::info!("reading tallies from the store");
                }
            }
            Err(e) => {
                if self.fresh.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read tallies; serving the last known ones");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future;

    use voting_core::domain::QueuedVote;
    use voting_core::store::StoreError;
    use voting_core::{OptionId, Tallies};

    use super::*;

    /// A store that reads, but whose subscriptions never answer: a `LISTEN` sent to a peer that
    /// is gone.
    #[derive(Debug, Clone)]
    struct SilentSubscriptions;

    struct NoChanges;

    impl ChangeFeed for NoChanges {
        async fn changed(&mut self) -> Result<(), StoreError> {
            future::pending().await
        }
    }

    impl VoteStore for SilentSubscriptions {
        type Changes = NoChanges;

        async fn apply(&self, _votes: &[QueuedVote]) -> Result<(), StoreError> {
            Ok(())
        }

        async fn tallies(&self) -> Result<Tallies, StoreError> {
            Ok(Tallies::from([(OptionId::parse("a").unwrap(), 3)]))
        }

        async fn changes(&self) -> Result<NoChanges, StoreError> {
            future::pending().await
        }

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_that_never_answers_does_not_stop_the_reads() {
        let ballot = Ballot::parse("a=Cats,b=Dogs").unwrap();
        let (feed, follow) = Feed::new(ballot, SilentSubscriptions, Duration::from_millis(100));
        let shutdown = CancellationToken::new();
        let following = tokio::spawn(follow.run(shutdown.clone()));

        let mut latest = feed.subscribe();
        tokio::time::timeout(SUBSCRIBE_TIMEOUT * 3, latest.wait_for(|snapshot| snapshot.results.total == 3))
            .await
            .expect("the tallies were read although subscribing hung")
            .unwrap();
        assert!(feed.ready().is_ok());
        shutdown.cancel();
        following.await.unwrap();
    }
}
