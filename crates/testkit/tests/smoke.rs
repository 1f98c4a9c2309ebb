//! Starts each real server, crashes it, restarts it, and checks it still works.

use voting_testkit::{PostgresServer, Process, RedisServer};

#[test]
fn redis_survives_kill_and_restart() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    assert!(redis.command(&["PING"])?.contains("PONG"));
    assert_eq!(redis.command(&["SET", "answer", "42"])?, "+OK");

    redis.kill();
    assert!(!redis.is_running());
    redis.restart()?;
    assert!(redis.is_running());
    assert!(redis.command(&["PING"])?.contains("PONG"));
    // Acknowledged before the kill, so the fsync-always AOF kept it.
    assert_eq!(redis.command(&["GET", "answer"])?, "$2\r\n42");
    Ok(())
}

#[test]
fn postgres_survives_kill_and_restart() -> anyhow::Result<()> {
    let mut pg = PostgresServer::start()?;
    assert_eq!(pg.psql("select 1")?, "1");
    pg.psql("create table t (v int); insert into t values (7)")?;

    pg.kill();
    assert!(!pg.is_running());
    pg.restart()?;
    assert!(pg.is_running());
    assert_eq!(pg.psql("select 1")?, "1");
    // Committed before the kill, so crash recovery replays it.
    assert_eq!(pg.psql("select v from t")?, "7");
    Ok(())
}

#[test]
fn process_output_is_captured() -> anyhow::Result<()> {
    let mut process = Process::spawn(
        "sh",
        &["-c", "echo \"hello $WHO\"; echo oops >&2; exec sleep 60"],
        &[("WHO", "tests")],
    )?;
    assert!(voting_testkit::wait_until(std::time::Duration::from_secs(10), || process
        .log()
        .contains("oops")));
    assert!(process.log().contains("hello tests"));
    assert!(process.is_running());
    let status = process.terminate().expect("an exit status");
    assert!(!status.success());
    assert!(!process.is_running());
    Ok(())
}
