//! A vote out of a request body: the original app's form (`vote=a`) or JSON
//! (`{"vote": "a"}`). The parsers are plain functions over bytes, so the property tests and
//! fuzz targets drive exactly what the handlers run. Their messages are ours, short and free
//! of the input and of our type names.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;

use crate::http::{BODY_TIMEOUT, MAX_BODY_BYTES};

pub const FORM: &str = "application/x-www-form-urlencoded";
pub const JSON: &str = "application/json";

/// Why a body holds no vote, each with its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBody {
    /// 415: not the media type the endpoint reads.
    #[error("expected `Content-Type: {expected}`")]
    UnsupportedMediaType { expected: &'static str },
    /// 400: not JSON at all.
    #[error("the body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    /// 422: well-formed, but no single string `vote` in it.
    #[error("{0}")]
    NoVote(&'static str),
    /// 413: over [`MAX_BODY_BYTES`].
    #[error("the body is over the length limit of {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// 408: did not arrive within [`BODY_TIMEOUT`].
    #[error("the body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    TooSlow,
    /// 400: the connection broke while the body was read.
    #[error("the body could not be read")]
    Unreadable,
}

impl BadBody {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotJson { .. } | Self::Unreadable => StatusCode::BAD_REQUEST,
            Self::NoVote(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooSlow => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

const MISSING_VOTE: &str = "missing field `vote`";
const FORM_DUPLICATE: &str = "more than one `vote` field";
const JSON_SHAPE: &str = "expected a JSON object with a string field `vote`, such as {\"vote\": \"a\"}";

/// The body, read within [`BODY_TIMEOUT`] and [`MAX_BODY_BYTES`].
pub async fn read(body: Body) -> Result<Bytes, BadBody> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err(BadBody::TooSlow),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => match e.into_inner().is::<http_body_util::LengthLimitError>() {
            true => Err(BadBody::TooLarge),
            false => Err(BadBody::Unreadable),
        },
    }
}

/// The media type of a `Content-Type` value, lower-cased (media types are case-insensitive),
/// without parameters.
fn essence(content_type: Option<&str>) -> Option<String> {
    let essence = content_type?.split(';').next()?.trim();
    Some(essence.to_ascii_lowercase())
}

/// The `vote` field of a form body.
pub fn parse_form(content_type: Option<&str>, body: &[u8]) -> Result<String, BadBody> {
    if essence(content_type).as_deref() != Some(FORM) {
        return Err(BadBody::UnsupportedMediaType { expected: FORM });
    }
    let mut votes = form_urlencoded::parse(body).filter(|(name, _)| name == "vote").map(|(_, value)| value);
    let vote = votes.next().ok_or(BadBody::NoVote(MISSING_VOTE))?;
    if votes.next().is_some() {
        return Err(BadBody::NoVote(FORM_DUPLICATE));
    }
    Ok(vote.into_owned())
}

/// The `vote` field of a JSON body (`application/json`, or any `+json` type).
pub fn parse_json(content_type: Option<&str>, body: &[u8]) -> Result<String, BadBody> {
    let is_json = essence(content_type)
        .is_some_and(|t| t == JSON || (t.starts_with("application/") && t.ends_with("+json")));
    if !is_json {
        return Err(BadBody::UnsupportedMediaType { expected: JSON });
    }
    #[derive(serde::Deserialize)]
    struct VoteRequest {
        vote: String,
    }
    // serde reads a struct from an array too (`["a"]`); only an object is a vote request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(BadBody::NoVote(JSON_SHAPE)),
            Err(e) => Err(BadBody::NotJson { line: e.line(), column: e.column() }),
        };
    }
    match serde_json::from_slice::<VoteRequest>(body) {
        Ok(request) => Ok(request.vote),
        Err(e) if e.is_data() => Err(BadBody::NoVote(if e.to_string().starts_with("missing field") {
            MISSING_VOTE
        } else {
            JSON_SHAPE
        })),
        // Syntax, end of input, and nesting past serde_json's recursion limit.
        Err(e) => Err(BadBody::NotJson { line: e.line(), column: e.column() }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn media_types_are_case_insensitive_and_may_carry_parameters() {
        assert_eq!(parse_form(Some("APPLICATION/X-WWW-FORM-URLENCODED"), b"vote=a"), Ok("a".into()));
        assert_eq!(
            parse_form(Some("application/x-www-form-urlencoded; charset=UTF-8"), b"vote=b"),
            Ok("b".into())
        );
        assert_eq!(parse_json(Some("Application/JSON"), br#"{"vote":"a"}"#), Ok("a".into()));
        assert_eq!(parse_json(Some("application/vnd.api+json"), br#"{"vote":"a"}"#), Ok("a".into()));
        assert_eq!(
            parse_json(Some("text/plain"), br#"{"vote":"a"}"#),
            Err(BadBody::UnsupportedMediaType { expected: JSON })
        );
        assert_eq!(parse_form(None, b"vote=a"), Err(BadBody::UnsupportedMediaType { expected: FORM }));
    }

    #[test]
    fn messages_name_the_field_and_never_our_types_or_the_input() {
        let cases: [&[u8]; 4] = [b"1", br#"{"vote": 1}"#, br#"["vote"]"#, br#"{"vote": "a", "vote": "b"}"#];
        for body in cases {
            let message = parse_json(Some(JSON), body).unwrap_err().to_string();
            assert!(!message.contains("VoteRequest") && !message.contains("struct"), "{message}");
        }
        assert_eq!(
            parse_json(Some(JSON), br#"{"choice":"a"}"#).unwrap_err().to_string(),
            "missing field `vote`"
        );
        assert_eq!(
            parse_form(Some(FORM), b"vote=a&vote=b").unwrap_err().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // Nesting bombs within the 16 KiB limit: no stack overflow, a 4xx for the vote itself.
        let nested = format!("{{\"vote\":\"a\",\"x\":{}{}}}", "[".repeat(8_000), "]".repeat(8_000));
        assert_eq!(parse_json(Some(JSON), nested.as_bytes()), Ok("a".into()));
        let nested = format!("{{\"vote\":{}{}}}", "[".repeat(8_000), "]".repeat(8_000));
        assert!(parse_json(Some(JSON), nested.as_bytes()).unwrap_err().status().is_client_error());
    }

    proptest! {
        #[test]
        fn the_form_parser_never_panics_and_finds_what_was_encoded(body in proptest::collection::vec(any::<u8>(), 0..512), vote in ".*") {
            let _ = parse_form(Some(FORM), &body);
            let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair("x", "1").append_pair("vote", &vote).finish();
            prop_assert_eq!(parse_form(Some(FORM), encoded.as_bytes()), Ok(vote));
        }

        #[test]
        fn the_json_parser_never_panics_and_finds_what_was_encoded(body in proptest::collection::vec(any::<u8>(), 0..512), vote in ".*") {
            if let Err(e) = parse_json(Some(JSON), &body) {
                prop_assert!(e.status().is_client_error());
            }
            let encoded = serde_json::json!({ "vote": vote, "other": [1, {"a": null}] }).to_string();
            prop_assert_eq!(parse_json(Some(JSON), encoded.as_bytes()), Ok(vote));
        }
    }
}
