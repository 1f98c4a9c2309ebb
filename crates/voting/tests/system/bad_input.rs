//! Every bad input gets a clear 4xx, never a 5xx, and records nothing.

use reqwest::StatusCode;

use crate::helpers::TestSystem;

async fn post(
    system: &TestSystem,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    cookie: Option<&str>,
) -> (StatusCode, String, String) {
    let mut request = system
        .http
        .post(format!("{}{path}", system.vote_url))
        .header("content-type", content_type)
        .body(body);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

type Case<'a> = (&'a str, &'a str, &'a str, String, Option<&'a str>, StatusCode, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_4xx_and_records_nothing() {
    let system = TestSystem::start().await;
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let voter = "0123456789abcdef0123456789abcdef";
    let forged = format!("voter_id={voter}.0123456789abcdef0123456789abcdef");
    let huge = format!("{{\"vote\":\"a\",\"pad\":\"{}\"}}", "x".repeat(20 * 1024));
    // (what, path, content type, body, cookie, expected status, expected words)
    let cases: Vec<Case> = vec![
        (
            "unknown option (API)",
            "/api/vote",
            json,
            r#"{"vote":"zebra"}"#.into(),
            None,
            StatusCode::BAD_REQUEST,
            "not an option",
        ),
        (
            "unknown option (form)",
            "/",
            form,
            "vote=zebra".into(),
            None,
            StatusCode::BAD_REQUEST,
            "not an option",
        ),
        (
            "missing field (API)",
            "/api/vote",
            json,
            r#"{"choice":"a"}"#.into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `vote`",
        ),
        (
            "missing field (form)",
            "/",
            form,
            "choice=a".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `vote`",
        ),
        (
            "malformed JSON",
            "/api/vote",
            json,
            r#"{"vote":"#.into(),
            None,
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "vote of the wrong type",
            "/api/vote",
            json,
            r#"{"vote":1}"#.into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "string field `vote`",
        ),
        (
            "an array, not an object",
            "/api/vote",
            json,
            r#"["a"]"#.into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "string field `vote`",
        ),
        (
            "wrong content type",
            "/api/vote",
            "text/plain",
            r#"{"vote":"a"}"#.into(),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "body over 16 KiB (API)",
            "/api/vote",
            json,
            huge.clone(),
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
        (
            "body over 16 KiB (form)",
            "/",
            form,
            format!("vote=a&pad={}", "x".repeat(20 * 1024)),
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
        (
            "malformed cookie",
            "/api/vote",
            json,
            r#"{"vote":"a"}"#.into(),
            Some("voter_id=../../etc"),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "forged cookie (API)",
            "/api/vote",
            json,
            r#"{"vote":"a"}"#.into(),
            Some(forged.as_str()),
            StatusCode::BAD_REQUEST,
            "not issued",
        ),
        (
            "forged cookie (form)",
            "/",
            form,
            "vote=a".into(),
            Some(forged.as_str()),
            StatusCode::BAD_REQUEST,
            "not issued",
        ),
    ];
    for (name, path, content_type, body, cookie, status, message) in cases {
        let (got, got_type, text) = post(&system, path, content_type, body, cookie).await;
        assert_eq!(got, status, "{name}: {text}");
        assert!(text.contains(message), "{name}: `{text}` does not say `{message}`");
        assert!(
            !text.contains("VoteRequest") && !text.contains("struct"),
            "{name}: our internals in `{text}`"
        );
        let expected_type = if path == "/" { "text/html" } else { "application/json" };
        assert!(got_type.starts_with(expected_type), "{name}: answered {got_type}");
    }
    assert_eq!(system.redis_int(&["XLEN", "votes"]), 0, "a rejected vote reached the queue");
    assert_eq!(system.results().await.total, 0);
}
