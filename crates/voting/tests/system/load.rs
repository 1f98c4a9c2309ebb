//! `voting load --verify` against the real system: nothing lost, nothing extra, and a
//! checker that notices when something is.

use std::time::Duration;

use voting_load::{LoadPlan, Report};
use voting_testkit::free_port;

use crate::helpers::{SETTLE, TestSystem, UpProcess, eventually};

fn plan(vote_url: &str, result_url: &str, votes: u64, voters: Option<u64>) -> LoadPlan {
    LoadPlan {
        url: vote_url.to_owned(),
        votes: Some(votes),
        duration: None,
        concurrency: 32,
        rate: None,
        voters,
        mix: vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 1)],
        form: false,
        timeout: Duration::from_secs(10),
        verify: Some(result_url.to_owned()),
        verify_timeout: Duration::from_secs(60),
        connection: Default::default(),
        progress_bar: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_votes_from_voters_who_change_their_minds_are_counted_exactly() {
    let system = TestSystem::start().await;
    let report =
        voting_load::run(plan(&system.vote_url, &system.result_url, 20_000, Some(2_000))).await.unwrap();
    println!("{report}");
    let verify = report.verify.as_ref().unwrap();
    assert_eq!(report.acknowledged, 20_000);
    assert_eq!((verify.lost, verify.extra, verify.unknown), (0, 0, 0));
    assert_eq!(verify.expected, 2_000, "each voter counts once");
    assert!(verify.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_vote_the_store_lost() {
    let system = TestSystem::start().await;
    // Make the store silently drop the first vote it is given, as a buggy worker would.
    system
        .postgres
        .psql(
            "CREATE TABLE lost_once (done boolean);
             CREATE FUNCTION lose_one_vote() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NOT EXISTS (SELECT 1 FROM lost_once) THEN
                     INSERT INTO lost_once VALUES (true);
                     RETURN NULL;
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER lose_one_vote BEFORE INSERT ON votes FOR EACH ROW EXECUTE FUNCTION lose_one_vote();",
        )
        .unwrap();
    let mut plan = plan(&system.vote_url, &system.result_url, 500, None);
    plan.verify_timeout = Duration::from_secs(3);
    let report: Report = voting_load::run(plan).await.unwrap();
    let verify = report.verify.unwrap();
    assert_eq!((verify.lost, verify.extra), (1, 0), "{verify:?}");
    assert!(!verify.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_vote_counted_that_nobody_cast() {
    let system = TestSystem::start().await;
    let mut plan = plan(&system.vote_url, &system.result_url, 2_000, None);
    plan.verify_timeout = Duration::from_secs(3);
    let load = tokio::spawn(voting_load::run(plan));
    // Once the run is under way, slip in a vote that never went through the vote service.
    assert!(eventually(SETTLE, async || system.results().await.total >= 10).await);
    system
        .postgres
        .psql("INSERT INTO votes (id, vote) VALUES ('ffffffffffffffffffffffffffffffff', 'a')")
        .unwrap();
    let verify = load.await.unwrap().unwrap().verify.unwrap();
    assert_eq!((verify.lost, verify.extra), (0, 1), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_command_verifies_voting_up_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let (vote_port, result_port) = (free_port(), free_port());
    let mut up = UpProcess::start(data.path(), vote_port, result_port).await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_voting"))
        .args(["load", "--url", &up.vote_url, "--votes", "20000", "--voters", "2000", "--mix", "a=3,b=1"])
        .args(["--verify", &up.result_url, "--json"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    println!("voting up: {report}");
    assert_eq!(report["acknowledged"], 20_000);
    assert_eq!(report["verify"]["lost"], 0);
    assert_eq!(report["verify"]["extra"], 0);
    assert_eq!(report["verify"]["expected"], 2_000);
    up.process.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_the_run_is_reported_where_it_happened_and_loses_nothing() {
    let mut system = TestSystem::start().await;
    let mut plan = plan(&system.vote_url, &system.result_url, 0, None);
    (plan.votes, plan.duration, plan.rate) = (None, Some(Duration::from_secs(4)), Some(200.0));
    let load = tokio::spawn(voting_load::run(plan));

    // The failure is scheduled into the run: about 1 s of votes before it, 2 s after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.redis.kill();
    let down_for = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| system.redis.restart()).unwrap();
    let down_for = down_for.elapsed().as_secs_f64();

    let report = load.await.unwrap().unwrap();
    println!("{report}");
    let verify = report.verify.as_ref().unwrap();
    assert_eq!((verify.lost, verify.extra), (0, 0), "refused votes are not counted, acknowledged ones are");
    assert!(report.refused > 0, "votes were refused while Redis was down");
    let outage = report.outages.iter().find(|o| o.seconds() >= 0.5).expect("the outage is reported");
    assert!((0.5..2.0).contains(&outage.from_s), "it began when Redis died: {outage:?}");
    assert!(
        outage.seconds() >= down_for * 0.8,
        "it lasted as long as Redis was down ({down_for:.2} s): {outage:?}"
    );
    assert_eq!(report.longest_outage_s, outage.seconds());
}

/// A listener on `addr` that never accepts and whose queue is full: the kernel drops every
/// further SYN, as a dead node's address does.
fn silent_listener(addr: std::net::SocketAddr) -> (socket2::Socket, Vec<std::net::TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(0).unwrap();
    let queued = (0..2)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (socket, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_first_address_is_silent_is_reached_at_the_next_and_no_vote_is_lost() {
    let system = TestSystem::start().await;
    let port: u16 = system.vote_url.rsplit(':').next().unwrap().parse().unwrap();
    let dead = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let _silent = silent_listener(dead);
    assert!(
        std::net::TcpStream::connect_timeout(&dead, Duration::from_millis(300)).is_err(),
        "the first address does not answer"
    );
    let mut plan = plan(&format!("http://vote.test:{port}"), &system.result_url, 300, None);
    plan.connection = voting_load::Connection::new(
        &[],
        vec![voting_load::parse_resolve("vote.test:127.0.0.2,127.0.0.1").unwrap()],
    )
    .unwrap();
    let report = voting_load::run(plan).await.unwrap();
    let verify = report.verify.as_ref().unwrap();
    assert_eq!((report.acknowledged, report.unknown, report.refused), (300, 0, 0), "{report}");
    assert!(verify.passed(), "{report}");
}
