//! Connections, from `accept` to close, with the limits that keep one client from exhausting
//! a service: a cap on open connections per process and per client address, a deadline for
//! a request head (which also closes idle keep-alive connections), a bound on its size, and
//! a deadline for every write a client stopped reading.
//!
//! `axum::serve` sets none of these (it installs no timer, so hyper's head timeout is off), so
//! connections are served here with hyper directly.
//!
//! Stopping takes two steps when a drain is set: first the process keeps serving while its
//! `/healthz` says 503 and every response closes its connection, so a load balancer that
//! finds backends by polling (Traefik's Swarm provider, its health checks) stops sending new
//! requests and keeps no idle connection the server is about to close; then it stops
//! accepting and lets the requests in hand finish. Without the first step a request written
//! onto a pooled connection just as the server closes it fails with the vote in doubt.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::client::{Cidrs, ClientKey};

/// How long a client has to send a complete request head, counted from when the connection
/// opens or its previous response ends: so it is also how long an idle keep-alive connection
/// stays open. Proxies in front must drop idle connections sooner (Traefik: 5 s).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted; beyond it, 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long one write may wait for a client that does not read before the connection is
/// dropped: a stalled reader otherwise holds its connection, and a response or event stream
/// in memory, forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most headers in a request.
const MAX_HEADERS: usize = 64;

/// Descriptors kept for everything but client connections (database files, upstream
/// connections, listeners) when the connection cap comes from the open-file limit.
const RESERVED_DESCRIPTORS: (u64, u64) = (64, 1024);

/// How many connections a process holds open, in all, and per client address. One per
/// process, shared by every listener in it (`voting up` runs two), since they share the
/// open-file limit.
#[derive(Debug, Clone)]
pub struct ConnectionLimits(Arc<Limits>);

#[derive(Debug)]
struct Limits {
    max_open: usize,
    max_per_client: usize,
    /// Their connections carry many clients: counted in the total, never per address.
    trusted_proxies: Cidrs,
    open: AtomicUsize,
    per_client: Mutex<HashMap<ClientKey, usize>>,
    /// How long to keep serving, unhealthy, after the shutdown signal.
    drain: Duration,
}

impl ConnectionLimits {
    /// `max_open`: `None` derives it from the open-file limit, raised to its hard limit first.
    pub fn new(max_open: Option<usize>, max_per_client: usize, trusted_proxies: Cidrs) -> Self {
        let max_open = max_open.unwrap_or_else(connections_the_file_limit_allows).max(1);
        Self(Arc::new(Limits {
            max_open,
            max_per_client: max_per_client.max(1),
            trusted_proxies,
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
            drain: Duration::ZERO,
        }))
    }

    /// These limits, with `drain` of serving unhealthy between the shutdown signal and the
    /// end of accepting (see the module's documentation). Zero, the default, stops at once.
    pub fn draining_for(mut self, drain: Duration) -> Self {
        Arc::get_mut(&mut self.0).expect("the drain is set before the limits are shared").drain = drain;
        self
    }

    pub fn trusted_proxies(&self) -> &Cidrs {
        &self.0.trusted_proxies
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// A place for a new connection from `peer`, or `None` if the process or that client is at
    /// its cap. The place is given back when the [`Admission`] drops.
    fn admit(&self, peer: IpAddr) -> Option<Admission> {
        let limits = &self.0;
        limits
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < limits.max_open).then_some(open + 1)
            })
            .ok()?;
        let mut admission = Admission { limits: self.0.clone(), client: None };
        if !limits.trusted_proxies.contains(peer) {
            let key = ClientKey::from(peer);
            let mut per_client = limits.per_client.lock().expect("never poisoned");
            let count = per_client.entry(key).or_insert(0);
            if *count >= limits.max_per_client {
                return None;
            }
            *count += 1;
            admission.client = Some(key);
        }
        Some(admission)
    }
}

impl Default for ConnectionLimits {
    /// The defaults of the command line: the cap from the file limit, 256 per client,
    /// loopback trusted.
    fn default() -> Self {
        Self::new(None, 256, Cidrs::loopback())
    }
}

/// Raises the soft open-file limit to the hard one and leaves room for the process's own
/// descriptors: the cap that keeps a connection flood from taking the descriptors a
/// database file or an upstream connection needs ("Too many open files" in `accept` and
/// everywhere else).
fn connections_the_file_limit_allows() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024);
    let (least, most) = RESERVED_DESCRIPTORS;
    let reserved = (limit / 8).clamp(least, most);
    usize::try_from(limit.saturating_sub(reserved).max(16)).unwrap_or(usize::MAX)
}

/// One connection's place under [`ConnectionLimits`].
#[derive(Debug)]
struct Admission {
    limits: Arc<Limits>,
    client: Option<ClientKey>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut per_client = self.limits.per_client.lock().expect("never poisoned");
            if let Entry::Occupied(mut count) = per_client.entry(key) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection: the socket, bytes already read from it that are to be read again
/// (a service that looks at the start of a request before choosing how to serve it puts them
/// back), and the [`WRITE_TIMEOUT`] on writes.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    unread: Box<[u8]>,
    unread_from: usize,
    /// Runs while a write waits for the client; `None` while writes go through.
    write_stalled: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    fn new(stream: TcpStream) -> Self {
        Self { stream, unread: Box::default(), unread_from: 0, write_stalled: None }
    }

