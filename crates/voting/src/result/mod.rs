//! The result service: the live results page, `/api/results`, and `/events` (Server-Sent
//! Events). One [`feed`] per process keeps the latest tallies; every client reads from it.

pub mod args;
pub mod feed;
mod stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use voting_core::Ballot;
use voting_core::store::VoteStore;

use self::feed::{Feed, Snapshot};
use crate::http::connection::ConnectionLimits;
use crate::http::{Server, compressed, health_routes};
use crate::service::Service;

/// SSE comments keep idle connections open through proxies; below their usual 30–60 s idle
/// timeouts.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct ResultConfig {
    pub addr: SocketAddr,
    pub ballot: Ballot,
    /// Longest time between two reads of the tallies, whatever notifications say: repairs
    /// anything a lost notification missed.
    pub refresh: Duration,
    pub instance: String,
    /// Connection caps of this process; `voting up` shares one with the vote service.
    pub connections: ConnectionLimits,
}

#[derive(Debug, Clone)]
struct AppState {
    feed: Feed,
    ballot: Ballot,
    instance: String,
    /// Ends the event streams served through axum, which would otherwise hold graceful
    /// shutdown open forever.
    end_streams: CancellationToken,
}

/// The bound result service and its feed task.
#[derive(Debug)]
pub struct ResultService {
    server: Server,
    feed: Feed,
    feed_task: JoinHandle<()>,
    /// Stops the feed once the server has stopped (or this is dropped unrun): a draining
    /// server still answers with live tallies.
    feed_stop: DropGuard,
    end_streams: CancellationToken,
}

impl ResultService {
    /// Binds and starts following the store.
    pub async fn build<S: VoteStore>(config: ResultConfig, store: S) -> std::io::Result<Self> {
        let (feed, follow) = Feed::new(config.ballot.clone(), store, config.refresh);
        let feed_stop = CancellationToken::new();
        let feed_task = tokio::spawn(follow.run(feed_stop.clone()));
        let end_streams = CancellationToken::new();
        let state = AppState {
            feed: feed.clone(),
            ballot: config.ballot,
            instance: config.instance,
            end_streams: end_streams.clone(),
        };
        let ready_feed = feed.clone();
        let ready = move || {
            let feed = ready_feed.clone();
            async move { feed.ready() }
        };
        let pages = Router::new()
            .route("/", get(page))
            .route("/api/results", get(results))
            .with_state(state.clone())
            .merge(crate::assets::routes());
        let router = compressed(pages)
            .merge(Router::new().route("/events", get(events)).with_state(state))
            .merge(health_routes(ready));
        let server = Server::bind(config.addr, router, config.connections).await?;
        Ok(Self { server, feed, feed_task, feed_stop: feed_stop.drop_guard(), end_streams })
    }
}

impl Service for ResultService {
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` (open event streams end at once, so clients reconnect to
    /// another replica), then stops the feed and waits for it.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The server returns only after `shutdown`, so waiting for both ends.
        let end_streams = async {
            shutdown.cancelled().await;
            self.end_streams.cancel();
        };
        let serve = self.server.run_diverted(stream::divert(self.feed, KEEP_ALIVE), shutdown.clone());
        let (served, ()) = tokio::join!(serve, end_streams);
        drop(self.feed_stop);
        if let Err(e) = self.feed_task.await {
            tracing::error!(error = %e, "result feed task failed");
        }
        Ok(served?)
    }
}

async fn results(State(state): State<AppState>) -> Response {
    let snapshot = state.feed.latest();
    (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")],
        snapshot.json.to_string(),
    )
        .into_response()
}

async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The watch keeps only the latest snapshot: a slow client skips straight to it.
    let stream = WatchStream::new(state.feed.subscribe())
        .map(|snapshot: Snapshot| Ok(Event::default().data(snapshot.json.as_ref())))
        .take_until(state.end_streams.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[derive(Template)]
#[template(path = "result.html")]
struct ResultPage<'a> {
    ballot: &'a Ballot,
    snapshot: &'a Snapshot,
    instance: &'a str,
}

impl ResultPage<'_> {
    /// The share of `votes` in the total, as the page shows it before its script runs.
    fn percent(&self, votes: &u64) -> String {
        match self.snapshot.results.total {
            0 => "0%".to_owned(),
            total => format!("{:.0}%", *votes as f64 * 100.0 / total as f64),
        }
    }

    /// The `max` of each bar: the total, but never 0, which would draw an empty ballot as full.
    fn bar_max(&self) -> u64 {
        self.snapshot.results.total.max(1)
    }
}

async fn page(State(state): State<AppState>) -> Response {
    let snapshot = state.feed.latest();
    match (ResultPage { ballot: &state.ballot, snapshot: &snapshot, instance: &state.instance }).render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the result page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
