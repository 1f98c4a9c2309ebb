//! The certificate manager (`voting certs serve`) against a real ACME server (Pebble), real
//! edge proxies (Traefik, polling the managers through its HTTP provider) and PostgreSQL.
//! Pebble validates HTTP-01 through one of the Traefiks, resolving the test host name with a
//! small DNS responder of this file; the CA's identity comes from Pebble's management API.
//! `TRAEFIK` names the Traefik binary (`traefik` on the PATH by default).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use voting_core::store::postgres::PostgresStore;
use voting_testkit::{PostgresServer, Process, free_port, wait_until};

const DOMAIN: &str = "vote.voting.test";
const TOKEN: &str = "provider-token-for-the-tests";
const SECRET: &str = "a-secret-of-the-tests-that-seals-private-keys";

/// Pebble, PostgreSQL, a DNS responder, and the managers and Traefiks a test starts.
struct Bench {
    dir: tempfile::TempDir,
    postgres: PostgresServer,
    db: PgPool,
    pebble: Process,
    pebble_port: u16,
    pebble_management_port: u16,
    /// The web (HTTP) port Pebble validates challenges on: the first Traefik's.
    challenge_port: u16,
    _dns: DnsResponder,
}

impl Bench {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let postgres = PostgresServer::start().unwrap();
        PostgresStore::connect_lazy(&postgres.url(), 2).unwrap().migrate().await.unwrap();
        let db = PgPoolOptions::new().max_connections(2).connect(&postgres.url()).await.unwrap();
        let dns = DnsResponder::start();
        write_pebble_listener_certificate(dir.path());
        let (pebble_port, pebble_management_port, challenge_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{pebble_port}"),
            "managementListenAddress": format!("127.0.0.1:{pebble_management_port}"),
            "certificate": dir.path().join("pebble.pem"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": challenge_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let pebble = Process::spawn(
            "pebble",
            &["-config", config_path.to_str().unwrap(), "-dnsserver", &dns.addr.to_string()],
            // No random wait before validating: the tests' time goes to what they check.
            &[("PEBBLE_VA_NOSLEEP", "1")],
        )
        .unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", pebble_port))
                .is_ok()),
            "Pebble did not start: {}",
            pebble.log()
        );
        Self { dir, postgres, db, pebble, pebble_port, pebble_management_port, challenge_port, _dns: dns }
    }

    /// A manager replica on a port of its own; `challenge_url` is where Traefik is told to
    /// send challenges (any replica answers them).
    fn manager(&self, port: u16, challenge_url: &str) -> Process {
        let addr = format!("127.0.0.1:{port}");
        Process::spawn(
            env!("CARGO_BIN_EXE_voting"),
            &["certs", "serve"],
            &[
                ("CERTS_ADDR", addr.as_str()),
                ("CERTS_DOMAINS", DOMAIN),
                ("ACME_DIRECTORY_URL", &format!("https://127.0.0.1:{}/dir", self.pebble_port)),
                ("ACME_CA_ROOT", self.dir.path().join("ca.pem").to_str().unwrap()),
                ("ACME_SELF_CHECK_URL", &format!("http://127.0.0.1:{}", self.challenge_port)),
                ("CERTS_CHECK_INTERVAL", "200ms"),
                ("CERTS_CHALLENGE_URL", challenge_url),
                ("CERTS_SECRET", SECRET),
                ("CERTS_PROVIDER_TOKEN", TOKEN),
                ("DATABASE_URL", &self.postgres.url()),
                ("RUST_LOG", "info"),
            ],
        )
        .unwrap()
    }

    /// A Traefik polling the manager at `manager_port` every second; its web entry point on
    /// `web_port`, its TLS one on the returned port.
    fn traefik(&self, name: &str, web_port: u16, manager_port: u16) -> (Process, u16) {
        let websecure_port = free_port();
        let ping_port = free_port();
        // A router on the TLS entry point for the domain: Traefik picks the certificate by SNI.
        let routers = self.dir.path().join(format!("{name}-routers.yml"));
        std::fs::write(
            &routers,
            format!(
                "http:\n  routers:\n    vote:\n      rule: Host(`{DOMAIN}`)\n      entryPoints: [websecure]\n      \
                 service: noop@internal\n      tls: {{}}\n"
            ),
        )
        .unwrap();
        let binary = std::env::var("TRAEFIK").unwrap_or_else(|_| "traefik".to_owned());
        let traefik = Process::spawn(
            binary,
            &[
                &format!("--entrypoints.web.address=127.0.0.1:{web_port}"),
                // As deploy/traefik/traefik.yml: HTTP redirected to HTTPS, by a router below the
                // challenge route.
                "--entrypoints.web.http.redirections.entrypoint.to=websecure",
                "--entrypoints.web.http.redirections.entrypoint.scheme=https",
                "--entrypoints.web.http.redirections.entrypoint.priority=1",
                &format!("--entrypoints.websecure.address=127.0.0.1:{websecure_port}"),
                &format!("--entrypoints.ping.address=127.0.0.1:{ping_port}"),
                "--ping.entrypoint=ping",
                &format!("--providers.http.endpoint=http://127.0.0.1:{manager_port}/traefik"),
                "--providers.http.pollInterval=1s",
                &format!("--providers.http.headers.Authorization=Bearer {TOKEN}"),
                &format!("--providers.file.filename={}", routers.display()),
                "--log.level=INFO",
            ],
            &[],
        )
        .unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || http_status(&format!(
                "http://127.0.0.1:{ping_port}/ping"
            )) == Some(200)),
            "Traefik did not start: {}",
            traefik.log()
        );
        (traefik, websecure_port)
    }

    /// Pebble's issuing root, to verify served certificates with.
    async fn issuing_root(&self) -> reqwest::Certificate {
        let pem = insecure_client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.pebble_management_port))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        reqwest::Certificate::from_pem(&pem).unwrap()
    }

    fn pebble_log_count(&self, what: &str) -> usize {
        self.pebble.log().matches(what).count()
    }

    async fn stored(&self) -> Option<(String, Vec<u8>)> {
        sqlx::query("SELECT order_url, private_key FROM acme_certificates WHERE name = $1")
            .bind(DOMAIN)
            .fetch_optional(&self.db)
            .await
            .unwrap()
            .map(|row| (row.get("order_url"), row.get("private_key")))
    }

    /// Orders and challenge answers left in the database.
    async fn leftovers(&self) -> (i64, i64) {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM acme_orders) AS o, (SELECT count(*) FROM acme_challenges) AS c",
        )
        .fetch_one(&self.db)
        .await
        .unwrap();
        (row.get("o"), row.get("c"))
    }
}

