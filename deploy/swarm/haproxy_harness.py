"""HAProxy, run for real by the tests of the stack's HAProxy configurations."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import sys
import unittest
from pathlib import Path
from typing import NamedTuple

# The harness helpers every test here shares (free ports, polling): the chaos runner's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from voting_chaos.runner import free_port, wait_until

__all__ = ["free_port", "get", "start_haproxy"]

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_haproxy(test: unittest.TestCase, config: Path, port: int) -> None:
    """Runs HAProxy with `config` until `test` ends; returns once it listens on `port`."""
    proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    test.addCleanup(proxy.wait, 10)
    test.addCleanup(proxy.terminate)

    def listening() -> bool:
        test.assertIsNone(proxy.poll(), "haproxy exited")
        return answers(port)

    wait_until(listening, 10, "haproxy listens", interval=0.05)


class Response(NamedTuple):
    status: int
    text: str


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.read().decode(errors="replace"))
    finally:
        connection.close()
