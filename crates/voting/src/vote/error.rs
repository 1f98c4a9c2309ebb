//! Everything a vote request can fail with, and the status each earns. A failure never
//! records a vote: validation happens before the queue, and a queue error is never success.

use axum::http::StatusCode;
use voting_core::queue::QueueError;

use super::cookie::BadCookie;

#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    /// 400: the option is not on the ballot.
    #[error("`{0}` is not an option on this ballot")]
    UnknownOption(String),
    /// 400: the `voter_id` cookie is malformed or forged.
    #[error(transparent)]
    BadCookie(#[from] BadCookie),
    /// 4xx as the body extractor decided: malformed JSON or form, a missing field, the wrong
    /// content type (415), a body over 16 KiB (413).
    #[error("{message}")]
    BadRequest { status: StatusCode, message: String },
    /// 503 with `Retry-After`: the vote was not handed over, or it is not known whether it
    /// was (then also `Vote-Outcome: unknown`), so it must not be reported as recorded.
    #[error("votes cannot be recorded right now; please try again")]
    Unavailable(#[from] QueueError),
}

impl VoteError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownOption(_) | Self::BadCookie(_) => StatusCode::BAD_REQUEST,
            Self::BadRequest { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Logs once, where the request ends; the cause chain only for our own failures.
    pub fn log(&self) {
        match self {
            Self::Unavailable(cause) => tracing::warn!(error = %cause, "vote not recorded"),
            other => tracing::info!(error = %other, "vote rejected"),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for VoteError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        Self::BadRequest { status: rejection.status(), message: rejection.body_text() }
    }
}

impl From<axum::extract::rejection::FormRejection> for VoteError {
    fn from(rejection: axum::extract::rejection::FormRejection) -> Self {
        Self::BadRequest { status: rejection.status(), message: rejection.body_text() }
    }
}
