//! The one shape of every service here: vote, worker, result, and `voting up` composing them.
//!
//! A service is built by an `async fn build(config, dependencies)` of its own, which binds its
//! listener (so a test can ask for port 0 and read the port) and starts nothing; then
//! [`Service::run`] serves until the shutdown token is cancelled and everything the service
//! started has ended. `main`, `voting up` and the tests all build and run services this way.

use std::future::Future;
use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

pub trait Service: Send + 'static {
    /// The address the service listens on (its health endpoints, for the worker).
    fn local_addr(&self) -> SocketAddr;

    /// Serves until `shutdown`, then stops gracefully: requests in hand are answered, the batch
    /// in hand is committed, and every task the service started has ended.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}
