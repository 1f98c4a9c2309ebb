//! `/events` served straight off the socket, for connections whose first request asks for it.
//!
//! An event stream is a long-lived, write-only connection: after one request line it only
//! ever receives "the tallies changed". Through hyper and the middleware stack each one held
//! ~32 KB (hyper's per-connection read and write buffers alone are 16 KB), which put 10,000
//! streams at ~330 MB. Here a stream is a socket, a `watch` receiver and a timer: a few
//! hundred bytes. Every other connection, including a proxy's reused keep-alive connection
//! that asks for `/events` later, goes to axum, whose `/events` route stays the fallback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::feed::Feed;

/// What a connection must start with to be served here.
const REQUEST: &[u8] = b"GET /events";
/// Longest request head accepted before the stream starts.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: text/event-stream\r\n\
cache-control: no-cache\r\n\
x-content-type-options: nosniff\r\n\
referrer-policy: no-referrer\r\n\
x-frame-options: DENY\r\n\
connection: close\r\n\r\n";

/// Accepts connections, serves event streams itself, and hands every other connection to
/// axum through the returned [`Handoff`].
pub fn split(
    listener: TcpListener,
    feed: Feed,
    keep_alive: Duration,
    shutdown: CancellationToken,
) -> Handoff {
    let local_addr = listener.local_addr();
    let (handoff, accepted) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (handoff, feed, shutdown) = (handoff.clone(), feed.clone(), shutdown.clone());
            tokio::spawn(async move {
                if asks_for_events(&stream).await {
                    serve(stream, feed, keep_alive, shutdown).await;
                } else {
                    let _ = handoff.send((stream, peer)).await;
                }
            });
        }
    });
    Handoff { accepted, local_addr }
}

/// Whether the request line starts with `GET /events` (then ` ` or `?`), by peeking, so a
/// connection handed to axum still has its request unread.
async fn asks_for_events(stream: &TcpStream) -> bool {
    let mut start = [0u8; REQUEST.len() + 1];
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        let Ok(Ok(())) = tokio::time::timeout_at(deadline, stream.readable()).await else { return false };
        match stream.peek(&mut start).await {
            Ok(n) if n == start.len() => {
                return start.starts_with(REQUEST) && matches!(start[REQUEST.len()], b' ' | b'?');
            }
            // Only part of the line so far: wait for more if it could still be ours.
            Ok(n) if n > 0 && REQUEST.starts_with(&start[..n.min(REQUEST.len())]) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => return false,
        }
    }
}

/// Reads the request head, sends the response head, then the current tallies and every
/// change, with a comment line as keep-alive, until the client leaves or shutdown.
async fn serve(mut stream: TcpStream, feed: Feed, keep_alive: Duration, shutdown: CancellationToken) {
    if !read_head(&mut stream).await || stream.write_all(RESPONSE_HEAD).await.is_err() {
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
    stream: &mut TcpStream,
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

/// Consumes the request head (up to the blank line); false if it is too long, too slow or
/// the client went away.
async fn read_head(stream: &mut TcpStream) -> bool {
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
    matches!(tokio::time::timeout(HEAD_TIMEOUT, read).await, Ok(Some(())))
}

/// The connections that are not event streams, for axum.
#[derive(Debug)]
pub struct Handoff {
    accepted: mpsc::Receiver<(TcpStream, SocketAddr)>,
    local_addr: std::io::Result<SocketAddr>,
}

impl axum::serve::Listener for Handoff {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
