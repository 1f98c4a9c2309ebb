//! The yardstick of the ingest benchmark: the most trivial axum handler, `POST /` answering
//! `ok`, built with the same release profile and measured with the same `voting load` run.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".to_owned());
    let router = axum::Router::new().route("/", axum::routing::post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, router).await
}
