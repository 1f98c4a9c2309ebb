//! `voting up` as a user runs it: the real binary, killed for real.

use std::time::Duration;

use reqwest::StatusCode;
use voting_core::Results;
use voting_testkit::free_port;

use crate::helpers::{SETTLE, UpProcess, eventually};

async fn total(http: &reqwest::Client, up: &UpProcess) -> Option<u64> {
    let response = http.get(format!("{}/api/results", up.result_url)).send().await.ok()?;
    Some(response.json::<Results>().await.ok()?.total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voting_up_keeps_every_acknowledged_vote_across_kill_9_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (vote_port, result_port) = (free_port(), free_port());
    let mut up = UpProcess::start(data.path(), vote_port, result_port).await;
    assert!(up.process.log().contains(&format!("http://127.0.0.1:{vote_port}/")), "prints its URLs");

    let mut acknowledged = 0;
    for i in 0..200 {
        let option = ["a", "b"][i % 2];
        let response = http
            .post(format!("{}/api/vote", up.vote_url))
            .json(&serde_json::json!({ "vote": option }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        acknowledged += 1;
    }
    up.process.kill(); // at once, whatever the worker was doing

    let up = UpProcess::start(data.path(), vote_port, result_port).await;
    assert!(
        eventually(SETTLE, async || total(&http, &up).await == Some(acknowledged)).await,
        "after the restart results show {acknowledged} votes, not {:?}",
        total(&http, &up).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voting_up_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut up = UpProcess::start(data.path(), free_port(), free_port()).await;
    // An open event stream must not hold shutdown open.
    let events = http.get(format!("{}/events", up.result_url)).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let status = up.process.terminate().expect("it exits");
    assert!(status.success(), "exit status {status:?}: {}", up.process.log());
    assert!(started.elapsed() < Duration::from_secs(10));
}
