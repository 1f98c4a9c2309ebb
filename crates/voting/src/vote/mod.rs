//! The vote service: the voting page, the form and JSON endpoints, and nothing else. A vote is
//! validated, handed to the queue, and acknowledged only once the queue has it.
//!
//! - `GET /`: the ballot, with the voter's latest choice marked if this replica saw it
//!   ([`recent`]).
//! - `POST /` (form `vote=<id>`): records the vote, answers 200 with the page and the choice
//!   marked (the original app's contract, so its `ab` load works unchanged).
//! - `POST /api/vote` (JSON `{"vote": "<id>"}`): 202 with `{"voter_id", "vote"}`.
//!
//! Before a vote is recorded: a post from another site's page is refused ([`origin`]), the
//! body is read within its limits and parsed ([`body`]), and a request that creates a new
//! voter counts against its client's allowance ([`limit`]).

pub mod args;
pub mod body;
pub mod cookie;
pub mod error;
pub mod limit;
pub mod origin;
pub mod recent;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Json, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use voting_core::queue::VoteQueue;
use voting_core::{Ballot, BallotOption, Vote, VoterId};

use self::body::BadBody;
use self::cookie::CookieKey;
use self::error::{VoteError, printable};
use self::limit::{NewVoterLimit, NewVoterPolicy};
use self::origin::PublicOrigins;
use self::recent::RecentChoices;
use crate::http::client::client_ip;
use crate::http::connection::ConnectionLimits;
use crate::http::{Server, came_over_https, compressed, health_routes};
use crate::service::Service;

#[derive(Debug, Clone)]
pub struct VoteConfig {
    pub addr: SocketAddr,
    pub ballot: Ballot,
    pub cookie_key: CookieKey,
    /// Shown in the page footer.
    pub instance: String,
    /// How fast one client may create new voters.
    pub new_voters: NewVoterPolicy,
    /// Sites besides this one whose pages may post votes.
    pub public_origins: PublicOrigins,
    /// Connection caps of this process, and the proxies trusted to name a request's client.
    pub connections: ConnectionLimits,
}

/// What every handler shares, behind an `Arc`: a request clones one pointer, not the ballot,
/// the key and the instance name (those clones were allocations on every vote).
#[derive(Debug)]
struct AppState<Q> {
    config: VoteConfig,
    queue: Q,
    /// Marks a returning voter's choice on `GET /`.
    recent: RecentChoices,
    new_voters: NewVoterLimit,
}

/// The bound vote service.
#[derive(Debug)]
pub struct VoteService<Q> {
    server: Server,
    queue: Q,
}

impl<Q: VoteQueue> VoteService<Q> {
    pub async fn build(config: VoteConfig, queue: Q) -> std::io::Result<Self> {
        let (addr, connections) = (config.addr, config.connections.clone());
        let server = Server::bind(addr, router(config, queue.clone()), connections).await?;
        Ok(Self { server, queue })
    }
}

