"""The Redis proxies' HAProxy configuration (deploy/haproxy/haproxy.cfg), rendered by the
entrypoint that renders it in the stack (voting-init) and run for real: what its stats page
shows, and to whom. No Redis node answers here; the proxy serves its own pages regardless.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from haproxy_harness import free_port, get, start_haproxy

DEPLOY = Path(__file__).resolve().parents[1]
PASSWORD = "stats-password-for-the-test"


class TheRedisProxy(unittest.TestCase):
    def setUp(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="redis-proxy-test-"))
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        (work / "redis_check_password").write_text("check-password")
        (work / "haproxy_stats_password").write_text(PASSWORD)
        self.stats_port, redis_port = free_port(), free_port()
        # Only what the container would have: every *_FILE variable is read as a secret.
        environment = {
            "PATH": os.environ["PATH"],
            "REDIS_PORT": str(redis_port),
            "HAPROXY_STATS_PORT": str(self.stats_port),
            "REDIS_1_HOST": "127.0.0.1",
            "REDIS_2_HOST": "127.0.0.1",
            "REDIS_3_HOST": "127.0.0.1",
            "REDIS_CHECK_PASSWORD_FILE": str(work / "redis_check_password"),
            "HAPROXY_STATS_PASSWORD_FILE": str(work / "haproxy_stats_password"),
        }
        rendered = work / "haproxy.cfg"
        template = DEPLOY / "haproxy" / "haproxy.cfg"
        init = DEPLOY / "docker" / "init" / "voting-init"
        subprocess.run(["sh", str(init), "render", f"{template}:{rendered}", "--", "true"], env=environment, check=True)
        start_haproxy(self, rendered, self.stats_port)

    def credentials(self, user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def test_its_health_check_needs_no_credentials(self) -> None:
        self.assertEqual(get(self.stats_port, "/healthz").status, 200)

    def test_the_stats_page_needs_the_operators_credentials(self) -> None:
        self.assertEqual(get(self.stats_port, "/stats").status, 401)
        self.assertEqual(get(self.stats_port, "/stats;csv", headers=self.credentials("operator", "wrong")).status, 401)
        self.assertEqual(get(self.stats_port, "/stats;csv", headers=self.credentials("operator", PASSWORD)).status, 200)

    def test_the_stats_page_does_not_tell_the_version(self) -> None:
        page = get(self.stats_port, "/stats", headers=self.credentials("operator", PASSWORD))
        self.assertEqual(page.status, 200)
        self.assertIn("redis_master", page.text)
        version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=True).stdout.split()[2]
        self.assertNotIn(version, page.text)


if __name__ == "__main__":
    unittest.main()
