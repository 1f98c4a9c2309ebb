"""Unit tests of the Pgpool-II image's entrypoint.

    python3 -m unittest discover -s deploy/docker/pgpool
"""

from __future__ import annotations

import ast
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgpool_entry  # noqa: E402

TEMPLATES = Path(__file__).resolve().parents[2] / "pgpool"


def environment(**overrides: str) -> dict[str, str]:
    env = {"NODES": "pg-1,pg-2,pg-3", "DATABASE": "voting", "DATABASE_USER": "voting",
           "DATABASE_PASSWORD": "app-pw", "POSTGRES_PASSWORD": "admin-pw", "TEMPLATE_DIR": str(TEMPLATES)}
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
        self.assertRegex(hba, r"host\s+voting\s+voting\s+samenet\s+scram-sha-256")
        hba = pgpool_entry.files(environment(CLUSTER_SUBNET="10.0.9.0/24"))["pool_hba.conf"]
        self.assertIn("10.0.9.0/24", hba)

    def test_pool_passwd_holds_both_users_in_clear_text_entries(self):
        self.assertEqual(pgpool_entry.files(environment())["pool_passwd"],
                         "voting:TEXTapp-pw\npostgres:TEXTadmin-pw\n")

    def test_a_password_file_wins(self):
        with tempfile.NamedTemporaryFile("w", suffix=".secret") as file:
            file.write("from-file\n")
            file.flush()
            passwd = pgpool_entry.files(environment(DATABASE_PASSWORD_FILE=file.name))["pool_passwd"]
        self.assertIn("voting:TEXTfrom-file\n", passwd)

    def test_missing_settings_are_refused(self):
        for bad in (environment(POSTGRES_PASSWORD=""), environment(NODES="pg-1"), environment(DATABASE="")):
            with self.assertRaises(ValueError):
                pgpool_entry.files(bad)

    def test_a_password_with_a_line_break_is_refused(self):
        with self.assertRaises(ValueError):
            pgpool_entry.secret({"X": "a\nb"}, "X")

    def test_pcp_conf_is_an_md5_entry(self):
        self.assertRegex(pgpool_entry.pcp_conf("x"), r"^pgpool:[0-9a-f]{32}\n$")

    def test_pgpool_runs_in_the_foreground_forgetting_old_node_states(self):
        command = pgpool_entry.command("/run/p")
        self.assertEqual(command[:3], ["/usr/sbin/pgpool", "-n", "-D"])
        self.assertIn("/run/p/pgpool.conf", command)


class TheImageHasOnlyPythonMinimal(unittest.TestCase):
    MINIMAL = {"__future__", "hashlib", "os", "pwd", "re", "sys", "typing"}

    def test_imports(self):
        tree = ast.parse(Path(pgpool_entry.__file__).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        self.assertLessEqual(imported, self.MINIMAL)


if __name__ == "__main__":
    unittest.main()
