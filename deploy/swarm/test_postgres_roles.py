"""PostgreSQL's roles as a new cluster gets them (deploy/docker/postgres/pgnode.py's bootstrap)
and its client authentication (deploy/postgres/pg_hba.conf), on a real server: each service
logs in to its own database only, Pgpool-II's checks may read the monitoring views and nothing
more, and the superuser cannot log in over the network. What the services may do once logged
in is `voting migrate`'s to grant (crates/voting/tests/system/roles.rs).

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
GRANTS = DEPLOY.parent / "crates" / "voting-core" / "migrations" / "postgres-service-roles.sql"
PASSWORDS = {
    "DATABASE_PASSWORD": "owner pw",
    "REPMGR_PASSWORD": "repmgr pw",
    "DATABASE_WORKER_PASSWORD": "worker pw",
    "DATABASE_RESULT_PASSWORD": "result pw",
    "PGPOOL_CHECK_PASSWORD": "check pw",
}
ROLE_PASSWORDS = {
    "voting": "DATABASE_PASSWORD",
    "voting_worker": "DATABASE_WORKER_PASSWORD",
    "voting_result": "DATABASE_RESULT_PASSWORD",
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
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.terminate()
        cls.server.wait(30)
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def local(cls, sql: str) -> str | None:
        """As postgres over the unix socket (peer), as pgnode does; None if psql fails."""
        psql = [str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(cls.work), "-p", str(cls.port)]
        answer = subprocess.run(as_postgres([*psql, "-d", "postgres"]), input=sql, capture_output=True, text=True)
        return answer.stdout.strip() if answer.returncode == 0 else None

    def over_tcp(self, user: str, database: str, sql: str = "SELECT 1", password: str = "") -> tuple[bool, str]:
        """As a client of the network would, with the role's password from the secrets unless
        another is given: whether it worked, and the answer or the error."""
        password = password or PASSWORDS.get(ROLE_PASSWORDS.get(user, ""), "a guess")
        psql = [str(PG_BIN / "psql"), "-XAtq", "-h", "127.0.0.1", "-p", str(self.port), "-U", user, "-d", database]
        env = {"PATH": os.environ["PATH"], "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
        answer = subprocess.run([*psql, "-c", sql], capture_output=True, text=True, env=env, timeout=30)
        return answer.returncode == 0, (answer.stdout if answer.returncode == 0 else answer.stderr).strip()

    def test_each_service_logs_in_to_the_application_database_only(self):
        for user in ("voting", "voting_worker", "voting_result"):
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
        # As a cluster made before per-service roles: the worker's role is not there.
        self.local("REVOKE CONNECT ON DATABASE voting FROM voting_worker; DROP ROLE voting_worker")
        self.assertFalse(self.over_tcp("voting_worker", "voting")[0])
        rotated = self.settings._replace(result_password="rotated pw")
        try:
            # What a primary's supervisor runs once per term.
            self.assertIsNotNone(self.local(pgnode.service_roles_sql(rotated)))
            self.assertEqual(self.over_tcp("voting_worker", "voting"), (True, "1"))
            self.assertFalse(self.over_tcp("voting_result", "voting")[0], "the old password")
            self.assertEqual(self.over_tcp("voting_result", "voting", password="rotated pw"), (True, "1"))
        finally:
            self.local(pgnode.service_roles_sql(self.settings))

    def test_the_roles_are_the_ones_the_grants_and_pgpool_name(self):
        grants = GRANTS.read_text()
        pool_hba = (DEPLOY / "pgpool" / "pool_hba.conf").read_text()
        pgpool_conf = (DEPLOY / "pgpool" / "pgpool.conf").read_text()
        for role in (pgnode.WORKER_ROLE, pgnode.RESULT_ROLE):
            self.assertIn(f"rolname = '{role}'", grants)
            self.assertIn(f"TO {role};", grants)
            self.assertIn(role, pool_hba)
        self.assertIn(f"health_check_user = '{pgnode.CHECK_ROLE}'", pgpool_conf)
        self.assertIn(f"sr_check_user = '{pgnode.CHECK_ROLE}'", pgpool_conf)


if __name__ == "__main__":
    unittest.main()