    /// Caps the kernel's send buffer of this connection (which otherwise grows to several MB
    /// for a client that reads slowly), so a stalled reader pins at most this much of the
    /// kernel's memory and is noticed by [`WRITE_TIMEOUT`] once it is full.
    pub fn cap_send_buffer(&self, bytes: usize) -> io::Result<()> {
        socket2::SockRef::from(&self.stream).set_send_buffer_size(bytes)
    }

    /// Puts `bytes`, read from this connection, back in front of what is still to be read.
    pub fn unread(&mut self, bytes: &[u8]) {
        let mut unread = bytes.to_vec();
        unread.extend_from_slice(&self.unread[self.unread_from..]);
        self.unread = unread.into_boxed_slice();
        self.unread_from = 0;
    }

    /// Counts a write that cannot go on: `Pending` until [`WRITE_TIMEOUT`] passes, then an error.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = self.write_stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))
    }

    fn written<T>(&mut self, result: io::Result<T>) -> Poll<io::Result<T>> {
        self.write_stalled = None;
        Poll::Ready(result)
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unread_from < this.unread.len() {
            let n = buf.remaining().min(this.unread.len() - this.unread_from);
            buf.put_slice(&this.unread[this.unread_from..this.unread_from + n]);
            this.unread_from += n;
            if this.unread_from == this.unread.len() {
                this.unread = Box::default();
                this.unread_from = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(result) => self.written(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => self.written(result),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A service's own handling of some connections before HTTP: given a new connection, serves
/// it entirely and returns `None`, or returns it (with what it read put back) for HTTP. The
/// result service answers event streams this way.
pub type Divert = Arc<
    dyn Fn(Connection, CancellationToken) -> Pin<Box<dyn Future<Output = Option<Connection>> + Send>>
        + Send
        + Sync,
>;

/// Set once a draining process got its shutdown signal: `/healthz` answers 503 and every
/// response closes its connection. Handlers find it among the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The token that ends accepting: `shutdown` itself without a drain; otherwise one cancelled
/// `drain` after it, with `draining` set in between, by a task of `tasks`.
fn stop_after_drain(
    shutdown: &CancellationToken,
    drain: Duration,
    draining: &Draining,
    tasks: &TaskTracker,
) -> CancellationToken {
    if drain.is_zero() {
        return shutdown.clone();
    }
    let stop = CancellationToken::new();
    let (signalled, stop_later, draining) = (shutdown.clone(), stop.clone(), draining.clone());
    tasks.spawn(async move {
        signalled.cancelled().await;
        draining.0.store(true, Ordering::Relaxed);
        tracing::info!(
            drain_ms = drain.as_millis() as u64,
            "draining before the stop: unhealthy, one request per connection"
        );
        tokio::time::sleep(drain).await;
        stop_later.cancel();
    });
    stop
}

/// Accepts connections until `shutdown` (and the drain after it), then lets every open one finish its request (event
/// streams end on `shutdown` by themselves) and returns once all are closed.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    divert: Option<Divert>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let draining = Draining::default();
    // The connections and the drain's timer: all of them have ended when this returns.
    let connections = TaskTracker::new();
    let shutdown = stop_after_drain(&shutdown, limits.0.drain, &draining, &connections);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let Some(admission) = limits.admit(peer.ip()) else {
            // Closed at once: a client over its cap gets a reset, not a queue.
            tracing::debug!(client = %ClientKey::from(peer.ip()), "connection refused: at the connection cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, divert, shutdown, draining) =
            (router.clone(), divert.clone(), shutdown.clone(), draining.clone());
        connections.spawn(async move {
            let _admission = admission;
            let mut connection = Connection::new(stream);
            if let Some(divert) = divert {
                match divert(connection, shutdown.clone()).await {
                    Some(returned) => connection = returned,
                    None => return,
                }
            }
            serve_http(connection, peer, router, draining, shutdown).await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// HTTP/1.1 on one connection (browsers speak HTTP/1.1 to a cleartext port, and so does Traefik
/// to its backends), until the client leaves or, after `shutdown`, the request in hand ends.
async fn serve_http(
    connection: Connection,
    peer: SocketAddr,
    router: Router,
    draining: Draining,
    shutdown: CancellationToken,
) {
    let closing = draining.clone();
    let service = router
        .map_request(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(draining.clone());
            request
        })
        .map_response(move |mut response: axum::response::Response| {
            if closing.is_draining() {
                // hyper closes the connection after this response; the client knows not to
                // reuse it.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(connection), TowerToHyperService::new(service));
    tokio::pin!(http);
    let served = tokio::select! {
        served = http.as_mut() => served,
        () = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            http.await
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests: the client's doing, worth a debug line only.
        tracing::debug!(error = %e, "connection ended");
    }
}
