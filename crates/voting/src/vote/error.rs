//! Everything a vote request can fail with, and the status each earns. A failure never
//! records a vote: validation happens before the queue, and a queue error is never success.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use voting_core::queue::QueueError;

use super::body::BadBody;
use super::cookie::BadCookie;
use super::origin::CrossSite;

#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    /// 400: the option is not on the ballot (kept [`printable`]: it is the client's text).
    #[error("`{0}` is not an option on this ballot")]
    UnknownOption(String),
    /// 400: the `voter_id` cookie is malformed or forged.
    #[error(transparent)]
    BadCookie(#[from] BadCookie),
    /// 4xx as [`BadBody::status`] says: no vote in the body, the wrong media type (415), over
    /// 16 KiB (413), too slow to arrive (408).
    #[error(transparent)]
    BadBody(#[from] BadBody),
    /// 403: posted by another site's page.
    #[error(transparent)]
    CrossSite(#[from] CrossSite),
    /// 429 with `Retry-After`: this client address made too many new voters lately.
    #[error("too many new voters from your network; please try again in {} s", retry_after_secs(*.0))]
    TooManyNewVoters(Duration),
    /// 503 with `Retry-After`: the vote was not handed over, or it is not known whether it
    /// was (then also `Vote-Outcome: unknown`), so it must not be reported as recorded.
    #[error("votes cannot be recorded right now; please try again")]
    Unavailable(#[from] QueueError),
}

impl VoteError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownOption(_) | Self::BadCookie(_) => StatusCode::BAD_REQUEST,
            Self::BadBody(bad) => bad.status(),
            Self::CrossSite(_) => StatusCode::FORBIDDEN,
            Self::TooManyNewVoters(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` to send, in seconds, if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyNewVoters(wait) => Some(retry_after_secs(*wait)),
            Self::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// Logs once, where the request ends; the cause chain only for our own failures.
    fn log(&self) {
        match self {
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "vote not recorded"),
            other => tracing::info!(error = %other, "vote rejected"),
        }
    }

    /// `body` as the answer to this failure: logged, with its status already, and with the
    /// headers that tell clients when to retry and those who count votes (`voting load
    /// --verify`) whether this one may have been recorded after all.
    pub fn in_place_of(self, mut body: Response) -> Response {
        self.log();
        let headers = body.headers_mut();
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::Unavailable(cause) = &self
            && cause.outcome_unknown()
        {
            headers.insert(VOTE_OUTCOME, HeaderValue::from_static("unknown"));
        }
        body
    }
}

/// Set to `unknown` on a 503 whose vote may have been recorded nonetheless.
pub const VOTE_OUTCOME: HeaderName = HeaderName::from_static("vote-outcome");

/// The JSON API's answer: `{"error": "..."}` with the status and headers of the failure.
impl IntoResponse for VoteError {
    fn into_response(self) -> Response {
        let body = (self.status(), Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        self.in_place_of(body)
    }
}

/// Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Client text made safe to log and to show: at most `max_chars` characters, control
/// characters (a newline that would forge a log line, terminal escapes, NUL) escaped as
/// `\u{..}`.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in text.chars().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_loses_its_control_characters_and_its_length() {
        assert_eq!(printable("a\nb\u{1b}[31m\0", 40), "a\\u{a}b\\u{1b}[31m\\u{0}");
        assert_eq!(printable(&"x".repeat(100), 40).len(), 40);
        assert_eq!(printable("Ünïcode ok", 40), "Ünïcode ok");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
