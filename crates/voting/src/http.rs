//! What every HTTP service here shares: binding, the middleware stack, health endpoints,
//! static assets, and serving until shutdown.

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
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// Largest request body accepted; a vote is a few bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a request may take before it is answered 503. Does not cover SSE bodies, only
/// the time to the response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A bound, not yet serving, HTTP service: `build` binds (so tests can ask for port 0 and
/// read the port), `run` serves until the shutdown token fires and in-flight requests end.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
}

impl Server {
    pub async fn bind(addr: SocketAddr, router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, router: with_middleware(router) })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown.cancelled_owned()).await
    }

    /// Serves the connections that `divert` passes on from the bound socket, for a service
    /// that answers some connections itself (the result service's event streams).
    pub async fn run_diverted<L>(
        self,
        divert: impl FnOnce(TcpListener) -> L,
        shutdown: CancellationToken,
    ) -> io::Result<()>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        axum::serve(divert(self.listener), self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
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
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, SequentialRequestId::new()))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(trace)
        .layer(CatchPanicLayer::new())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    router.layer(stack)
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

/// Request ids `<process>-<sequence>`: unique across replicas (a random process prefix) and
/// cheap. A UUID per request cost a `getrandom` system call each, visible in the vote
/// service's profile at full load.
#[derive(Debug, Clone)]
struct SequentialRequestId {
    process: u32,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> Self {
        Self { process: rand::random(), next: Default::default() }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n:x}", self.process)).ok().map(RequestId::new)
    }
}

/// `/healthz` (the process is alive) and `/readyz` (its dependencies answer), the latter
/// backed by `ready`, which names the first dependency that does not.
pub fn health_routes<F, Fut>(ready: F) -> Router
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = ready.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(2), ready()).await {
                    Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                    Ok(Err(why)) => not_ready(why),
                    Err(_) => not_ready("dependency check timed out".into()),
                }
            }
        }),
    )
}

fn not_ready(why: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("not ready: {why}\n"))
        .into_response()
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
