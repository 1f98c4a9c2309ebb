"""PostgreSQL's roles as a new cluster gets them (deploy/docker/postgres/pgnode.py's bootstrap)
and its client authentication (deploy/postgres/pg_hba.conf), on a real server: each service
logs in to its own database only, Pgpool-II's checks may read the monitoring views and nothing
more, and the superuser cannot log in over the network. What the services may do once logged
in is `voting migrate`'s to grant (crates/voting/tests/system/roles.rs); the schema and the
grants are applied here as it applies them (the migrations as the owner, then the grants), so
that the certificate manager's privileges are checked too.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from haproxy_harness import free_port, wait_until

DEPLOY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEPLOY / "docker" / "postgres"))
sys.path.insert(0, str(DEPLOY / "docker" / "common"))
import pgnode  # noqa: E402
from voting_common import render_file  # noqa: E402

PG_BIN = Path(pgnode.PG_BIN)
MIGRATIONS = DEPLOY.parent / "crates" / "voting-core" / "migrations"
GRANTS = MIGRATIONS / "postgres-service-roles.sql"
PASSWORDS = {
    "DATABASE_PASSWORD": "owner pw",
    "REPMGR_PASSWORD": "repmgr pw",
    "DATABASE_WORKER_PASSWORD": "worker pw",
    "DATABASE_RESULT_PASSWORD": "result pw",
    "DATABASE_CERTS_PASSWORD": "certs pw",
    "PGPOOL_CHECK_PASSWORD": "check pw",
}
ROLE_PASSWORDS = {
    "voting": "DATABASE_PASSWORD",
    "voting_worker": "DATABASE_WORKER_PASSWORD",
    "voting_result": "DATABASE_RESULT_PASSWORD",
    "voting_certs": "DATABASE_CERTS_PASSWORD",
    "pgpool_check": "PGPOOL_CHECK_PASSWORD",
}


def as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@unittest.skipUnless((PG_BIN / "postgres").exists(), "PostgreSQL 15 is not installed (scripts/install-test-deps)")
class ANewCluster(unittest.TestCase):
    work: Path
    port: int
    server: subprocess.Popen
    settings: pgnode.Settings

    @classmethod
    def setUpClass(cls) -> None:
        cls.work = Path(tempfile.mkdtemp(prefix="postgres-roles-test-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(cls.work, account.pw_uid, account.pw_gid)
        data = cls.work / "data"
        cls.settings = pgnode.settings_from(
            {"NODE_ID": "1", "NODE_NAME": "pg-1", "NODES": "pg-1,pg-2,pg-3", "DATABASE": "voting"}
            | {"DATABASE_USER": "voting", "CLUSTER_SUBNET": "127.0.0.1/32", **PASSWORDS}
        )
        # As pgnode.init_primary initialises it (no superuser password), with the shipped pg_hba.conf.
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "--username=postgres", "--auth-local=peer"]
        subprocess.run(as_postgres([*initdb, "--auth-host=scram-sha-256"]), check=True, capture_output=True)
        hba = render_file(str(DEPLOY / "postgres" / "pg_hba.conf"), pgnode.template_values(cls.settings))
        (data / "pg_hba.conf").write_text(hba)
        cls.port = free_port()
        server = [str(PG_BIN / "postgres"), "-D", str(data), "-k", str(cls.work), "-p", str(cls.port)]
        cls.server = subprocess.Popen(
            as_postgres([*server, "-c", "listen_addresses=127.0.0.1"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: cls.local("SELECT 1") == "1" or None, 30, "PostgreSQL answers")
            cls.local(pgnode.bootstrap_sql(cls.settings))
            # As `voting migrate` runs: every migration, then the grants.
            cls.as_owner(*sorted((MIGRATIONS / "postgres").glob("*.sql")), GRANTS)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.terminate()
        cls.server.wait(30)
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def local(cls, sql: str, database: str = "postgres") -> str | None:
        """As postgres over the unix socket (peer), as pgnode does; None if psql fails."""
        psql = [str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(cls.work), "-p", str(cls.port)]
        answer = subprocess.run(as_postgres([*psql, "-d", database]), input=sql, capture_output=True, text=True)
        return answer.stdout.strip() if answer.returncode == 0 else None

    @classmethod
    def as_owner(cls, *files: Path) -> None:
        """Runs the SQL files in the application's database as the schema's owner, as `voting
        migrate` does."""
        sql = "\n".join(["SET ROLE voting;", *(path.read_text() for path in files)])
        if cls.local(sql, "voting") is None:
            raise AssertionError(f"{', '.join(path.name for path in files)} apply as the owner")

    def over_tcp(self, user: str, database: str, sql: str = "SELECT 1", password: str = "") -> tuple[bool, str]:
        """As a client of the network would, with the role's password from the secrets unless
        another is given: whether it worked, and the answer or the error."""
        password = password or PASSWORDS.get(ROLE_PASSWORDS.get(user, ""), "a guess")
        psql = [str(PG_BIN / "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", database]
        env = {"PATH": os.environ["PATH"], "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
        answer = subprocess.run([*psql, "-c", sql], capture_output=True, text=True, env=env, timeout=30)
        return answer.returncode == 0, (answer.stdout if answer.returncode == 0 else answer.stderr).strip()

    def test_each_service_logs_in_to_the_application_database_only(self):
        for user in ("voting", "voting_worker", "voting_result", "voting_certs"):
            self.assertEqual(self.over_tcp(user, "voting"), (True, "1"), user)
            worked, error = self.over_tcp(user, "postgres")
            self.assertFalse(worked, user)
            self.assertIn("no pg_hba.conf entry", error)

    def test_the_superuser_cannot_log_in_over_the_network(self):
        for database in ("postgres", "voting"):
            worked, error = self.over_tcp("postgres", database)
            self.assertFalse(worked)
            self.assertIn("no pg_hba.conf entry", error)

    def test_only_postgres_and_repmgr_are_superusers(self):
        superusers = self.local("SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolsuper")
        self.assertEqual(superusers, "postgres,repmgr")

    def test_the_checks_role_reads_replication_state_and_nothing_of_the_application(self):
        worked, answer = self.over_tcp("pgpool_check", "postgres", "SELECT pg_has_role('pg_monitor', 'MEMBER')")
        self.assertEqual((worked, answer), (True, "t"))
        self.assertFalse(self.over_tcp("pgpool_check", "voting")[0])
        self.assertEqual(self.local("SELECT has_database_privilege('pgpool_check', 'voting', 'CONNECT')"), "f")

    def test_a_cluster_from_before_the_roles_gets_them_and_a_changed_secret_takes_effect(self):
        # As a cluster made before per-service roles, or before the certificate manager: the
        # worker's and the manager's roles are not there (DROP OWNED takes their grants back).
        self.assertIsNotNone(self.local("DROP OWNED BY voting_worker, voting_certs", "voting"))
        self.assertIsNotNone(self.local("DROP ROLE voting_worker, voting_certs"))
        for user in ("voting_worker", "voting_certs"):
            self.assertFalse(self.over_tcp(user, "voting")[0], user)
        rotated = self.settings._replace(result_password="rotated pw")
        try:
            # What a primary's supervisor runs once per term.
            self.assertIsNotNone(self.local(pgnode.service_roles_sql(rotated)))
            for user in ("voting_worker", "voting_certs"):
                self.assertEqual(self.over_tcp(user, "voting"), (True, "1"), user)
            self.assertFalse(self.over_tcp("voting_result", "voting")[0], "the old password")
            self.assertEqual(self.over_tcp("voting_result", "voting", password="rotated pw"), (True, "1"))
        finally:
            self.local(pgnode.service_roles_sql(self.settings))
            # The next `voting migrate` grants the roles made since.
            self.as_owner(GRANTS)

    def test_the_certificate_manager_keeps_its_acme_tables_and_reads_nothing_of_the_votes(self):
        # Each table: a row, and a change to it that the row then shows.
        acme = {
            "acme_accounts": (
                r"(directory_url, credentials) VALUES ('https://ca.test/dir', '\x00')",
                r"credentials = '\x01'",
            ),
            "acme_certificates": (
                "(name, domains, certificate_pem, private_key, not_after, order_url)"
                r" VALUES ('site', ARRAY['a.test'], 'pem', '\x00', now(), 'https://ca.test/order/1')",
                "certificate_pem = 'renewed'",
            ),
            "acme_orders": (
                "(name, domains, order_url) VALUES ('site', ARRAY['a.test'], 'https://ca.test/order/2')",
                r"private_key = '\x01'",
            ),
            "acme_challenges": (
                "(token, key_authorization, order_url) VALUES ('t', 'k', 'https://ca.test/order/2')",
                "key_authorization = 'k.2'",
            ),
        }
        for table, (row, change) in acme.items():
            written = (
                f"INSERT INTO {table} {row}; UPDATE {table} SET {change}; SELECT count(*) FROM {table} WHERE {change}"
            )
            self.assertEqual(self.over_tcp("voting_certs", "voting", written), (True, "1"), table)
            deleted = f"DELETE FROM {table}; SELECT count(*) FROM {table}"
            self.assertEqual(self.over_tcp("voting_certs", "voting", deleted), (True, "0"), table)
        for sql in (
            "SELECT count(*) FROM votes",
            "SELECT count(*) FROM tallies",
            "INSERT INTO tallies (vote, votes) VALUES ('a', 1)",
            "TRUNCATE acme_challenges",
            "DROP TABLE acme_challenges",
            "CREATE TABLE mine (id int)",
        ):
            worked, error = self.over_tcp("voting_certs", "voting", sql)
            self.assertFalse(worked, sql)
            self.assertRegex(error, "permission denied|must be owner", sql)

    def test_the_roles_are_the_ones_the_grants_and_pgpool_name(self):
        grants = GRANTS.read_text()
        pool_hba = (DEPLOY / "pgpool" / "pool_hba.conf").read_text()
        pgpool_conf = (DEPLOY / "pgpool" / "pgpool.conf").read_text()
        for role in (pgnode.WORKER_ROLE, pgnode.RESULT_ROLE, pgnode.CERTS_ROLE):
            self.assertIn(f"rolname = '{role}'", grants)
            self.assertIn(f"TO {role};", grants)
            self.assertIn(role, pool_hba)
        self.assertIn(f"health_check_user = '{pgnode.CHECK_ROLE}'", pgpool_conf)
        self.assertIn(f"sr_check_user = '{pgnode.CHECK_ROLE}'", pgpool_conf)


if __name__ == "__main__":
    unittest.main()
