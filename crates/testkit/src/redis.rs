//! A real `redis-server` with durable, fsync-always AOF persistence.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::child::{Signal, Supervised};
use crate::{free_port, log_tail, new_temp_dir, wait_until};

/// The Redis binary, looked up in `PATH` (Debian installs it in /usr/bin).
const REDIS_SERVER: &str = "redis-server";
/// How long a (re)started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful SIGTERM shutdown may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at [`RedisServer::start`], each on a fresh port, in case another
/// process takes the port between [`free_port`] and Redis binding it.
const START_ATTEMPTS: usize = 3;

/// A `redis-server` child on 127.0.0.1 with its own data dir, killed and
/// cleaned up on drop.
///
/// Every write is appended to the AOF and fsynced before it is acknowledged,
/// so [`kill`](Self::kill) + [`restart`](Self::restart) simulates a crash that
/// loses nothing acknowledged.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// `None` while stopped or killed.
    child: Option<Supervised>,
    /// Holds the AOF and `redis.log`; removed when dropped, after [`Drop`]
    /// has killed the server.
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server on `127.0.0.1:<free port>` with `--appendonly yes
    /// --appendfsync always --save ""` and `--dir` in its own temp dir (so a
    /// restart keeps acknowledged data), `--daemonize no`, `--protected-mode
    /// no`; waits until it answers a raw `PING`, at most 10 s.
    ///
    /// Its output goes to `redis.log` in that dir; on failure the error
    /// includes the log's tail.
    pub fn start() -> anyhow::Result<Self> {
        let dir = new_temp_dir("redis-").context("create a temp dir for redis")?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return Ok(Self { port, child: Some(child), dir });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("START_ATTEMPTS > 0"))
    }

    /// The TCP port it listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL clients connect to: `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a raw RESP command (e.g. `&["REPLICAOF", "127.0.0.1", "1234"]`)
    /// over a fresh TCP connection and returns the raw reply, without its
    /// final CRLF: `+OK`, `:1`, `$5\r\nhello`, `*2\r\n...`.
    ///
    /// A Redis error reply (`-ERR ...`) is returned as `Ok` so tests can
    /// assert on it; `Err` means the server could not be reached or hung up.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let stream = TcpStream::connect_timeout(&addr(self.port), Duration::from_secs(5))
            .with_context(|| format!("connect to redis on port {}", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;

        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        (&stream).write_all(&request)?;

        let mut reply = String::new();
        read_reply(&mut BufReader::new(&stream), &mut reply)
            .with_context(|| format!("read the reply to {args:?}"))?;
        Ok(reply.trim_end_matches("\r\n").to_owned())
    }

    /// Sends SIGKILL (to its whole process group) and waits for exit, like a
    /// crash. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.shutdown(Signal::Kill, true, STOP_TIMEOUT);
        }
    }

    /// Stops it gracefully with SIGTERM and waits for exit (max 10 s, then
    /// SIGKILL). No-op if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.shutdown(Signal::Term, false, STOP_TIMEOUT);
        }
    }

    /// Starts it again on the same port and data dir (after
    /// [`stop`](Self::stop) or [`kill`](Self::kill); if it is still running
    /// it is stopped first); waits until it answers, at most 10 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = Some(spawn(self.dir.path(), self.port)?);
        Ok(())
    }

    /// Whether the server process is alive (it may still be loading).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Supervised::is_running)
    }
}

impl Drop for RedisServer {
    /// Kills the server (SIGKILL, no need to be graceful with throwaway data)
    /// and waits for it; the temp dir is removed afterwards.
    fn drop(&mut self) {
        self.kill();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// Spawns redis-server on `port` with data in `dir` and waits until it
/// answers `PING`.
fn spawn(dir: &Path, port: u16) -> anyhow::Result<Supervised> {
    let log_path = log_path(dir);
    // Appended to, so a restart keeps the earlier runs' output for debugging.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut cmd = Command::new(REDIS_SERVER);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--save", ""])
        .args(["--daemonize", "no"])
        .args(["--protected-mode", "no"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = Supervised::spawn(&mut cmd, dir).with_context(|| format!("spawn {REDIS_SERVER}"))?;

    let mut exited = false;
    let ready = wait_until(READY_TIMEOUT, || {
        exited = !child.is_running();
        exited || ping(port)
    });
    // Checked again because a PONG could come from a stranger that took the
    // port while our server died on "address already in use".
    if ready && !exited && child.is_running() {
        return Ok(child);
    }
    let status = child.shutdown(Signal::Kill, true, STOP_TIMEOUT);
    if exited {
        bail!(
            "redis-server on port {port} exited early ({status:?}); log tail:\n{}",
            log_tail(&log_path, 30)
        );
    }
    bail!(
        "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; log tail:\n{}",
        log_tail(&log_path, 30)
    )
}

/// Whether Redis answers an inline `PING` with `+PONG` (not e.g. `-LOADING`).
fn ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let stream = TcpStream::connect_timeout(&addr(port), Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        (&stream).write_all(b"PING\r\n")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line.starts_with("+PONG"))
    };
    attempt().unwrap_or(false)
}

/// Reads one complete RESP2 reply, appending its raw text to `out`.
fn read_reply(reader: &mut impl BufRead, out: &mut String) -> anyhow::Result<()> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        bail!("connection closed in the middle of a reply");
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    out.push_str(&line);
    let header = line.trim_end();
    let count = |kind: &str| -> anyhow::Result<i64> {
        header[1..].parse().with_context(|| format!("bad {kind} header {header:?}"))
    };
    match header.as_bytes().first() {
        // Bulk string: `$<len>` then the payload and CRLF; `$-1` is nil.
        Some(b'$') => {
            if let Ok(len) = usize::try_from(count("bulk")?) {
                let mut payload = vec![0; len + 2];
                reader.read_exact(&mut payload)?;
                out.push_str(&String::from_utf8_lossy(&payload));
            }
        }
        // Array: `*<n>` then n nested replies; `*-1` is nil.
        Some(b'*') => {
            for _ in 0..count("array")?.max(0) {
                read_reply(reader, out)?;
            }
        }
        // Simple string, error, integer: the line is the whole reply.
        _ => {}
    }
    Ok(())
}
