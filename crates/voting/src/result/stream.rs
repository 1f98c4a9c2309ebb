//! `/events` served straight off the socket, for connections whose first request asks for it.
//!
//! An event stream is a long-lived, write-only connection: after one request line it only
//! ever receives "the tallies changed". Through hyper and the middleware stack each one held
//! ~32 KB (hyper's per-connection read and write buffers alone are 16 KB), which put 10,000
//! streams at ~330 MB. Here a stream is a socket, a `watch` receiver and a timer: a few
//! hundred bytes. Every other connection, including a proxy's reused keep-alive connection
//! that asks for `/events` later, goes to axum, whose `/events` route stays the fallback.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::Feed;
use crate::http::SECURITY_HEADERS;
use crate::http::connection::{Connection, Divert, HEAD_TIMEOUT};

/// What a connection must start with to be served here.
const REQUEST: &[u8] = b"GET /events";
/// Longest request head accepted before the stream starts.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Kernel send buffer of a stream (Linux doubles it). An event is a few hundred bytes, so
/// this holds dozens a client has not read yet; left alone, the kernel grows it to 4 MB for a
/// client that stops reading, which 1,000 such clients turn into 4 GB of kernel memory.
const SEND_BUFFER_BYTES: usize = 32 * 1024;

/// The response head: the stream's own headers, then the same hardening headers as every
/// other response.
fn response_head() -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
connection: close\r\n"
        .to_vec();
    for (name, value) in SECURITY_HEADERS {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Serves connections whose first request asks for `/events` here; every other connection
/// goes on to HTTP with its bytes put back.
pub fn divert(feed: Feed, keep_alive: Duration) -> Divert {
    let head: Arc<[u8]> = response_head().into();
    Arc::new(move |mut connection: Connection, shutdown: CancellationToken| {
        let (feed, head) = (feed.clone(), head.clone());
        Box::pin(async move {
            // One deadline for the whole head: a client cannot stretch it by trickling bytes.
            let deadline = Instant::now() + HEAD_TIMEOUT;
            match asks_for_events(&mut connection, deadline).await {
                Start::Events => {
                    serve(connection, feed, &head, keep_alive, deadline, shutdown).await;
                    None
                }
                Start::Other => Some(connection),
                Start::Gone => None,
            }
        })
    })
}

/// How a connection starts.
enum Start {
    Events,
    /// Something else, put back for HTTP to read.
    Other,
    /// Closed, broken or silent past the deadline before saying.
    Gone,
}

/// Whether the request line starts with `GET /events` (then ` ` or `?`). Reads only as far as
/// needed to tell, and puts what it read back.
async fn asks_for_events(connection: &mut Connection, deadline: Instant) -> Start {
    let mut start = [0u8; REQUEST.len() + 1];
    let mut filled = 0;
    while filled < start.len() {
        match tokio::time::timeout_at(deadline, connection.read(&mut start[filled..])).await {
            Ok(Ok(n)) if n > 0 => filled += n,
            // Closed by the client, a socket error, or the deadline.
            _ => return Start::Gone,
        }
        if !REQUEST.starts_with(&start[..filled.min(REQUEST.len())]) {
            break;
        }
    }
    connection.unread(&start[..filled]);
    if filled == start.len() && start.starts_with(REQUEST) && matches!(start[REQUEST.len()], b' ' | b'?') {
        Start::Events
    } else {
        Start::Other
    }
}

/// Reads the request head, sends the response head, then the current tallies and every
/// change, with a comment line as keep-alive, until the client leaves, stops reading for
/// longer than the write timeout ([`Connection`]), or shutdown.
async fn serve(
    mut stream: Connection,
    feed: Feed,
    response_head: &[u8],
    keep_alive: Duration,
    deadline: Instant,
    shutdown: CancellationToken,
) {
    if !read_head(&mut stream, deadline).await {
        return;
    }
    if let Err(e) = stream.cap_send_buffer(SEND_BUFFER_BYTES) {
        tracing::debug!(error = %e, "cannot cap an event stream's send buffer");
    }
    if stream.write_all(response_head).await.is_err() {
        return;
    }
    let started = std::time::Instant::now();
    let events = stream_events(&mut stream, feed, keep_alive, shutdown).await;
    // The one line per request that the middleware writes for everything else.
    tracing::info!(
        http.method = "GET",
        http.path = "/events",
        duration_ms = started.elapsed().as_millis() as u64,
        events,
        "event stream closed"
    );
}

/// Sends events until the client leaves or shutdown; returns how many were sent.
async fn stream_events(
    stream: &mut Connection,
    feed: Feed,
    keep_alive: Duration,
    shutdown: CancellationToken,
) -> u64 {
    let mut sent = 0;
    let mut latest = feed.subscribe();
    let mut tick = tokio::time::interval(keep_alive);
    tick.reset();
    let mut probe = [0u8; 1];
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return sent,
            changed = latest.changed() => {
                if changed.is_err() {
                    return sent;
                }
                sent += 1;
                let snapshot = latest.borrow_and_update().clone();
                format!("data: {}\n\n", snapshot.json)
            }
            _ = tick.tick() => ":\n\n".to_owned(),
            // The client sends nothing after its request: a read returning is it leaving.
            _ = stream.read(&mut probe) => return sent,
        };
        if stream.write_all(message.as_bytes()).await.is_err() {
            return sent;
        }
    }
}

/// Consumes the request head (up to the blank line); false if it is too long, not complete by
/// `deadline`, or the client went away.
async fn read_head(stream: &mut Connection, deadline: Instant) -> bool {
    let mut head = Vec::with_capacity(512);
    let read = async {
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&chunk[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if head.len() > MAX_HEAD_BYTES {
                return None;
            }
        }
    };
    matches!(tokio::time::timeout_at(deadline, read).await, Ok(Some(())))
}
