//! No input keeps a connection, or the task serving it, alive past its deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use voting::http::connection::{ConnectionLimits, HEAD_TIMEOUT, MAX_HEAD_BYTES};

use crate::{
    InProcess, alive_tasks, close_wait_sockets, closed_by_server_within, connect_from, eventually,
    raw_request,
};

const EVENTS_REQUEST: &[u8] = b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";
const PAGE_REQUEST: &[u8] = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 6\r\n\r\nvote=a";

/// Slack on top of a deadline for the server to act and the test to see it.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_requests_of_every_prefix_length_then_close_leave_no_socket_or_task_behind() {
    let system = InProcess::start(|_| {}).await;
    let idle_tasks = alive_tasks();
    let mut attempts = 0;
    for (port, request) in
        [(system.result, EVENTS_REQUEST), (system.vote, PAGE_REQUEST), (system.result, PAGE_REQUEST)]
    {
        for len in 1..request.len() {
            for _ in 0..3 {
                let mut stream = TcpStream::connect(port).await.unwrap();
                stream.write_all(&request[..len]).await.unwrap();
                drop(stream);
                attempts += 1;
            }
        }
    }
    // Peer close ends every connection at once, well before any head deadline.
    let released = eventually(HEAD_TIMEOUT / 2, async || {
        close_wait_sockets(system.vote.port()) + close_wait_sockets(system.result.port()) == 0
            && alive_tasks() <= idle_tasks
    })
    .await;
    assert!(
        released,
        "after {attempts} partial requests: {} + {} sockets in CLOSE-WAIT, {} tasks alive (idle: {idle_tasks})",
        close_wait_sockets(system.vote.port()),
        close_wait_sockets(system.result.port()),
        alive_tasks()
    );
    assert_eq!(system.status(system.result, "/readyz").await, 200);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_silent_and_idle_connections_are_closed_at_the_head_deadline() {
    let system = InProcess::start(|_| {}).await;
    let idle_tasks = alive_tasks();
    let started = Instant::now();
    let mut watched = Vec::new();
    for addr in [system.vote, system.result] {
        // Never sends a byte.
        watched.push(("silent", TcpStream::connect(addr).await.unwrap()));
        // Half a request line, then nothing.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /ev").await.unwrap();
        watched.push(("partial", partial));
        // One complete request, then idle on keep-alive.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        watched.push(("keep-alive", idle));
    }
    // A head trickled one header line every two seconds: progress does not extend the deadline.
    let trickled = [system.vote, system.result].map(|addr| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let opened = Instant::now();
            let mut lines = vec![b"GET / HTTP/1.1\r\n".to_vec()];
            lines.extend((0..20).map(|i| format!("x-slow-{i}: 1\r\n").into_bytes()));
            for line in lines {
                if stream.write_all(&line).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            (closed_by_server_within(&mut stream, SLACK).await, opened.elapsed())
        })
    });
    for (what, mut stream) in watched {
        assert!(
            closed_by_server_within(&mut stream, HEAD_TIMEOUT + SLACK).await,
            "{what} connection stays open"
        );
        assert!(
            started.elapsed() >= HEAD_TIMEOUT - Duration::from_secs(1),
            "{what} closed before its deadline"
        );
    }
    for trickle in trickled {
        let (closed, after) = trickle.await.unwrap();
        assert!(closed && after <= HEAD_TIMEOUT + SLACK, "a trickled head kept its connection for {after:?}");
    }
    assert!(eventually(SLACK, async || alive_tasks() <= idle_tasks).await, "{} tasks alive", alive_tasks());
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_64_kib_is_refused_with_431_and_one_under_it_is_served() {
    let system = InProcess::start(|_| {}).await;
    let head = |size: usize| {
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "x".repeat(size))
    };
    for addr in [system.vote, system.result] {
        let over = raw_request(addr, head(MAX_HEAD_BYTES + 1024).as_bytes()).await;
        assert!(over.starts_with("HTTP/1.1 431"), "over-size head answered: {}", &over[..over.len().min(80)]);
        let under = raw_request(addr, head(MAX_HEAD_BYTES / 2).as_bytes()).await;
        assert!(
            under.starts_with("HTTP/1.1 200"),
            "head under the limit answered: {}",
            &under[..under.len().min(80)]
        );
    }
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_too_slowly_gets_408_not_503() {
    let system = InProcess::start(|_| {}).await;
    let mut stream = TcpStream::connect(system.vote).await.unwrap();
    stream
        .write_all(b"POST /api/vote HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"vo")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(HEAD_TIMEOUT, tokio::io::AsyncReadExt::read_buf(&mut stream, &mut response))
            .await;
    let response = String::from_utf8_lossy(&response);
    assert!(read.is_ok() && response.starts_with("HTTP/1.1 408"), "a stalled body answered: {response}");
    assert_eq!(system.total().await, 0);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_client_address_and_per_process() {
    // Only 127.0.0.1 is a trusted proxy here, so 127.0.0.2 and 127.0.0.3 are two clients.
    let limits = ConnectionLimits::new(Some(40), 10, "127.0.0.1/32".parse().unwrap());
    let system = InProcess::start(|config| config.set_connections(limits.clone())).await;
    let (one, other): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());

    let held = hold(one, system.vote, 10).await;
    let mut over = connect_from(one, system.vote).await.unwrap();
    assert!(
        closed_by_server_within(&mut over, Duration::from_secs(2)).await,
        "an 11th connection from one client is closed"
    );
    assert!(served_from(other, system.vote).await, "another client is still served");

    // The process cap: 10 + 30 from trusted 127.0.0.1 fill it; the next from anyone is closed.
    let more = hold("127.0.0.1".parse().unwrap(), system.result, 30).await;
    assert!(eventually(Duration::from_secs(2), async || limits.open() == 40).await, "{} open", limits.open());
    let mut over = connect_from(other, system.result).await.unwrap();
    assert!(
        closed_by_server_within(&mut over, Duration::from_secs(2)).await,
        "a connection over the process cap is closed"
    );

    drop((held, more));
    assert!(
        eventually(Duration::from_secs(5), async || limits.open() == 0).await,
        "{} still open",
        limits.open()
    );
    assert!(served_from(one, system.vote).await, "served again once its connections closed");
    system.stop().await;
}

/// `n` connections from `from` that the server accepted and keeps (each sent half a head).
async fn hold(from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = connect_from(from, to).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    for stream in &mut held {
        assert!(
            !closed_by_server_within(stream, Duration::from_millis(100)).await,
            "a connection within the cap was closed"
        );
    }
    held
}

async fn served_from(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut stream) = connect_from(from, to).await else { return false };
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response),
    )
    .await;
    response.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_client_that_stops_reading_is_dropped_at_the_write_deadline() {
    // Many long labels make every event a few KB, so the socket buffers fill in seconds.
    let options: Vec<String> =
        (0..40).map(|i| format!("o{i}=Option number {i} {}", "with a long label ".repeat(4))).collect();
    let ballot = voting_core::Ballot::parse(&options.join(",")).unwrap();
    let limits = ConnectionLimits::default();
    let system = InProcess::start(|config| {
        config.set_ballot(ballot);
        config.set_connections(limits.clone());
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stalled = socket.connect(system.result).await.unwrap();
    stalled.write_all(EVENTS_REQUEST).await.unwrap();
    assert!(eventually(Duration::from_secs(2), async || limits.open() == 1).await);

    // Votes change the tallies, and every change is an event the stalled client never reads.
    // Each vote on a connection of its own, closed after the answer: the count of open
    // connections is then the stalled stream alone.
    let voter = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let dropped = eventually(Duration::from_secs(40), async || {
        let vote = format!("{{\"vote\":\"o{}\"}}", started.elapsed().as_millis() % 40);
        let url = format!("http://{}/api/vote", system.vote);
        let _ = voter.post(url).header("content-type", "application/json").body(vote).send().await;
        eventually(Duration::from_millis(200), async || limits.open() == 0).await
    })
    .await;
    assert!(dropped, "the stalled event stream is still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= voting::http::connection::WRITE_TIMEOUT, "dropped before its deadline");
    drop(stalled);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_fails_its_health_check_and_closes_each_connection_before_it_stops() {
    use axum::Router;
    use axum::routing::get;
    use tokio_util::sync::CancellationToken;
    use voting::http::{Server, health_routes};

    let drain = Duration::from_secs(2);
    let router =
        Router::new().route("/", get(|| async { "served" })).merge(health_routes(|| async { Ok(()) }));
    let server =
        Server::bind(crate::ANY_PORT, router, ConnectionLimits::default().draining_for(drain)).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let healthy = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    assert!(healthy.headers().get("connection").is_none(), "kept alive while serving");

    shutdown.cancel();
    let signalled = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), async || {
            http.get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status() == 503)
        })
        .await,
        "/healthz says 503 once the drain begins"
    );
    let served = http.get(format!("{url}/")).send().await.expect("still served while draining");
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers().get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    assert_eq!(served.text().await.unwrap(), "served");

    tokio::time::timeout(drain + SLACK, serving).await.expect("stops after the drain").unwrap().unwrap();
    assert!(
        signalled.elapsed() >= drain,
        "stopped {:?} after the signal, before the drain ended",
        signalled.elapsed()
    );
    assert!(TcpStream::connect(url.trim_start_matches("http://")).await.is_err(), "no longer accepting");
}