/// The certificate a Traefik serves for the domain, verified against Pebble's root: its DER.
async fn served_certificate(websecure_port: u16, root: &reqwest::Certificate) -> Option<Vec<u8>> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root.clone())
        .resolve(DOMAIN, SocketAddr::from(([127, 0, 0, 1], websecure_port)))
        .tls_info(true)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client.get(format!("https://{DOMAIN}:{websecure_port}/")).send().await.ok()?;
    let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

async fn eventually_served(websecure_port: u16, root: &reqwest::Certificate, not: Option<&[u8]>) -> Vec<u8> {
    for _ in 0..300 {
        if let Some(served) = served_certificate(websecure_port, root).await
            && Some(served.as_slice()) != not
        {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "Traefik on {websecure_port} never served a (new) certificate for {DOMAIN} that Pebble's root verifies"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_order_serves_every_edge_proxy_and_a_renewal_reaches_them_without_a_restart() {
    let bench = Bench::start().await;
    let (first_port, second_port) = (free_port(), free_port());
    // Traefik is told to send challenges to the second replica, and polls the first: whichever
    // replica leads, the answer is the database's.
    let challenge_url = format!("http://127.0.0.1:{second_port}");
    let mut managers =
        [bench.manager(first_port, &challenge_url), bench.manager(second_port, &challenge_url)];
    let (mut edge_a, tls_a) = bench.traefik("edge-a", bench.challenge_port, first_port);
    let (mut edge_b, tls_b) = bench.traefik("edge-b", free_port(), second_port);
    let root = bench.issuing_root().await;

    let first_a = eventually_served(tls_a, &root, None).await;
    let first_b = eventually_served(tls_b, &root, None).await;
    assert_eq!(first_a, first_b, "both edge proxies serve the one certificate");
    assert_eq!(
        bench.pebble_log_count("Added order"),
        1,
        "one order for two replicas: {}",
        bench.pebble.log()
    );
    assert_eq!(bench.pebble_log_count("Issued certificate serial"), 1);
    let (_, sealed_key) = bench.stored().await.expect("the certificate is stored");
    assert!(!String::from_utf8_lossy(&sealed_key).contains("PRIVATE KEY"), "the key is stored in clear");
    assert_eq!(bench.leftovers().await, (0, 0), "the order is over, its challenge answers gone");
    let leaders = managers.iter().filter(|m| m.log().contains("leading:")).count();
    assert_eq!(leaders, 1, "one replica led");

    // Without the token the keys are nobody's; a token that is not a challenge's is not found.
    assert_eq!(http_status(&format!("http://127.0.0.1:{first_port}/traefik")), Some(401));
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{first_port}/.well-known/acme-challenge/nope")),
        Some(404)
    );
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{first_port}/.well-known/acme-challenge/..%2f")),
        Some(404)
    );

    let renew = std::process::Command::new(env!("CARGO_BIN_EXE_voting"))
        .args(["certs", "renew", DOMAIN])
        .env("DATABASE_URL", bench.postgres.url())
        .output()
        .unwrap();
    assert!(renew.status.success(), "{}", String::from_utf8_lossy(&renew.stderr));
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_voting"))
        .args(["certs", "renew", "nobody.voting.test"])
        .env("DATABASE_URL", bench.postgres.url())
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "renewing a certificate that does not exist says so");

    let renewed_a = eventually_served(tls_a, &root, Some(&first_a)).await;
    let renewed_b = eventually_served(tls_b, &root, Some(&first_b)).await;
    assert_eq!(renewed_a, renewed_b);
    assert_eq!(bench.pebble_log_count("Added order"), 2, "one order per renewal");
    assert_eq!(bench.pebble_log_count("Issued certificate serial"), 2);
    assert!(edge_a.is_running() && edge_b.is_running(), "the edge proxies were not restarted");
    assert!(managers.iter_mut().all(Process::is_running));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_in_the_middle_of_an_order_is_succeeded_by_one_that_completes_the_same_order() {
    let bench = Bench::start().await;
    let (first_port, second_port) = (free_port(), free_port());
    let challenge_url = format!("http://127.0.0.1:{second_port}");
    let (_edge, tls) = bench.traefik("edge", bench.challenge_port, second_port);
    let mut first = bench.manager(first_port, &challenge_url);

    let mut recorded = None;
    for _ in 0..1500 {
        recorded = sqlx::query_scalar::<_, String>("SELECT order_url FROM acme_orders")
            .fetch_optional(&bench.db)
            .await
            .unwrap();
        if recorded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recorded = recorded.unwrap_or_else(|| panic!("no order was recorded: {}", first.log()));
    // Killed the moment its order is recorded: it waits 2 s after handing in its challenge
    // before it first asks whether the order is ready, so it cannot have finished.
    first.kill();
    assert!(bench.stored().await.is_none(), "the first leader finished before it was killed");

    let second = bench.manager(second_port, &challenge_url);
    let root = bench.issuing_root().await;
    eventually_served(tls, &root, None).await;
    let (order_url, _) = bench.stored().await.unwrap();
    assert_eq!(order_url, recorded, "the next leader completed the order it found: {}", second.log());
    assert!(second.log().contains("resuming the recorded order"), "{}", second.log());
    assert_eq!(bench.pebble_log_count("Added order"), 1, "no second order: {}", bench.pebble.log());
    assert_eq!(bench.pebble_log_count("Issued certificate serial"), 1);
}

/// Answers every A query with 127.0.0.1, and other queries with no records, until dropped.
struct DnsResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DnsResponder {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buffer) else { continue };
                if let Some(answer) = dns_answer(&buffer[..len]) {
                    socket.send_to(&answer, from).ok();
                }
            }
        });
        Self { addr, stop, thread: Some(thread) }
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// The answer to a one-question query: the header and question echoed, and one A record
/// (127.0.0.1) when the question is for one.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let question_end = end + 5;
    let question = query.get(12..question_end)?;
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut answer = Vec::with_capacity(question_end + 16);
    answer.extend_from_slice(&query[..2]);
    answer.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    answer.extend_from_slice(question);
    if is_a {
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(answer)
}