impl<Q: VoteQueue> Service for VoteService<Q> {
    fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown`, then waits for the queue to finish writing the votes in hand.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let served = self.server.run(shutdown).await;
        self.queue.close().await;
        Ok(served?)
    }
}

pub fn router<Q: VoteQueue>(config: VoteConfig, queue: Q) -> Router {
    let ready_queue = queue.clone();
    let ready = move || {
        let queue = ready_queue.clone();
        async move { queue.ping().await.map_err(|e| e.to_string()) }
    };
    let new_voters = NewVoterLimit::new(config.new_voters.clone());
    compressed(
        Router::new()
            .route("/", get(page::<Q>).post(vote_form::<Q>))
            .route("/api/vote", post(vote_api::<Q>))
            .with_state(Arc::new(AppState { config, queue, recent: RecentChoices::default(), new_voters }))
            .merge(crate::assets::routes()),
    )
    .merge(health_routes(ready))
}

/// Who is voting: the voter of a valid cookie, or a new voter who gets a cookie.
struct Voter {
    id: VoterId,
    /// `Set-Cookie` to send, for a new voter.
    new_cookie: Option<String>,
}

impl Voter {
    /// The voter of the request's cookie; without one, a new voter, if `client` may still
    /// create one.
    fn of<Q>(state: &AppState<Q>, headers: &HeaderMap, client: IpAddr) -> Result<Self, VoteError> {
        let key = &state.config.cookie_key;
        match cookie::from_headers(headers) {
            Some(value) => Ok(Self { id: key.verify(value)?, new_cookie: None }),
            None => {
                state.new_voters.admit(client).map_err(VoteError::TooManyNewVoters)?;
                let id = VoterId::random();
                let new_cookie = cookie::set_cookie(&key.sign(&id), came_over_https(headers));
                Ok(Self { id, new_cookie: Some(new_cookie) })
            }
        }
    }
}

/// A vote request, from its first header to the queue: the origin, the body, the option, the
/// voter, then the hand-over.
async fn accept<Q: VoteQueue>(
    state: &AppState<Q>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    parse: fn(Option<&str>, &[u8]) -> Result<String, BadBody>,
) -> Result<(Voter, BallotOption), VoteError> {
    origin::check(headers, &state.config.public_origins)?;
    let bytes = body::read(body).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let raw_option = parse(content_type, &bytes)?;
    let client = client_ip(peer.ip(), headers, state.config.connections.trusted_proxies());
    record(state, headers, client, &raw_option).await
}

async fn record<Q: VoteQueue>(
    state: &AppState<Q>,
    headers: &HeaderMap,
    client: IpAddr,
    raw_option: &str,
) -> Result<(Voter, BallotOption), VoteError> {
    let option = state
        .config
        .ballot
        .option(raw_option)
        .ok_or_else(|| VoteError::UnknownOption(printable(raw_option, 40)))?
        .clone();
    let voter = Voter::of(state, headers, client)?;
    state.queue.publish(&Vote::now(voter.id, option.id.clone())).await?;
    state.recent.remember(voter.id, option.id.clone());
    Ok((voter, option))
}

#[derive(Template)]
#[template(path = "vote.html")]
struct VotePage<'a> {
    ballot: &'a Ballot,
    chosen: Option<&'a str>,
    error: Option<String>,
    instance: &'a str,
}

impl VotePage<'_> {
    fn is_chosen(&self, option: &BallotOption) -> bool {
        self.chosen == Some(option.id.as_str())
    }

    fn chosen_label(&self) -> Option<&str> {
        let chosen = self.chosen?;
        self.ballot.option(chosen).map(|o| o.label.as_str())
    }

    fn render_with(&self, status: StatusCode) -> Response {
        match self.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering the vote page");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

async fn page<Q: VoteQueue>(State(state): State<Arc<AppState<Q>>>, headers: HeaderMap) -> Response {
    // A missing or invalid cookie marks nothing here; voting with it is what gets refused.
    let chosen = cookie::from_headers(&headers)
        .and_then(|value| state.config.cookie_key.verify(value).ok())
        .and_then(|voter| state.recent.get(&voter));
    let mut response = VotePage {
        ballot: &state.config.ballot,
        chosen: chosen.as_ref().map(|c| c.as_str()),
        error: None,
        instance: &state.config.instance,
    }
    .render_with(StatusCode::OK);
    // The page differs per voter: no shared cache may keep one voter's page for another.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, no-cache"));
    response
}

async fn vote_form<Q: VoteQueue>(
    State(state): State<Arc<AppState<Q>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = accept(&state, peer, &headers, body, body::parse_form).await;
    let page = |chosen, error| VotePage {
        ballot: &state.config.ballot,
        chosen,
        error,
        instance: &state.config.instance,
    };
    match outcome {
        Ok((voter, option)) => {
            let mut response = page(Some(option.id.as_str()), None).render_with(StatusCode::OK);
            set_cookie(&mut response, voter.new_cookie);
            response
        }
        // The original app's contract: the page again, with the error where the choice shows.
        Err(e) => {
            let page = page(None, Some(e.to_string())).render_with(e.status());
            e.in_place_of(page)
        }
    }
}

#[derive(Debug, Serialize)]
struct VoteAccepted {
    voter_id: String,
    vote: String,
}

async fn vote_api<Q: VoteQueue>(
    State(state): State<Arc<AppState<Q>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, VoteError> {
    let (voter, option) = accept(&state, peer, &headers, body, body::parse_json).await?;
    let accepted = VoteAccepted { voter_id: voter.id.to_string(), vote: option.id.to_string() };
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    set_cookie(&mut response, voter.new_cookie);
    Ok(response)
}

fn set_cookie(response: &mut Response, cookie: Option<String>) {
    if let Some(value) = cookie.and_then(|c| c.parse().ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Request;
    use proptest::prelude::*;
    use tower::ServiceExt;
    use voting_core::queue::embedded::EmbeddedQueue;
    use voting_core::queue::{ConsumerGroup, ConsumerSettings, QueueConsumer};

    use super::*;

    /// Bodies a client might send: random bytes, near-misses of a vote, and votes.
    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "(vote|Vote|vote\\[\\]|)=[a-c%0-9A-F&=+]{0,12}".prop_map(String::into_bytes),
            "\\{\"vote\": ?(\"[a-d\\\\u0000-\\\\u001f]{0,3}\"|[0-9]|null|\\[\\]|\\{\\})\\}"
                .prop_map(String::into_bytes),
            Just(b"vote=a".to_vec()),
            Just(br#"{"vote":"b"}"#.to_vec()),
        ]
    }

    fn content_types() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(body::FORM.to_owned())),
            Just(Some(body::JSON.to_owned())),
            Just(Some("APPLICATION/JSON; charset=utf-8".to_owned())),
            "[ -~]{0,40}".prop_map(Some),
        ]
    }

    /// Whatever arrives, the answer is never a 5xx, and exactly the answers that say a vote
    /// was recorded put one in the queue.
    #[test]
    fn no_request_gets_a_5xx_or_records_a_vote_it_was_refused() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let queue = runtime.block_on(EmbeddedQueue::open(&data.path().join("queue.sqlite"))).unwrap();
        let config = VoteConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ballot: Ballot::parse("a=Cats,b=Dogs,c=Birds").unwrap(),
            cookie_key: CookieKey::random(),
            instance: "proptest".into(),
            new_voters: NewVoterPolicy::default(),
            public_origins: PublicOrigins::default(),
            connections: ConnectionLimits::default(),
        };
        let app = router(config, queue.clone());
        let accepted = std::cell::Cell::new(0usize);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
        let strategy = (
            prop_oneof![Just("/"), Just("/api/vote")],
            content_types(),
            bodies(),
            proptest::option::of("[ -~]{0,60}"),
        );
        runner
            .run(&strategy, |(path, content_type, body, cookie)| {
                let mut request = Request::post(path);
                if let Some(content_type) = content_type {
                    request = request.header(header::CONTENT_TYPE, content_type);
                }
                if let Some(cookie) = cookie {
                    request = request.header(header::COOKIE, format!("voter_id={cookie}"));
                }
                let mut request = request.body(Body::from(body)).unwrap();
                request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
                let status = runtime.block_on(app.clone().oneshot(request)).unwrap().status();
                prop_assert!(!status.is_server_error(), "{status}");
                if status.is_success() {
                    accepted.set(accepted.get() + 1);
                }
                Ok(())
            })
            .unwrap();
        let queued = runtime.block_on(async {
            let settings = ConsumerSettings {
                name: "count".into(),
                batch_size: 100_000,
                claim_idle: Duration::from_secs(60),
                block: Duration::from_millis(10),
            };
            queue.join(settings).await.unwrap().next_batch().await.unwrap().len()
        });
        assert_eq!(queued, accepted.get(), "votes queued vs votes acknowledged");
        assert!(accepted.get() > 0, "the strategy produces valid votes too");
    }
}
