//! `voting up`, the binary, with few descriptors, under a flood of partial requests: it must
//! come out of it serving, with its descriptors and CPU back where they were.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use voting::http::connection::HEAD_TIMEOUT;

use crate::{UpBinary, close_wait_sockets, cpu_ticks, descriptors, eventually, rss_kib};

/// The open-file limit of the instance under attack: the review's reproduction used 160.
const NOFILE: &str = "160";
/// Connect, send a request prefix, close: this many, spread over both ports.
const FLOOD: usize = 10_000;
/// Connections that send a prefix and stay, more than the descriptor limit allows.
const HELD: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fd_limited_instance_keeps_serving_after_a_partial_request_flood() {
    let limit = format!("--nofile={NOFILE}");
    let up = UpBinary::start(&["prlimit", &limit, "--"], &[], &[]);
    assert!(up.ready().await, "voting up starts with {NOFILE} descriptors: {}", up.process.log());
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().unwrap();
    let pid = up.pid();
    let idle_fds = descriptors(pid);

    let started = Instant::now();
    let prefixes: [&[u8]; 4] = [b"G", b"GET /e", b"GET /ev", b"POST / HTTP/1.1\r\nHost: x\r\n"];
    let mut flood = tokio::task::JoinSet::new();
    for worker in 0..50 {
        let targets = [up.vote, up.result];
        flood.spawn(async move {
            for n in (worker..FLOOD).step_by(50) {
                if let Ok(mut stream) = TcpStream::connect(targets[n % 2]).await {
                    let _ = stream.write_all(prefixes[n % prefixes.len()]).await;
                }
            }
        });
    }
    // Meanwhile, connections that stay: the cap refuses those beyond it instead of running
    // out of descriptors.
    let mut held = Vec::new();
    for n in 0..HELD {
        if let Ok(mut stream) = TcpStream::connect([up.vote, up.result][n % 2]).await {
            let _ = stream.write_all(b"GET /ev").await;
            held.push(stream);
        }
    }
    flood.join_all().await;
    let flood_took = started.elapsed();
    let peak_rss = rss_kib(pid);
    drop(held);

    // Back to serving within the head deadline, with nothing left behind.
    let recovered = eventually(HEAD_TIMEOUT, async || {
        ok(&http, up.vote, "/readyz").await
            && ok(&http, up.result, "/readyz").await
            && close_wait_sockets(up.vote.port()) + close_wait_sockets(up.result.port()) == 0
            && descriptors(pid) <= idle_fds + 2
    })
    .await;
    assert!(
        recovered,
        "after the flood: {} descriptors (idle: {idle_fds}), {} sockets in CLOSE-WAIT; log: {}",
        descriptors(pid),
        close_wait_sockets(up.vote.port()) + close_wait_sockets(up.result.port()),
        up.process.log()
    );
    let vote = http
        .post(format!("http://{}/api/vote", up.vote))
        .json(&serde_json::json!({"vote": "a"}))
        .send()
        .await;
    assert_eq!(vote.map(|r| r.status().as_u16()).ok(), Some(202), "a vote is accepted after the flood");

    // Idle again: no task left spinning (the leak this guards against woke every 5 ms).
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = cpu_ticks(pid) - before;
    assert!(idle_cpu <= 10, "{idle_cpu} ticks of CPU in 2 s of idling after the flood");
    assert!(!up.process.log().contains("Too many open files"), "descriptors ran out: {}", up.process.log());
    println!(
        "flood of {FLOOD} partial requests and {HELD} held connections with {NOFILE} descriptors: \
         {flood_took:?}; peak RSS {peak_rss} KiB; after: {} descriptors (idle {idle_fds}), \
         {idle_cpu} CPU ticks in 2 s idle",
        descriptors(pid)
    );
}

async fn ok(http: &reqwest::Client, addr: SocketAddr, path: &str) -> bool {
    http.get(format!("http://{addr}{path}")).send().await.is_ok_and(|r| r.status() == 200)
}
