//! Dependencies really going away: processes killed, restarted, demoted.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{SETTLE, TestSystem, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_and_no_false_success_then_votes_are_accepted_again() {
    let mut system = TestSystem::start().await;
    let cookie = system.vote_as_new_voter("a").await;
    system.redis.kill();

    let response = system.vote("b", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let form = system.http.post(&system.vote_url).form(&[("vote", "b")]).send().await.unwrap();
    assert_eq!(form.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(form.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(
        system.status_of(&format!("{}/readyz", system.vote_url)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    system.redis.restart().unwrap();
    assert!(
        eventually(SETTLE, async || system.vote("c", Some(&cookie)).await.status() == StatusCode::ACCEPTED)
            .await,
        "votes are accepted again once Redis is back"
    );
    assert_eq!(system.status_of(&format!("{}/readyz", system.vote_url)).await, StatusCode::OK);
    // The vote acknowledged before the outage was kept (AOF), the refused one never counted.
    system.wait_for_counts([0, 0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_turned_into_a_replica_means_503_then_recovers_when_it_is_primary_again() {
    let system = TestSystem::start().await;
    let other = tokio::task::spawn_blocking(|| voting_testkit::RedisServer::start().unwrap()).await.unwrap();
    system.vote_as_new_voter("a").await;
    system.wait_for_counts([1, 0, 0]).await;

    system.redis_command(&["REPLICAOF", "127.0.0.1", &other.port().to_string()]);
    assert!(
        eventually(SETTLE, async || system.vote("b", None).await.status() == StatusCode::SERVICE_UNAVAILABLE)
            .await,
        "a read-only Redis refuses votes with 503"
    );
    system.redis_command(&["REPLICAOF", "NO", "ONE"]);
    assert!(
        eventually(SETTLE, async || system.vote("b", None).await.status() == StatusCode::ACCEPTED).await,
        "votes are accepted again once it is primary"
    );
    // The replica took the (empty) primary's data, stream and group included: the worker
    // makes the group again and counts what comes next.
    system.wait_for_counts([1, 1, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_and_back_every_queued_vote_is_counted() {
    let mut system = TestSystem::start().await;
    for option in ["a", "b"] {
        system.vote_as_new_voter(option).await;
    }
    system.wait_for_counts([1, 1, 0]).await;
    system.postgres.kill();

    for option in ["c", "c", "a"] {
        system.vote_as_new_voter(option).await; // the queue buffers them
    }
    let result_ready = format!("{}/readyz", system.result_url);
    assert!(
        eventually(SETTLE, async || system.status_of(&result_ready).await == StatusCode::SERVICE_UNAVAILABLE)
            .await,
        "result reports itself not ready"
    );
    assert_eq!(system.results().await.total, 2, "result keeps serving the last known tallies");
    tokio::time::sleep(Duration::from_millis(300)).await; // let the worker fail and back off a few times

    system.postgres.restart().unwrap();
    system.wait_for_counts([2, 1, 2]).await;
    assert!(eventually(SETTLE, async || system.status_of(&result_ready).await == StatusCode::OK).await);
    assert!(eventually(SETTLE, async || system.pending() == 0).await);
}
