//! What every HTTP service here shares: binding, serving connections within their limits
//! ([`connection`]), knowing who a request comes from ([`client`]), the middleware stack,
//! health endpoints, and serving until shutdown.

pub mod client;
pub mod connection;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use self::connection::{ConnectionLimits, Divert, Draining};

/// Largest request body accepted; a vote is a few bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a request may take before it is answered 503. Does not cover SSE bodies, only
/// the time to the response head. Longer than [`BODY_TIMEOUT`], so a slow body gets its 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive once its head has: a vote is a few bytes, and a
/// 16 KiB body at this pace is still 3 KiB/s. Slower gets 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Hardening headers of every response, the hand-written event streams' included.
pub const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    // Not `no-referrer`: under it browsers send `Origin: null` with the page's own form posts,
    // which the vote service must refuse as it refuses other sites' posts. `same-origin` still
    // tells other sites nothing.
    (header::REFERRER_POLICY, "same-origin"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A bound, not yet serving, HTTP service: `build` binds (so tests can ask for port 0 and
/// read the port), `run` serves, each connection within `limits`, until the shutdown token
/// fires and in-flight requests end.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
}

impl Server {
    pub async fn bind(addr: SocketAddr, router: Router, limits: ConnectionLimits) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self { listener, local_addr, router: with_middleware(router), limits })
    }

    /// The address bound, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        connection::serve(self.listener, self.router, self.limits, None, shutdown).await
    }

    /// Like [`Server::run`], but every new connection goes through `divert` first, for a
    /// service that answers some connections itself (the result service's event streams).
    pub async fn run_diverted(self, divert: Divert, shutdown: CancellationToken) -> io::Result<()> {
        connection::serve(self.listener, self.router, self.limits, Some(divert), shutdown).await
    }
}

/// The layers every service has, outermost first: a request id, one log line per request,
/// panics turned into 500s, a timeout, the body limit and hardening headers. Compression is
/// not among them: see [`compressed`].
fn with_middleware(router: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            let id = request.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            // The path only: query strings may carry anything.
            tracing::info_span!("http", http.method = %request.method(), http.path = request.uri().path(), request.id = id)
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(tower_http::LatencyUnit::Micros));
    // One stack applied once: each separate `Router::layer` wraps every route again, and a
    // request then pays a boxed-service clone per layer (visible in the vote profile).
    let stack = tower::ServiceBuilder::new()
        .map_request(drop_unsafe_request_id)
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, RandomRequestId))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(trace)
        .layer(CatchPanicLayer::new())
        .map_response(harden)
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    router.layer(stack)
}

/// Adds the [`SECURITY_HEADERS`] a handler did not set itself.
fn harden<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// Compresses the responses of these routes (pages, JSON, assets) when the client accepts it.
///
/// Kept off long-lived streams on purpose: the compression body wrapper is sized for its
/// largest encoder and is allocated for every response, compressed or not, and an idle
/// `/events` connection kept ~20 KB of it alive; at 10,000 open streams that was half the
/// result service's memory.
pub fn compressed(router: Router) -> Router {
    router.layer(CompressionLayer::new())
}

/// Random request ids, 64 bits in hex: unique enough to find a request's log line, and
/// unlike a counter they tell a client nothing about how many requests came before. The
/// thread-local generator costs no system call per request.
#[derive(Debug, Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>())).ok().map(RequestId::new)
    }
}

/// Longest `X-Request-Id` taken from a client (a proxy's id, say, to follow a request across
/// both logs).
const MAX_REQUEST_ID_LEN: usize = 64;

/// Keeps a client's `X-Request-Id` only if it is short and made of letters, digits, `-`, `_`,
/// `.` and `:`; anything else would be echoed and logged as sent, so one is made instead.
fn drop_unsafe_request_id(mut request: Request) -> Request {
    let safe = |id: &HeaderValue| {
        let id = id.as_bytes();
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID_LEN
            && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    let ids = request.headers().get_all(X_REQUEST_ID);
    let keep = ids.iter().count() == 1 && ids.iter().all(safe);
    if !keep {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

/// `/healthz` (the process is alive and not draining for a stop) and `/readyz` (its
/// dependencies answer), the latter backed by `ready`, which names the first dependency that
/// does not.
pub fn health_routes<F, Fut>(ready: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let alive = |draining: Option<axum::Extension<Draining>>| async move {
        match draining {
            Some(axum::Extension(draining)) if draining.is_draining() => {
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "draining\n").into_response()
            }
            _ => "ok\n".into_response(),
        }
    };
    Router::new().route("/healthz", get(alive)).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(2), ready()).await {
                    Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                    Ok(Err(why)) => not_ready(&why),
                    Err(_) => not_ready("dependency check timed out"),
                }
            }
        }),
    )
}

/// 503 with a generic body: what failed inside (addresses, error texts) is for the logs, not
/// for whoever asks.
fn not_ready(why: &str) -> Response {
    tracing::warn!(reason = why, "not ready");
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "not ready\n").into_response()
}

/// The host the request was made to reached over HTTPS, as a TLS-terminating proxy reports it.
pub fn came_over_https(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The name of this instance, shown in page footers so a load-balanced deployment can be seen
/// at work: `INSTANCE_NAME`, else the host name (a container's id under Docker).
pub fn instance_name(configured: Option<String>) -> String {
    configured
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
