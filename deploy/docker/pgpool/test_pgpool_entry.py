"""Unit tests of the Pgpool-II image's entrypoint.

python3 -m unittest discover -s deploy/docker/pgpool
"""

from __future__ import annotations

import re
import sys
import tempfile
import unittest
from pathlib import Path

# pgpool_entry and, as in the image, voting_common beside it on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))

import pgpool_entry
from python_minimal import PYTHON3_MINIMAL, top_level_imports

TEMPLATES = Path(__file__).resolve().parents[2] / "pgpool"


def environment(**overrides: str) -> dict[str, str]:
    env = {
        "NODES": "pg-1,pg-2,pg-3",
        "DATABASE": "voting",
        "DATABASE_USER": "voting",
        "DATABASE_PASSWORD": "app-pw",
        "DATABASE_WORKER_PASSWORD": "worker-pw",
        "DATABASE_RESULT_PASSWORD": "result-pw",
        "DATABASE_CERTS_PASSWORD": "certs-pw",
        "PGPOOL_CHECK_PASSWORD": "check-pw",
        "TEMPLATE_DIR": str(TEMPLATES),
    }
    env.update(overrides)
    return env


class Files(unittest.TestCase):
    def test_every_placeholder_of_the_templates_has_a_value(self):
        files = pgpool_entry.files(environment())
        for name in ("pgpool.conf", "pool_hba.conf"):
            self.assertNotIn("${", files[name], name)

    def test_the_backends_are_the_nodes_by_name(self):
        conf = pgpool_entry.files(environment())["pgpool.conf"]
        for number, node in enumerate(("pg-1", "pg-2", "pg-3")):
            self.assertIn(f"backend_hostname{number} = '{node}'", conf)
            self.assertIn(f"backend_application_name{number} = '{node}'", conf)

    def test_clients_are_allowed_from_the_attached_networks_by_default(self):
        hba = pgpool_entry.files(environment())["pool_hba.conf"]
        self.assertRegex(
            hba, r"host\s+voting\s+voting,voting_worker,voting_result,voting_certs\s+samenet\s+scram-sha-256"
        )
        hba = pgpool_entry.files(environment(CLUSTER_SUBNET="10.0.9.0/24"))["pool_hba.conf"]
        self.assertIn("10.0.9.0/24", hba)

    def test_pool_passwd_holds_every_service_role_and_the_checks_role_and_no_superuser(self):
        self.assertEqual(
            pgpool_entry.files(environment())["pool_passwd"],
            "voting:TEXTapp-pw\nvoting_worker:TEXTworker-pw\nvoting_result:TEXTresult-pw\n"
            "voting_certs:TEXTcerts-pw\npgpool_check:TEXTcheck-pw\n",
        )

    def test_the_checks_run_as_the_checks_role(self):
        conf = pgpool_entry.files(environment())["pgpool.conf"]
        self.assertIn("sr_check_user = 'pgpool_check'", conf)
        self.assertIn("health_check_user = 'pgpool_check'", conf)
        self.assertNotIn("'postgres'\n", conf.replace("_database = 'postgres'", ""))

    def test_every_query_naming_an_acme_table_goes_to_the_primary(self):
        conf = pgpool_entry.files(environment())["pgpool.conf"]
        setting = re.search(r"^primary_routing_query_pattern_list = '(.*)'$", conf, re.MULTILINE)
        assert setting is not None, "pgpool.conf sets primary_routing_query_pattern_list"
        # As Pgpool-II reads it: semicolon-separated, each matching the whole query, whatever the
        # case, `.` matching line breaks too (POSIX extended, without REG_NEWLINE).
        patterns = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in re.split(r"(?<!\\);", setting.group(1)) if p]

        def to_primary(query: str) -> bool:
            return any(pattern.fullmatch(query) for pattern in patterns)

        self.assertTrue(to_primary("SELECT key_authorization FROM acme_challenges WHERE token = $1"))
        self.assertTrue(to_primary("SELECT name, not_after\n  FROM ACME_CERTIFICATES\n ORDER BY name"))
        self.assertFalse(to_primary("SELECT vote, votes FROM tallies"))

    def test_a_password_file_wins(self):
        with tempfile.NamedTemporaryFile("w", suffix=".secret") as file:
            file.write("from-file\n")
            file.flush()
            passwd = pgpool_entry.files(environment(DATABASE_PASSWORD_FILE=file.name))["pool_passwd"]
        self.assertIn("voting:TEXTfrom-file\n", passwd)

    def test_missing_settings_are_refused(self):
        for bad in (
            environment(DATABASE_WORKER_PASSWORD=""),
            environment(DATABASE_CERTS_PASSWORD=""),
            environment(PGPOOL_CHECK_PASSWORD=""),
            environment(NODES="pg-1"),
            environment(DATABASE=""),
        ):
            with self.assertRaises(ValueError):
                pgpool_entry.files(bad)

    def test_a_password_with_a_line_break_is_refused(self):
        with self.assertRaises(ValueError):
            pgpool_entry.password({"X": "a\nb"}, "X")

    def test_pcp_conf_is_an_md5_entry(self):
        self.assertRegex(pgpool_entry.pcp_conf("x"), r"^pgpool:[0-9a-f]{32}\n$")

    def test_pgpool_runs_in_the_foreground_forgetting_old_node_states(self):
        command = pgpool_entry.command("/run/p")
        self.assertEqual(command[:3], ["/usr/sbin/pgpool", "-n", "-D"])
        self.assertIn("/run/p/pgpool.conf", command)


class TheImageHasOnlyPythonMinimal(unittest.TestCase):
    def test_imports(self):
        # voting_common is copied into the image beside it.
        allowed = PYTHON3_MINIMAL | {"voting_common"}
        self.assertLessEqual(top_level_imports(Path(pgpool_entry.__file__)), allowed)


if __name__ == "__main__":
    unittest.main()
