//! What became of one vote, as the load generator can tell from the answer it got.

/// What became of one vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx: counted for sure.
    Acknowledged,
    /// Certainly not recorded: a 4xx, a plain 503, or no connection at all.
    Refused(ErrorKind),
    /// Maybe recorded: a timeout, a connection lost mid-request, a 503 saying the outcome is
    /// unknown, or another 5xx.
    Unknown(ErrorKind),
}

/// Why a vote was not acknowledged, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Connect,
    Timeout,
    Status4xx,
    Status5xx,
    Other,
}
