//! What the services repeat of a client's input — in logs, pages and headers — and what
//! they tell the public.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use voting::http::Server;
use voting::http::connection::ConnectionLimits;

use crate::{ANY_PORT, InProcess, UpBinary, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_input_reach_neither_the_log_nor_the_page_raw() {
    let up = UpBinary::start(&[], &[], &[]);
    assert!(up.ready().await, "voting up starts: {}", up.process.log());
    let http = reqwest::Client::new();
    // A newline that would start a forged log line, a terminal escape, a NUL.
    let response = http
        .post(format!("http://{}/", up.vote))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("vote=x%0A2026-01-01T00:00:00Z%20INFO%20forged%1B%5B31m%00")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let page = response.text().await.unwrap();
    assert!(
        !page.contains('\0') && !page.contains('\u{1b}') && !page.contains("x\n2026"),
        "the page reflects raw input"
    );
    assert!(page.contains("not an option"), "{page}");
    let log = up.process.log();
    assert!(log.contains("vote rejected"), "the rejection is logged: {log}");
    assert!(!log.contains('\u{1b}') && !log.contains('\0'), "control characters in the log: {log:?}");
    assert!(!log.lines().any(|line| line.starts_with("2026-01-01T00:00:00Z")), "a forged log line: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_short_safe_request_ids_are_kept_and_made_ones_reveal_no_count() {
    let system = InProcess::start(|_| {}).await;
    let id_for = async |sent: Option<&str>| {
        let mut request = system.http.get(format!("http://{}/healthz", system.vote));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let response = request.send().await.unwrap();
        response.headers()["x-request-id"].to_str().unwrap().to_owned()
    };
    assert_eq!(id_for(Some("edge-7f3a.42:1")).await, "edge-7f3a.42:1", "a proxy's id is kept");
    for unsafe_id in ["x".repeat(8 * 1024), "a b".into(), "<script>".into(), "a\tb".into()] {
        let id = id_for(Some(&unsafe_id)).await;
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{unsafe_id:?} became {id}");
    }
    let made: Vec<u64> = futures_util::future::join_all((0..5).map(|_| id_for(None)))
        .await
        .iter()
        .map(|id| u64::from_str_radix(id, 16).unwrap())
        .collect();
    let mut sorted = made.clone();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[1] - w[0] > 1_000_000), "ids look sequential: {made:x?}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_not_ready_without_the_reason_and_logs_the_reason() {
    let redis_port = voting_testkit::free_port(); // nothing listens there
    let vote_port = voting_testkit::free_port();
    let process = voting_testkit::Process::spawn(
        env!("CARGO_BIN_EXE_voting"),
        &["vote", "--addr", &format!("127.0.0.1:{vote_port}")],
        &[("REDIS_URL", &format!("redis://127.0.0.1:{redis_port}")), ("COOKIE_SECRET", &"5e".repeat(32))],
    )
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{vote_port}/readyz");
    let mut body = String::new();
    let answered = eventually(Duration::from_secs(20), async || match http.get(&url).send().await {
        Ok(response) if response.status() == 503 => {
            body = response.text().await.unwrap();
            true
        }
        _ => false,
    })
    .await;
    assert!(answered, "/readyz answers 503: {}", process.log());
    assert_eq!(body, "not ready\n");
    let logged = voting_testkit::wait_until(Duration::from_secs(5), || process.log().contains("not ready"));
    assert!(logged && process.log().contains("reason"), "the reason is logged: {}", process.log());
}

async fn panicking() -> &'static str {
    panic!("a bug in one handler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_request_is_a_500_and_the_service_keeps_serving() {
    let router = Router::new().route("/panic", get(panicking)).route("/fine", get(|| async { "fine" }));
    let server = Server::bind(ANY_PORT, router, ConnectionLimits::default()).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{url}/panic")).send().await.unwrap().status(), 500);
    assert_eq!(http.get(format!("{url}/fine")).send().await.unwrap().text().await.unwrap(), "fine");
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_are_matched_case_insensitively() {
    let system = InProcess::start(|_| {}).await;
    let response = system
        .http
        .post(format!("http://{}/", system.vote))
        .header("content-type", "APPLICATION/X-WWW-FORM-URLENCODED; Charset=UTF-8")
        .body("vote=c")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    system.wait_for_total(1).await;
    system.stop().await;
}
