//! A real PostgreSQL 15 server on a copy of a cached `initdb` template.

use std::fs::{self, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::child::{Signal, Supervised};
use crate::{base_dir, free_port, log_tail, new_temp_dir, wait_until};

/// Where Debian's `postgresql-15` package puts the server binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a (re)started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`PostgresServer::restart`] keeps retrying a postmaster that
/// exits at once because children of a killed predecessor are still around.
const RESTART_RETRY: Duration = Duration::from_secs(10);
/// Pause between those retries (a back-off, not a readiness guess).
const RESTART_PAUSE: Duration = Duration::from_millis(100);
/// How long a fast shutdown may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the port may stay open after the postmaster was SIGKILLed.
const PORT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at [`PostgresServer::start`], each on a fresh port, in case
/// another process takes the port between [`free_port`] and the bind.
const START_ATTEMPTS: usize = 3;

/// A PostgreSQL 15 postmaster on 127.0.0.1 with its own throwaway cluster,
/// stopped and removed on drop.
///
/// `fsync` is off for speed. That still keeps every acknowledged commit
/// across [`kill`](Self::kill) + [`restart`](Self::restart): commits are
/// synchronous, so their WAL is in the page cache, and only the process dies,
/// not the machine.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    /// The postmaster; `None` while stopped or killed.
    child: Option<Supervised>,
    /// Holds `data/` (the cluster) and `postgres.log`; owned by the user the
    /// server runs as.
    dir: TempDir,
}

impl PostgresServer {
    /// Starts a PostgreSQL 15 server on `127.0.0.1:<free port>` with its own
    /// data dir, copied with `cp -a` from a template cluster that `initdb`
    /// creates once and caches in `temp_dir()/voting-testkit/pg15-template`.
    ///
    /// Runs with `fsync=off`, `full_page_writes=off`, `max_connections=200`,
    /// `shared_buffers=64MB` and no Unix socket, but with synchronous commits
    /// so that [`kill`](Self::kill) loses no acknowledged commit. As root, it runs as the `postgres` user. Waits up
    /// to 30 s until it accepts connections. Its output goes to
    /// `postgres.log` next to the data dir; on failure the error includes the
    /// log's tail.
    pub fn start() -> anyhow::Result<Self> {
        let owner = server_user()?;
        let template = template(owner)?;
        let dir = new_temp_dir("pg-").context("create a temp dir for postgres")?;
        let data = data_dir(dir.path());
        run(Command::new("cp").arg("-a").arg(&template).arg(&data)).context("copy the template cluster")?;
        // Also covers the temp dir itself (0700, ours) and a template made by
        // a different user than the one the server runs as.
        if let Some(owner) = owner {
            chown_recursive(dir.path(), owner)?;
        }

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(dir.path(), port, owner, Duration::ZERO) {
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

    /// The URL clients connect to:
    /// `postgres://postgres@127.0.0.1:{port}/postgres` (trust auth, no
    /// password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with `psql -XAtq -v ON_ERROR_STOP=1` as user `postgres` on
    /// database `postgres` and returns its trimmed stdout: unaligned, tuples
    /// only, so `select 1` gives `"1"` and rows are separated by newlines,
    /// columns by `|`. Fails with psql's stderr if psql fails.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("run psql")?;
        if !output.status.success() {
            bail!(
                "psql on port {} failed ({}) running {sql:?}:\n{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// SIGKILLs the postmaster, like a crash, and waits for it and for the
    /// port to stop accepting connections (max 10 s). No-op if it is not
    /// running.
    ///
    /// Only the postmaster is killed: each backend runs in its own session
    /// (postgres calls `setsid`), and notices the postmaster's death and
    /// exits by itself moments later.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.shutdown(Signal::Kill, false, STOP_TIMEOUT);
            wait_until(PORT_CLOSE_TIMEOUT, || !accepts_tcp(self.port));
        }
    }

    /// Stops it with a fast shutdown (SIGINT: abort transactions, checkpoint,
    /// exit) and waits for exit (max 30 s, then SIGKILL). No-op if it is not
    /// running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.shutdown(Signal::Int, false, STOP_TIMEOUT);
        }
    }

    /// Starts it again on the same port and data dir (after
    /// [`stop`](Self::stop) or [`kill`](Self::kill); if it is still running
    /// it is stopped first) and waits until it accepts connections.
    ///
    /// After a kill, crash recovery runs. If the new postmaster exits at once
    /// because the old one's children still hold its shared memory, this
    /// retries for up to 10 s.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let owner = server_user()?;
        self.child = Some(spawn(self.dir.path(), self.port, owner, RESTART_RETRY)?);
        Ok(())
    }

    /// Whether the postmaster process is alive (it may still be starting).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Supervised::is_running)
    }
}

impl Drop for PostgresServer {
    /// Stops the server and removes its data dir.
    ///
    /// Uses an immediate shutdown (SIGQUIT) rather than a bare SIGKILL: it is
    /// just as quick, but the postmaster only exits once all its children
    /// have, so no backend is still writing into the directory being removed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.shutdown(Signal::Quit, false, Duration::from_secs(5));
        }
        // Retried: after an earlier `kill`, orphaned backends may still be
        // exiting and creating files. `TempDir`'s own drop is then a no-op.
        let dir = self.dir.path();
        wait_until(Duration::from_secs(5), || match fs::remove_dir_all(dir) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        });
    }
}

