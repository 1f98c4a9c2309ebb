//! One way to stop, everywhere: a [`CancellationToken`] cancelled on SIGTERM or SIGINT.
//! Servers stop accepting and let in-flight requests finish; the worker finishes, commits and
//! acknowledges its batch; open SSE streams end.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Runs `work` to its end; when the process receives SIGTERM (Docker, Swarm) or SIGINT
/// (Ctrl-C) first, cancels `shutdown` and lets `work` stop gracefully. In a container the
/// process is PID 1 and gets no default handler: this is it.
pub async fn on_signal<F: Future>(shutdown: CancellationToken, work: F) -> F::Output {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::pin!(work);
    let name = tokio::select! {
        done = &mut work => return done,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    shutdown.cancel();
    work.await
}