/// Pebble's own HTTPS certificate (Debian ships none): a CA of the test's, trusted by the
/// managers through ACME_CA_ROOT, and a certificate for 127.0.0.1 it signs.
fn write_pebble_listener_certificate(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "voting test CA for Pebble");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let certificate = params.signed_by(&key, &ca).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca.pem());
    write("pebble.pem", certificate.pem());
    write("pebble.key", key.serialize_pem());
}

fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

/// The status of a plain GET, from a blocking context.
fn http_status(url: &str) -> Option<u16> {
    let url = url.to_owned();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
            client.get(url).send().await.ok().map(|response| response.status().as_u16())
        })
    })
    .join()
    .ok()
    .flatten()
}

#[tokio::test]
async fn a_database_that_never_answers_does_not_hold_a_replica_trying_for_the_leadership() {
    // Accepts connections (the kernel does, into the backlog) and never says a word: a
    // Pgpool-II whose node died, as a client sees it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options: sqlx::postgres::PgConnectOptions =
        format!("postgres://voting_certs@{}/voting", silent.local_addr().unwrap()).parse().unwrap();
    let sealer = voting::certs::seal::Sealer::from_secret(SECRET).unwrap();
    let started = std::time::Instant::now();
    let tried = voting::certs::store::Leader::try_acquire(&options, sealer).await;
    assert!(tried.is_err(), "a silent database gave the leadership");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
}
