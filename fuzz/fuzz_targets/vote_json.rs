//! `voting::vote::body::parse_json`, which reads `POST /api/vote` bodies (`{"vote": "a"}`).
//!
//! Invariants, for any `Content-Type` and body:
//! - it never panics, and every error it gives is a 4xx, and one a parser of bytes can give
//!   (wrong media type, not JSON, no vote: never "too large" or "too slow");
//! - a vote it returns is the body's `vote` member, and written alone as
//!   `{"vote": ...}` it reads back the same;
//! - a body it calls "not JSON" is not JSON (`serde_json::Value` refuses it too); a body that
//!   is JSON but has no string `vote` member is "no vote";
//! - for a `Content-Type` a client can send: anything but `application/json` or
//!   `application/*+json` (any case, any parameters) is refused as the wrong media type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use voting::vote::body::{BadBody, parse_json};
use voting_fuzz::{MediaType, content_type_and_body, media_type};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = content_type_and_body(data);
    let result = parse_json(content_type.as_deref(), body);
    let value = serde_json::from_slice::<Value>(body);

    match &result {
        Ok(vote) => {
            // serde_json skips the members it ignores more leniently than it builds a `Value`
            // (lone surrogate escapes and out-of-range numbers pass), so a body with such a
            // member besides `vote` gives a vote but no `Value` to compare with.
            if let Ok(value) = &value {
                assert_eq!(value.get("vote").and_then(Value::as_str), Some(vote.as_str()));
            }
            let alone = serde_json::json!({ "vote": vote }).to_string();
            assert_eq!(parse_json(Some("application/json"), alone.as_bytes()).as_ref(), Ok(vote));
        }
        Err(BadBody::NotJson { .. }) => assert!(value.is_err(), "valid JSON called not JSON"),
        Err(BadBody::UnsupportedMediaType { .. } | BadBody::NoVote(_)) => {}
        Err(other) => panic!("parsing bytes gave {other:?}"),
    }
    if let Err(e) = &result {
        assert!(e.status().is_client_error(), "{e:?} is not a client error");
    }

    let is_json = match media_type(content_type.as_deref()) {
        MediaType::Absent => false,
        MediaType::Essence(essence) => {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        }
        MediaType::Unsendable => return,
    };
    assert_eq!(
        matches!(result, Err(BadBody::UnsupportedMediaType { .. })),
        !is_json,
        "{content_type:?}: {result:?}"
    );
    if is_json && value.as_ref().is_ok_and(|value| value.get("vote").and_then(Value::as_str).is_none()) {
        assert!(matches!(result, Err(BadBody::NoVote(_))), "JSON without a string `vote`, yet: {result:?}");
    }
});
