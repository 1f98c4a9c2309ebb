//! Cross-site form posts: any web page could otherwise make its visitors vote.

use crate::InProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_from_other_sites_are_refused_and_same_origin_and_header_less_ones_accepted() {
    let system = InProcess::start(|config| {
        config.system.vote.public_origins = "https://vote.example.com".parse().unwrap()
    })
    .await;
    let own = format!("http://{}", system.vote);
    let post = async |path: &str, headers: &[(&str, &str)]| {
        let mut request = system.http.post(format!("{own}{path}"));
        request = if path == "/" {
            request.header("content-type", "application/x-www-form-urlencoded").body("vote=b")
        } else {
            request.header("content-type", "application/json").body(r#"{"vote":"b"}"#)
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        (status, content_type, response.text().await.unwrap())
    };
    let refused: [&[(&str, &str)]; 6] = [
        &[("origin", "https://evil.example")],
        &[("sec-fetch-site", "cross-site")],
        &[("origin", "null")],
        &[("referer", "https://evil.example/innocent-page")],
        &[("sec-fetch-site", "cross-site"), ("origin", &own)],
        &[("origin", "https://vote.example.com.evil.example")],
    ];
    for headers in refused {
        for path in ["/", "/api/vote"] {
            let (status, content_type, body) = post(path, headers).await;
            assert_eq!(status, 403, "{path} with {headers:?}: {body}");
            assert!(body.contains("only from the pages of this site"), "{path} with {headers:?}: {body}");
            let expected = if path == "/" { "text/html" } else { "application/json" };
            assert!(content_type.starts_with(expected), "{path} with {headers:?}: {content_type}");
        }
    }
    assert_eq!(system.total().await, 0, "a refused post was counted");

    let accepted: [&[(&str, &str)]; 5] = [
        &[],
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
        &[("referer", &format!("{own}/"))],
        &[("origin", "https://vote.example.com")],
        &[("sec-fetch-site", "none")],
    ];
    for headers in accepted {
        let (status, _, body) = post("/", headers).await;
        assert_eq!(status, 200, "{headers:?}: {body}");
    }
    system.wait_for_total(accepted.len() as u64).await;
    system.stop().await;
}
