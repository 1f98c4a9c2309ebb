use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use voting_core::Results;

use crate::helpers::{SETTLE, TestSystem, cookie_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_is_counted_and_shows_on_results_and_events() {
    let system = TestSystem::start().await;
    let mut events =
        system.http.get(format!("{}/events", system.result_url)).send().await.unwrap().bytes_stream();

    let response = system.vote("b", None).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["vote"], "b");
    assert_eq!(body["voter_id"].as_str().unwrap().len(), 32);

    system.wait_for_counts([0, 1, 0]).await;
    // The stream opens with the tallies at connect time, then one event per change.
    let mut buffer = String::new();
    let seen = tokio::time::timeout(SETTLE, async {
        while let Some(chunk) = events.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            let latest = buffer.lines().rev().find_map(|l| l.strip_prefix("data:"));
            if let Some(results) = latest.and_then(|json| serde_json::from_str::<Results>(json.trim()).ok())
                && results.total == 1
            {
                return results;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("an event with the vote arrives");
    assert_eq!(seen.options[1].votes, 1);
    assert_eq!(seen.options.len(), 3, "every option is present, even at zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_who_changes_their_mind_is_counted_once_with_the_last_choice() {
    let system = TestSystem::start().await;
    let cookie = system.vote_as_new_voter("a").await;
    system.wait_for_counts([1, 0, 0]).await;
    for option in ["b", "c", "b"] {
        assert_eq!(system.vote(option, Some(&cookie)).await.status(), StatusCode::ACCEPTED);
    }
    system.wait_for_counts([0, 1, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_records_the_vote_and_marks_the_choice_like_the_original() {
    let system = TestSystem::start().await;
    let page = system.http.get(&system.vote_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Cats") && html.contains("Dogs") && html.contains("Birds"));

    // What `ab -p posta -T application/x-www-form-urlencoded` sends: no cookie, a new voter.
    let response = system
        .http
        .post(&system.vote_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("vote=c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("Secure"));
    let html = response.text().await.unwrap();
    assert!(html.contains(r#"value="c" class="choice chosen" aria-pressed="true""#), "{html}");
    system.wait_for_counts([0, 0, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_behind_an_https_proxy() {
    let system = TestSystem::start().await;
    let response = system
        .http
        .post(format!("{}/api/vote", system.vote_url))
        .header("x-forwarded-proto", "https")
        .json(&serde_json::json!({"vote": "a"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["set-cookie"].to_str().unwrap().ends_with("Secure"));
    // The cookie of a voter works on later votes.
    assert_eq!(system.vote("b", Some(&cookie_of(&response))).await.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_group_by_query_agrees_with_the_results_api() {
    let system = TestSystem::start().await;
    let mut cookies = Vec::new();
    for option in ["a", "a", "b", "c", "a", "b"] {
        cookies.push(system.vote_as_new_voter(option).await);
    }
    system.vote("c", Some(&cookies[0])).await; // one a becomes c
    system.wait_for_counts([2, 2, 2]).await;

    let rows = system
        .postgres
        .psql("SELECT vote || '=' || COUNT(id) AS count FROM votes GROUP BY vote ORDER BY vote")
        .unwrap();
    let from_api: Vec<String> =
        system.counts().await.into_iter().map(|(id, n)| format!("{id}={n}")).collect();
    assert_eq!(rows.lines().collect::<Vec<_>>(), from_api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_again_while_running_changes_nothing() {
    let system = TestSystem::start().await;
    system.vote_as_new_voter("a").await;
    system.wait_for_counts([1, 0, 0]).await;
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_voting"))
        .args(["migrate", "--database-url", &system.postgres.url()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    system.vote_as_new_voter("b").await;
    system.wait_for_counts([1, 1, 0]).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_voter_sees_their_latest_choice_marked_and_no_one_else_does() {
    let system = TestSystem::start().await;
    let page = async |cookie: &str| {
        let response = system.http.get(&system.vote_url).header("cookie", cookie).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["cache-control"].to_str().unwrap().contains("private"));
        response.text().await.unwrap()
    };
    let cookie = system.vote_as_new_voter("a").await;
    assert_eq!(system.vote("b", Some(&cookie)).await.status(), StatusCode::ACCEPTED);
    let html = page(&cookie).await;
    assert!(html.contains(r#"value="b" class="choice chosen" aria-pressed="true""#), "{html}");
    assert_eq!(html.matches("aria-pressed=\"true\"").count(), 1, "{html}");

    // A new voter, and a cookie we did not sign, see an unmarked ballot (not an error page).
    for cookie in ["", "voter_id=00000000000000000000000000000000.00000000000000000000000000000000"] {
        let html = page(cookie).await;
        assert!(!html.contains("aria-pressed=\"true\""), "{html}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_work_on_a_fresh_connection_and_on_a_reused_keep_alive_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let system = TestSystem::start().await;
    let addr = system.result_url.trim_start_matches("http://").to_owned();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let read_until = async |stream: &mut tokio::net::TcpStream, marker: &str| {
        let mut seen = String::new();
        let mut chunk = [0u8; 4096];
        while !seen.contains(marker) {
            let n = tokio::time::timeout(SETTLE, stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed before `{marker}`: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        seen
    };

    // A connection that opens with /events (a browser's EventSource).
    let mut fresh = tokio::net::TcpStream::connect(&addr).await.unwrap();
    fresh.write_all(request("/events").as_bytes()).await.unwrap();
    let head = read_until(&mut fresh, "\"total\":0").await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");

    // A proxy's keep-alive connection that asks for something else first.
    let mut reused = tokio::net::TcpStream::connect(&addr).await.unwrap();
    reused.write_all(request("/api/results").as_bytes()).await.unwrap();
    read_until(&mut reused, "\"total\":0}").await;
    reused.write_all(request("/events").as_bytes()).await.unwrap();
    read_until(&mut reused, "text/event-stream").await;

    // Both streams see the next vote.
    system.vote_as_new_voter("a").await;
    read_until(&mut fresh, "\"total\":1").await;
    read_until(&mut reused, "\"total\":1").await;
}
