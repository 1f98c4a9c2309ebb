"""deploy/swarm/create-secrets, the script the README tells users to run, against a stand-in
`docker` that keeps each secret as a file.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

SWARM = Path(__file__).resolve().parent
SCRIPT = SWARM / "create-secrets"
STACK_SECRETS = set(yaml.safe_load((SWARM / "stack.yml").read_text())["secrets"])

# `docker secret inspect|create|rm NAME`, on files in $SECRETS_STORE.
FAKE_DOCKER = """#!/bin/sh
set -eu
[ "$1" = secret ] || exit 2
file="$SECRETS_STORE/$3"
case "$2" in
    inspect) [ -e "$file" ] ;;
    create) [ ! -e "$file" ] || { echo "secret $3 exists" >&2; exit 1; }; cat > "$file" ;;
    rm) rm "$file" ;;
    *) exit 2 ;;
esac
"""


class CreateSecrets(unittest.TestCase):
    def setUp(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="create-secrets-test-"))
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        (work / "bin").mkdir()
        (work / "bin" / "docker").write_text(FAKE_DOCKER)
        (work / "bin" / "docker").chmod(0o755)
        self.store = work / "store"
        self.store.mkdir()
        self.environment = {"PATH": f"{work / 'bin'}:{os.environ['PATH']}", "SECRETS_STORE": str(self.store)}

    def run_script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(SCRIPT), *args], env=self.environment, capture_output=True, text=True)

    def secrets(self) -> dict[str, str]:
        return {path.name: path.read_text() for path in self.store.iterdir()}

    def test_a_new_swarm_gets_every_secret_the_stack_reads(self) -> None:
        self.assertEqual(self.run_script().returncode, 0)
        secrets = self.secrets()
        self.assertEqual(set(secrets), STACK_SECRETS)
        for user in ("vote", "worker"):
            self.assertEqual(
                secrets[f"redis_{user}_url"], f"redis://{user}:{secrets[f'redis_{user}_password']}@redis-proxy:6379"
            )
        roles = {
            "database": "voting",
            "database_worker": "voting_worker",
            "database_result": "voting_result",
            "database_certs": "voting_certs",
        }
        for name, role in roles.items():
            self.assertEqual(
                secrets[f"{name}_url"], f"postgres://{role}:{secrets[f'{name}_password']}@pgpool:5432/voting"
            )
        for name in ("cookie_secret", "certs_secret", "certs_provider_token"):
            self.assertRegex(secrets[name], r"^[0-9a-f]{64}$")
        for name in (
            "redis_password",
            "redis_replication_password",
            "redis_check_password",
            "sentinel_password",
            "repmgr_password",
            "database_password",
            "database_worker_password",
            "database_result_password",
            "database_certs_password",
            "pgpool_check_password",
        ):
            self.assertRegex(secrets[name], r"^[0-9a-f]{48}$")
        self.assertEqual(len(set(secrets.values())), len(secrets), "every value is its own")

    def test_a_second_run_changes_nothing(self) -> None:
        self.run_script()
        before = self.secrets()
        result = self.run_script()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(self.secrets(), before)

    def test_an_upgrade_gets_only_the_new_secret(self) -> None:
        self.run_script()
        (self.store / "haproxy_stats_password").unlink()
        before = self.secrets()
        result = self.run_script()
        self.assertEqual(result.stdout, "created haproxy_stats_password\n")
        self.assertEqual({k: v for k, v in self.secrets().items() if k in before}, before)

    def test_a_url_is_never_made_for_a_password_it_cannot_read(self) -> None:
        self.run_script()
        (self.store / "redis_vote_url").unlink()
        result = self.run_script()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("redis_vote_password and redis_vote_url go together", result.stderr)
        self.assertNotIn("redis_vote_url", self.secrets())

    def test_replace_makes_every_secret_anew(self) -> None:
        self.run_script()
        before = self.secrets()
        self.assertEqual(self.run_script("--replace").returncode, 0)
        after = self.secrets()
        self.assertEqual(set(after), set(before))
        self.assertTrue(all(after[name] != before[name] for name in before))

    def test_the_script_names_every_secret_of_the_stack(self) -> None:
        listing = re.search(r'SECRETS="([^"]*)"', SCRIPT.read_text())
        assert listing is not None, "create-secrets lists its secrets in SECRETS"
        self.assertEqual(set(listing.group(1).split()), STACK_SECRETS)


if __name__ == "__main__":
    unittest.main()