/// The uid and gid PostgreSQL runs as.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// `None` to run PostgreSQL as ourselves; the `postgres` user if we are root,
/// because `initdb` and `postgres` refuse to run as root.
fn server_user() -> anyhow::Result<Option<Owner>> {
    // /proc/self belongs to our effective uid; this avoids libc (and unsafe).
    let euid = fs::metadata("/proc/self").context("stat /proc/self to learn our uid")?.uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [name, _, uid, gid, ..] = fields[..]
            && name == "postgres"
        {
            return Ok(Some(Owner {
                uid: uid.parse().context("postgres uid in /etc/passwd")?,
                gid: gid.parse().context("postgres gid in /etc/passwd")?,
            }));
        }
    }
    bail!("running as root, but /etc/passwd has no `postgres` user to run PostgreSQL as")
}

/// A command for a PostgreSQL server binary, run as `owner` if given.
fn server_command(program: &str, owner: Option<Owner>) -> Command {
    let mut cmd = Command::new(Path::new(PG_BIN).join(program));
    if let Some(owner) = owner {
        // std also drops root's supplementary groups when it sets the uid.
        cmd.uid(owner.uid).gid(owner.gid);
    }
    cmd
}

fn chown_recursive(path: &Path, owner: Owner) -> anyhow::Result<()> {
    run(Command::new("chown").arg("-R").arg(format!("{}:{}", owner.uid, owner.gid)).arg(path))
}

/// Runs a short command to completion; fails with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let output = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The cached template cluster, made by `initdb` on first use.
///
/// `initdb` writes into a staging dir next to the template's final place,
/// which is then renamed into place: a rename is atomic, so concurrent test
/// processes see either no template or a complete one.
fn template(owner: Option<Owner>) -> anyhow::Result<PathBuf> {
    // Threads of one test binary share a single initdb instead of racing.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);

    let template = base_dir()?.join("pg15-template");
    if template.is_dir() {
        return Ok(template);
    }
    let staging = new_temp_dir("pg15-template-").context("create a staging dir")?;
    if let Some(owner) = owner {
        chown_recursive(staging.path(), owner)?;
    }
    let data = data_dir(staging.path());
    run(server_command("initdb", owner)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
        // Pinned so the cached template does not depend on the locale of
        // whichever test happened to create it.
        .arg("--locale=C.UTF-8")
        .arg("--no-sync")
        // postgres' user cannot necessarily enter the test's cwd.
        .current_dir(staging.path()))
    .context("initdb the template cluster")?;
    match fs::rename(&data, &template) {
        Ok(()) => Ok(template),
        // Another process won the race; its template is just as good.
        Err(_) if template.is_dir() => Ok(template),
        Err(e) => Err(e).with_context(|| format!("rename into {}", template.display())),
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("postgres.log")
}

/// Starts a postmaster on `port` for the cluster in `dir` and waits until it
/// accepts connections. If it exits at once, retries until `retry_for` has
/// passed.
fn spawn(dir: &Path, port: u16, owner: Option<Owner>, retry_for: Duration) -> anyhow::Result<Supervised> {
    let log_path = log_path(dir);
    let deadline = Instant::now() + retry_for;
    loop {
        // Opened by us and handed over as stdout/stderr, so the server's user
        // needs no access to it; appended to keep earlier runs for debugging.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = server_command("postgres", owner);
        cmd.arg("-D")
            .arg(data_dir(dir))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("port={port}"))
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off"])
            // Deliberately no `synchronous_commit=off`: it acknowledges
            // commits still sitting in shared WAL buffers, which a SIGKILL
            // loses, and `kill` + `restart` tests must keep every
            // acknowledged commit. With fsync off a synchronous commit is
            // just a write(2) into the page cache, so it costs next to
            // nothing.
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=64MB"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = Supervised::spawn(&mut cmd, dir).context("spawn postgres")?;

        let mut exited = false;
        let ready = wait_until(READY_TIMEOUT, || {
            exited = !child.is_running();
            exited || is_ready(port)
        });
        // Checked again because the answer could come from a stranger that
        // took the port while our postmaster died on "address in use".
        if ready && !exited && child.is_running() {
            return Ok(child);
        }
        let status = child.shutdown(Signal::Kill, false, STOP_TIMEOUT);
        if !exited {
            bail!(
                "postgres on port {port} did not accept connections within {READY_TIMEOUT:?}; \
                 log tail:\n{}",
                log_tail(&log_path, 30)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "postgres on port {port} exited early ({status:?}); log tail:\n{}",
                log_tail(&log_path, 30)
            );
        }
        // Typically "pre-existing shared memory block is still in use": the
        // backends of a killed postmaster have not all noticed yet.
        thread::sleep(RESTART_PAUSE);
    }
}

fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether the server accepts connections. The cheap TCP probe comes first
/// so `pg_isready` is only spawned once something listens.
fn is_ready(port: u16) -> bool {
    accepts_tcp(port)
        && Command::new(Path::new(PG_BIN).join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "5", "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}
