//! One way to stop, everywhere: a [`CancellationToken`] cancelled on SIGTERM or SIGINT.
//! Servers stop accepting and let in-flight requests finish; the worker finishes, commits and
//! acknowledges its batch; open SSE streams end.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGTERM (Docker, Swarm) or SIGINT (Ctrl-C).
/// In a container the process is PID 1 and gets no default handler: this is it.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        cancel.cancel();
    });
    token
}
