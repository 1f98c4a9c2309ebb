//! The services as an attacker meets them: real listeners on loopback, raw sockets that send
//! half a request and leave, never read, trickle bytes, spray addresses or post from other
//! sites. Every attack is bounded in count and time. What is measured is what an operator
//! would see: sockets in CLOSE-WAIT, descriptors, CPU, live tasks, statuses and counts.

mod connections;
mod files;
mod flood;
mod inputs;
mod origins;
mod stuffing;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use voting::up::{Up, UpConfig};
use voting_testkit::Process;
pub use voting_testkit::eventually;

pub const ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `voting up` built in this test's runtime on port 0, so its tasks can be counted.
#[derive(Debug)]
pub struct InProcess {
    pub vote: SocketAddr,
    pub result: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

impl InProcess {
    /// With the defaults of the command line, changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut UpConfig)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().join("data");
        let mut config = UpConfig::on_any_loopback_port(&data_dir, "a=Cats,b=Dogs,c=Birds").unwrap();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let up = Up::build(config).await.expect("voting up builds");
        let (vote, result) = (up.vote_addr(), up.result_addr());
        let running = Some(tokio::spawn(up.run(shutdown.clone())));
        // A connection per request, closed after it: tests count the connections they open.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let system = Self { vote, result, http, shutdown, running, _data: data };
        let ready = eventually(Duration::from_secs(20), async || {
            system.status(system.vote, "/readyz").await == 200
                && system.status(system.result, "/readyz").await == 200
        })
        .await;
        assert!(ready, "voting up becomes ready");
        system
    }

    pub async fn status(&self, addr: SocketAddr, path: &str) -> u16 {
        match self.http.get(format!("http://{addr}{path}")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Total votes counted on the result page.
    pub async fn total(&self) -> u64 {
        let results: serde_json::Value = self
            .http
            .get(format!("http://{}/api/results", self.result))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        results["total"].as_u64().unwrap()
    }

    /// Waits until the result page counts `expected` votes, then checks it stays there.
    pub async fn wait_for_total(&self, expected: u64) {
        let reached = eventually(Duration::from_secs(20), async || self.total().await >= expected).await;
        assert!(reached, "results reach {expected}, they show {}", self.total().await);
        assert_eq!(self.total().await, expected);
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `voting up`, the binary, on port 0 of loopback; `wrapper` runs before it (e.g. `prlimit`).
#[derive(Debug)]
pub struct UpBinary {
    pub process: Process,
    pub vote: SocketAddr,
    pub result: SocketAddr,
    pub data: tempfile::TempDir,
}

impl UpBinary {
    pub fn start(wrapper: &[&str], extra_args: &[&str], envs: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data, wrapper, extra_args, envs)
    }

    pub fn start_in(
        data: tempfile::TempDir,
        wrapper: &[&str],
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let process = Self::spawn(&data, wrapper, extra_args, envs);
        let mut addrs = None;
        let started = voting_testkit::wait_until(Duration::from_secs(20), || {
            addrs = ports_in(&process.log());
            addrs.is_some()
        });
        assert!(started, "voting up prints its addresses: {}", process.log());
        let (vote, result) = addrs.unwrap();
        Self { process, vote, result, data }
    }

    /// Starts the binary without waiting for it.
    pub fn spawn(
        data: &tempfile::TempDir,
        wrapper: &[&str],
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let data_dir = data.path().join("data");
        let mut args: Vec<&str> = wrapper.to_vec();
        let binary = env!("CARGO_BIN_EXE_voting");
        args.extend([
            binary,
            "up",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--vote-addr",
            "127.0.0.1:0",
            "--result-addr",
            "127.0.0.1:0",
        ]);
        args.extend(extra_args);
        let mut envs = envs.to_vec();
        envs.push(("VOTE_OPTIONS", "a=Cats,b=Dogs,c=Birds"));
        Process::spawn(args[0], &args[1..], &envs).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether both services answer `/readyz` with 200 within 20 s.
    pub async fn ready(&self) -> bool {
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let ok = async |addr: SocketAddr| {
            http.get(format!("http://{addr}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
        };
        eventually(Duration::from_secs(20), async || ok(self.vote).await && ok(self.result).await).await
    }
}

/// The vote and result addresses `voting up` prints.
fn ports_in(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let addr = |label: &str| {
        let line = log.lines().find(|l| l.starts_with(label))?;
        let url = line.split_whitespace().nth(1)?;
        url.trim_start_matches("http://").trim_end_matches('/').parse().ok()
    };
    Some((addr("vote:")?, addr("result:")?))
}

/// A TCP connection to `to` from the loopback address `from` (any 127.0.0.0/8 address works
/// as a distinct client).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Whether the server closed (or reset) the connection within `timeout`; reads and drops
/// anything it sent first.
pub async fn closed_by_server_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends a whole request on a new connection and returns the response head and body as text.
pub async fn raw_request(to: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(to).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Sockets on this machine in CLOSE-WAIT whose local port is `port`: a connection the client
/// closed and the server has not.
pub fn close_wait_sockets(port: u16) -> usize {
    const CLOSE_WAIT: &str = "08";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&CLOSE_WAIT)
        })
        .count()
}

/// Open file descriptors of a process.
pub fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// CPU time a process has used, user and system, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command.
    field(11) + field(12)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Tasks alive in this test's runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}
