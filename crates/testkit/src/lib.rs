//! Real servers for integration tests: no mocks, no Docker.
//!
//! A short tour:
//!
//! - [`RedisServer`] runs the system `redis-server` on a free port with an
//!   append-only file that is fsynced on every write, so a [`RedisServer::kill`]
//!   followed by [`RedisServer::restart`] keeps every acknowledged write.
//! - [`PostgresServer`] runs PostgreSQL 15 from `/usr/lib/postgresql/15/bin`.
//!   The cluster is copied from a template made once by `initdb` and cached in
//!   `temp_dir()/voting-testkit/pg15-template`, so each server starts in well
//!   under a second. As root, PostgreSQL runs as the `postgres` user because it
//!   refuses to run as root.
//! - [`Process`] runs the binary under test (e.g. `voting`) with its output in
//!   a log file that the test can read with [`Process::log`].
//! - [`wait_until`] and [`free_port`] are the small helpers all of the above
//!   use; tests should use [`wait_until`] too instead of sleeping.
//!
//! Every child runs in its own process group and is watched by a tiny `sh`
//! watchdog that SIGKILLs that group if the test process dies without running
//! destructors (SIGKILL, Ctrl-C, a harness timeout), so nothing outlives a test
//! run. Dropping a server or process kills it and removes its temp dir.
//!
//! ```no_run
//! use voting_testkit::{PostgresServer, RedisServer};
//!
//! let redis = RedisServer::start()?;
//! let pg = PostgresServer::start()?;
//! assert_eq!(pg.psql("select 1")?, "1");
//! println!("{} {}", redis.url(), pg.url());
//! # anyhow::Ok(())
//! ```

mod child;
mod postgres;
mod process;
mod redis;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

pub use postgres::PostgresServer;
pub use process::Process;
pub use redis::RedisServer;

/// How often [`wait_until`] re-evaluates its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it returns true or `timeout` passes;
/// returns whether it became true.
///
/// Use this for every readiness or "has it happened yet" check instead of
/// sleeping for a guessed duration: it is as fast as the system allows and
/// only slow when something is actually wrong. `check` is always called at
/// least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// [`wait_until`] for async conditions, in async tests: polls `check` until it returns true
/// or `timeout` passes, without blocking the runtime. Returns whether it held. `check` is
/// always called at least once, and once more at the deadline.
pub async fn eventually<F: AsyncFnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener).
///
/// Another process can grab the port between this call and the server binding
/// it; the servers in this crate retry with a new port when that happens.
///
/// # Panics
///
/// If no port can be bound on 127.0.0.1 at all, which means the test machine
/// is broken.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

/// `temp_dir()/voting-testkit`, the parent of every temp dir this crate makes.
///
/// It must be traversable by the `postgres` user, so it is made 0755 even
/// under a restrictive umask.
fn base_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join("voting-testkit");
    fs::create_dir_all(&dir)?;
    // Fails harmlessly if another user created it; then it is theirs to fix.
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
    Ok(dir)
}

/// A new temp dir under [`base_dir`], removed when dropped.
fn new_temp_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).tempdir_in(base_dir()?)
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
