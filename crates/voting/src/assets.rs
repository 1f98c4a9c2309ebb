//! Static assets, compiled into the binary so the pages work on an air-gapped network.
//! Served with an `ETag`; browsers revalidate and get a 304 for unchanged files.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
    etag: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        ("style.css", "text/css; charset=utf-8", include_bytes!("../assets/style.css").as_slice()),
        ("vote.js", "text/javascript; charset=utf-8", include_bytes!("../assets/vote.js").as_slice()),
        ("result.js", "text/javascript; charset=utf-8", include_bytes!("../assets/result.js").as_slice()),
        ("icon.svg", "image/svg+xml", include_bytes!("../assets/icon.svg").as_slice()),
    ]
    .into_iter()
    .map(|(name, mime, body)| Asset {
        name,
        mime,
        body,
        etag: format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12])),
    })
    .collect()
});

/// `/static/{name}`, and `/favicon.ico` for browsers that ask for it whatever the page says.
pub fn routes() -> Router {
    Router::new()
        .route("/static/{name}", get(|Path(name): Path<String>, headers: HeaderMap| serve(name, headers)))
        .route("/favicon.ico", get(|headers: HeaderMap| serve("icon.svg".to_owned(), headers)))
}

async fn serve(name: String, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let cache = [(header::ETAG, asset.etag.clone()), (header::CACHE_CONTROL, "no-cache".to_owned())];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, asset.mime)], asset.body).into_response()
}
