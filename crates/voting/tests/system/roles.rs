//! The services' own PostgreSQL roles, as a deployment makes them (deploy/docker/postgres/pgnode.py):
//! `voting migrate` gives each what its service needs, and nothing lets them change the schema or
//! each other's data.

use voting_core::store::postgres::PostgresStore;
use voting_core::store::{ChangeFeed, StoreError, VoteStore};
use voting_core::{OptionId, QueuePosition, QueuedVote, Vote, VoterId};
use voting_testkit::PostgresServer;

/// A server with the application's database owned by `voting`, as on a deployed cluster.
async fn cluster() -> PostgresServer {
    let postgres =
        tokio::task::spawn_blocking(PostgresServer::start).await.unwrap().expect("postgres starts");
    // One statement per call: CREATE DATABASE cannot run in the transaction psql -c makes.
    for sql in [
        "CREATE ROLE voting LOGIN",
        "CREATE DATABASE voting OWNER voting",
        "REVOKE ALL ON DATABASE voting FROM PUBLIC",
    ] {
        postgres.psql(sql).unwrap();
    }
    postgres
}

fn make_service_roles(postgres: &PostgresServer) {
    for sql in [
        "CREATE ROLE voting_worker LOGIN",
        "CREATE ROLE voting_result LOGIN",
        "GRANT CONNECT ON DATABASE voting TO voting_worker, voting_result",
    ] {
        postgres.psql(sql).unwrap();
    }
}

fn store_as(postgres: &PostgresServer, role: &str) -> PostgresStore {
    PostgresStore::connect_lazy(&format!("postgres://{role}@127.0.0.1:{}/voting", postgres.port()), 2)
        .unwrap()
}

/// The SQLSTATE a statement run as `store`'s role fails with, or None if it succeeds.
async fn refusal(store: &PostgresStore, sql: &'static str) -> Option<String> {
    match sqlx::raw_sql(sql).execute(store.pool()).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(error)) => Some(error.code().unwrap_or_default().into_owned()),
        Err(other) => panic!("{sql}: not a database error: {other}"),
    }
}

const INSUFFICIENT_PRIVILEGE: Option<&str> = Some("42501");

fn a_vote(option: &str, major: u64) -> QueuedVote {
    QueuedVote {
        position: QueuePosition { major, minor: 0 },
        vote: Vote { voter: VoterId::random(), option: OptionId::parse(option).unwrap(), cast_at_ms: 0 },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_made_after_the_schema_get_their_privileges_at_the_next_migrate() {
    let postgres = cluster().await;
    let owner = store_as(&postgres, "voting");
    owner.migrate().await.expect("migrates without the service roles");
    make_service_roles(&postgres);
    let worker = store_as(&postgres, "voting_worker");
    assert!(matches!(worker.apply(&[a_vote("a", 1)]).await, Err(StoreError::Refused(_))));

    owner.migrate().await.expect("migrates again");
    worker.apply(&[a_vote("a", 1)]).await.expect("the worker stores a batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_may_store_votes_and_nothing_more() {
    let postgres = cluster().await;
    make_service_roles(&postgres);
    store_as(&postgres, "voting").migrate().await.unwrap();
    let worker = store_as(&postgres, "voting_worker");

    worker.apply(&[a_vote("a", 1), a_vote("b", 2)]).await.expect("the worker stores a batch");
    assert_eq!(worker.tallies().await.unwrap().values().sum::<u64>(), 2);
    for sql in [
        "DELETE FROM votes",
        "TRUNCATE votes",
        "DROP TABLE tallies",
        "ALTER TABLE votes ADD COLUMN note text",
        "CREATE TABLE mine (id int)",
        "CREATE OR REPLACE FUNCTION tally_inserted_votes() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'",
        "DELETE FROM _sqlx_migrations",
    ] {
        assert_eq!(refusal(&worker, sql).await.as_deref(), INSUFFICIENT_PRIVILEGE, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_service_may_read_the_tallies_and_listen_and_nothing_more() {
    let postgres = cluster().await;
    make_service_roles(&postgres);
    let owner = store_as(&postgres, "voting");
    owner.migrate().await.unwrap();
    let result = store_as(&postgres, "voting_result");

    let mut changes = result.changes().await.expect("the result service listens");
    store_as(&postgres, "voting_worker").apply(&[a_vote("c", 1)]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), changes.changed())
        .await
        .expect("hears of the batch")
        .unwrap();
    assert_eq!(result.tallies().await.unwrap().get(&OptionId::parse("c").unwrap()), Some(&1));
    for sql in [
        "SELECT id FROM votes",
        "INSERT INTO votes (id, vote) VALUES ('x', 'a')",
        "UPDATE tallies SET votes = votes + 1",
        "DELETE FROM tallies",
        "CREATE TABLE mine (id int)",
    ] {
        assert_eq!(refusal(&result, sql).await.as_deref(), INSUFFICIENT_PRIVILEGE, "{sql}");
    }
}
