//! `voting::vote::body::parse_form`, which reads `POST /` bodies (`vote=a`).
//!
//! Invariants, for any `Content-Type` and body:
//! - it never panics, and every error it gives is a 4xx;
//! - a vote it returns is the decoded value of a `vote` field of the body (`+` and
//!   percent-escapes decoded, invalid UTF-8 replaced, as `form_urlencoded` decodes it);
//! - for a `Content-Type` a client can send: anything but `application/x-www-form-urlencoded`
//!   (any case, any parameters) is refused as the wrong media type; a form body with exactly
//!   one `vote` field yields that field; none or several yield "no vote".
#![no_main]

use libfuzzer_sys::fuzz_target;
use voting::vote::body::{BadBody, parse_form};
use voting_fuzz::{MediaType, content_type_and_body, media_type};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = content_type_and_body(data);
    let result = parse_form(content_type.as_deref(), body);

    let votes: Vec<String> = form_urlencoded::parse(body)
        .filter(|(name, _)| name == "vote")
        .map(|(_, value)| value.into_owned())
        .collect();
    match &result {
        Ok(vote) => assert!(votes.contains(vote), "{vote:?} is not the value of a `vote` field ({votes:?})"),
        Err(e) => assert!(e.status().is_client_error(), "{e:?} is not a client error"),
    }

    let is_form = match media_type(content_type.as_deref()) {
        MediaType::Absent => false,
        MediaType::Essence(essence) => essence == "application/x-www-form-urlencoded",
        MediaType::Unsendable => return,
    };
    match (is_form, votes.as_slice()) {
        (false, _) => assert!(
            matches!(result, Err(BadBody::UnsupportedMediaType { .. })),
            "{content_type:?} is not a form, yet: {result:?}"
        ),
        (true, [only]) => assert_eq!(result.as_ref(), Ok(only)),
        (true, _) => assert!(
            matches!(result, Err(BadBody::NoVote(_))),
            "{} `vote` fields, yet: {result:?}",
            votes.len()
        ),
    }
});
