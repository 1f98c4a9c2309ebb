use std::time::Duration;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use voting_core::queue::ConsumerGroup;
use voting_core::queue::redis::RedisConsumerGroup;
use voting_core::store::postgres::PostgresStore;
use voting_core::store::{StoreError, VoteStore};
use voting_core::{OptionId, QueuePosition, QueuedVote, Vote, VoterId};
use voting_testkit::Process;

use crate::helpers::{Options, SETTLE, TestSystem, eventually};

/// Votes from `voters` voters, each voting `rounds` times and changing their mind; returns
/// the counts their last votes add up to.
async fn votes_from_changing_voters(system: &TestSystem, voters: usize, rounds: usize) -> [u64; 3] {
    let options = ["a", "b", "c"];
    let mut expected = [0u64; 3];
    let mut cookies = Vec::new();
    for voter in 0..voters {
        cookies.push(system.vote_as_new_voter(options[voter % 3]).await);
    }
    for round in 1..rounds {
        for (voter, cookie) in cookies.iter().enumerate() {
            let response = system.vote(options[(voter + round) % 3], Some(cookie)).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    }
    for voter in 0..voters {
        expected[(voter + rounds - 1) % 3] += 1;
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_load_without_double_counting() {
    let mut system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    let expected = votes_from_changing_voters(&system, 300, 4).await;
    assert_eq!(system.redis_int(&["XLEN", "votes"]), 1200);

    let stop = CancellationToken::new();
    let first = system.spawn_worker(Duration::from_secs(30), stop.clone());
    let second = system.spawn_worker(Duration::from_secs(30), stop.clone());
    system.wait_for_counts(expected).await;
    let consumers = system.redis_command(&["XINFO", "CONSUMERS", "votes", "workers"]);
    assert_eq!(consumers.matches("test-").count(), 2, "both workers joined the group: {consumers}");
    assert!(eventually(SETTLE, async || system.pending() == 0).await, "everything is acknowledged");
    // Trimming keeps nothing that is acknowledged beyond the last stream node.
    assert!(
        eventually(SETTLE, async || system.redis_int(&["XLEN", "votes"]) < 1200).await,
        "the stream is trimmed"
    );

    stop.cancel();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let mut system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    let expected = votes_from_changing_voters(&system, 100, 2).await;

    // Hold the batch mid-transaction: the worker's first statement waits on this lock.
    let blocker = PostgresStore::connect_lazy(&system.postgres.url(), 1).unwrap();
    let mut tx = blocker.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE tallies IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();

    let (redis_url, database_url) = (system.redis.url(), system.postgres.url());
    let mut worker = Process::spawn(
        env!("CARGO_BIN_EXE_voting"),
        &["worker"],
        &[
            ("WORKER_ADDR", "127.0.0.1:0"),
            ("REDIS_URL", &redis_url),
            ("DATABASE_URL", &database_url),
            ("WORKER_BATCH_SIZE", "50"),
        ],
    )
    .unwrap();
    assert!(
        eventually(SETTLE, async || system.pending() > 0).await,
        "the worker took a batch: {}",
        worker.log()
    );
    worker.kill();
    tx.rollback().await.unwrap();
    assert!(system.pending() > 0, "the dead worker's batch is still pending");
    assert_eq!(system.results().await.total, 0, "nothing was committed");

    // Another worker takes the abandoned batch over once it has been idle long enough.
    let _rescuer = system.spawn_worker(Duration::from_millis(500), CancellationToken::new());
    system.wait_for_counts(expected).await;
    assert!(eventually(SETTLE, async || system.pending() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_or_reordered_batches_change_nothing() {
    let system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    let store = PostgresStore::connect_lazy(&system.postgres.url(), 2).unwrap();
    let (alice, bob) = (VoterId::random(), VoterId::random());
    let vote = |voter, option: &str, major| QueuedVote {
        position: QueuePosition { major, minor: 0 },
        vote: Vote { voter, option: OptionId::parse(option).unwrap(), cast_at_ms: 0 },
    };
    let first = [vote(alice, "a", 1), vote(bob, "b", 2)];
    let second = [vote(alice, "c", 3), vote(bob, "b", 4), vote(bob, "a", 5)];
    let tally = async |store: &PostgresStore| {
        let tallies = store.tallies().await.unwrap();
        ["a", "b", "c"].map(|o| tallies.get(&OptionId::parse(o).unwrap()).copied().unwrap_or(0))
    };

    store.apply(&second).await.unwrap();
    assert_eq!(tally(&store).await, [1, 0, 1]);
    store.apply(&first).await.unwrap(); // older batch arrives late: nothing changes
    assert_eq!(tally(&store).await, [1, 0, 1]);
    store.apply(&second).await.unwrap(); // redelivered: nothing changes
    store.apply(&first).await.unwrap();
    assert_eq!(tally(&store).await, [1, 0, 1]);
    let rows = system.postgres.psql("SELECT vote FROM votes ORDER BY vote").unwrap();
    assert_eq!(rows, "a\nc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_or_read_the_store_does_not_answer_is_given_up_and_its_connection_not_reused() {
    let system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    // One connection: were the silent one returned to the pool, nothing else could run.
    let store = PostgresStore::connect_lazy(&system.postgres.url(), 1)
        .unwrap()
        .with_answer_timeout(Duration::from_millis(500));
    // The batch's first statement waits on this lock: to the store's client, a store that
    // has stopped answering (a Pgpool-II whose node died sends no more than that).
    let blocker = PostgresStore::connect_lazy(&system.postgres.url(), 1).unwrap();
    let mut tx = blocker.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE tallies IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
    let votes = [QueuedVote {
        position: QueuePosition { major: 1, minor: 0 },
        vote: Vote { voter: VoterId::random(), option: OptionId::parse("a").unwrap(), cast_at_ms: 0 },
    }];

    let given_up = tokio::time::timeout(Duration::from_secs(5), store.apply(&votes))
        .await
        .expect("the store gave the batch up instead of waiting for an answer");
    let error = given_up.unwrap_err();
    assert!(error.is_transient(), "a batch given up is retried: {error}");
    // Its connection is gone, not pooled: the one slot serves the next statement at once.
    tokio::time::timeout(Duration::from_secs(2), store.ping())
        .await
        .expect("the pool's only slot is free")
        .unwrap();
    // So is a read of the tallies (the result service's), and the slot is free again after it.
    let read = tokio::time::timeout(Duration::from_secs(5), store.tallies())
        .await
        .expect("the store gave the read up instead of waiting for an answer");
    assert!(read.unwrap_err().is_transient(), "a read given up is retried");
    tokio::time::timeout(Duration::from_secs(2), store.ping())
        .await
        .expect("the pool's only slot is free")
        .unwrap();

    tx.rollback().await.unwrap();
    store.apply(&votes).await.unwrap();
    assert_eq!(system.postgres.psql("SELECT votes FROM tallies WHERE vote = 'a'").unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_in_a_failed_transaction_is_not_reused() {
    let system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    // One connection, left in a transaction that failed without sqlx knowing: it refuses
    // every statement but ROLLBACK (as a session Pgpool-II marked failed does).
    let store = PostgresStore::connect_lazy(&system.postgres.url(), 1).unwrap();
    let poisoned = sqlx::raw_sql("BEGIN; SELECT 1 / 0").execute(store.pool()).await;
    assert!(poisoned.is_err(), "the division failed and left the transaction aborted");
    let votes = [QueuedVote {
        position: QueuePosition { major: 1, minor: 0 },
        vote: Vote { voter: VoterId::random(), option: OptionId::parse("b").unwrap(), cast_at_ms: 0 },
    }];

    let refused = store.apply(&votes).await.unwrap_err();
    assert!(refused.is_transient(), "a batch refused by the session is retried: {refused}");
    // The retry runs on a new connection, and every retry after it would succeed too.
    store.apply(&votes).await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(system.postgres.psql("SELECT votes FROM tallies WHERE vote = 'b'").unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_entry_goes_to_the_dead_letters_and_the_worker_goes_on() {
    let system = TestSystem::start().await;
    system.redis_command(&["XADD", "votes", "*", "voter", "not-a-voter", "option", "a", "cast_at", "1"]);
    system.redis_command(&["XADD", "votes", "*", "garbage", "yes"]);
    system.vote_as_new_voter("c").await;
    system.wait_for_counts([0, 0, 1]).await;
    assert!(eventually(SETTLE, async || system.redis_int(&["XLEN", "votes:dead"]) == 2).await);
    let dead = system.redis_command(&["XRANGE", "votes:dead", "-", "+"]);
    assert!(dead.contains("voter:") || dead.contains("voter"), "{dead}");
    assert!(eventually(SETTLE, async || system.pending() == 0).await, "dead letters are acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_committed_but_died_before_acknowledging_changes_nothing_on_redelivery() {
    let mut system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    let expected = votes_from_changing_voters(&system, 30, 3).await;
    // Play the dying worker: read every entry into the group, apply it, never acknowledge.
    let group = RedisConsumerGroup::new(&system.redis.url()).unwrap();
    let mut consumer = group
        .join(voting_core::queue::ConsumerSettings {
            name: "doomed".into(),
            batch_size: 1000,
            claim_idle: Duration::from_secs(3600),
            block: Duration::from_millis(100),
        })
        .await
        .unwrap();
    use voting_core::queue::QueueConsumer;
    let batch = consumer.next_batch().await.unwrap();
    assert_eq!(batch.len(), 90);
    let votes: Vec<_> =
        batch.into_iter().map(|d| QueuedVote { position: d.position, vote: d.payload.unwrap() }).collect();
    PostgresStore::connect_lazy(&system.postgres.url(), 1).unwrap().apply(&votes).await.unwrap();
    system.wait_for_counts(expected).await;
    assert_eq!(system.pending(), 90);

    let _rescuer = system.spawn_worker(Duration::from_millis(300), CancellationToken::new());
    assert!(
        eventually(SETTLE, async || system.pending() == 0).await,
        "the entries were reclaimed and acknowledged"
    );
    assert_eq!(system.counts().await.into_iter().map(|(_, n)| n).collect::<Vec<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_the_batch_for_good_stops_the_worker_and_the_votes_stay_queued() {
    let mut system = TestSystem::start_with(Options { workers: 0, ..Options::default() }).await;
    system.postgres.psql("ALTER TABLE votes RENAME TO votes_elsewhere").unwrap();
    for option in ["a", "b", "c"] {
        system.vote_as_new_voter(option).await;
    }
    let worker = system.spawn_worker(Duration::from_secs(30), CancellationToken::new());
    let stopped = tokio::time::timeout(SETTLE, worker).await.expect("the worker stops by itself").unwrap();
    assert!(matches!(stopped, Err(StoreError::Refused(_))), "{stopped:?}");
    assert_eq!(system.pending(), 3, "nothing was acknowledged");

    // The operator repairs the schema; the next worker stores every vote.
    system.postgres.psql("ALTER TABLE votes_elsewhere RENAME TO votes").unwrap();
    let _next = system.spawn_worker(Duration::from_millis(300), CancellationToken::new());
    system.wait_for_counts([1, 1, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_health_address_says_which_setting_to_change() {
    let addr = format!("127.0.0.1:{}", voting_testkit::free_port());
    let envs = [("WORKER_ADDR", addr.as_str()), ("REDIS_URL", "redis://127.0.0.1:1"), ("RUST_LOG", "info")];
    let mut first = Process::spawn(env!("CARGO_BIN_EXE_voting"), &["worker"], &envs).unwrap();
    assert!(
        eventually(SETTLE, async || first.log().contains("worker health endpoints listening")).await,
        "{}",
        first.log()
    );
    let mut second = Process::spawn(env!("CARGO_BIN_EXE_voting"), &["worker"], &envs).unwrap();
    assert!(eventually(SETTLE, async || !second.is_running()).await, "the second worker exits");
    assert!(second.log().contains("WORKER_ADDR"), "{}", second.log());
    assert!(first.is_running(), "the first one is unharmed");
}
