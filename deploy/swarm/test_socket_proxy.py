"""The Docker API proxy in front of Traefik (deploy/swarm/socket-proxy.cfg), run for real:
HAProxy with the shipped configuration, in front of a stand-in daemon on a Unix socket that
records what reaches it. Only the listening port and the socket's path are changed.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import http.server
import shutil
import socketserver
import tempfile
import threading
import unittest
from pathlib import Path

from haproxy_harness import free_port, get, start_haproxy

CONFIG = Path(__file__).resolve().parent / "socket-proxy.cfg"


class StandInDaemon(socketserver.ThreadingUnixStreamServer):
    """Answers 200 to every request and remembers each path it was asked for."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.paths: list[str] = []
        super().__init__(path, Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    server: StandInDaemon

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    # The client's address on a Unix socket is "", which the base class cannot format.
    def address_string(self) -> str:
        return "daemon"


class TheDockerApiProxy(unittest.TestCase):
    def setUp(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="socket-proxy-test-"))
        self.addCleanup(shutil.rmtree, work, ignore_errors=True)
        daemon_socket = str(work / "docker.sock")
        self.daemon = StandInDaemon(daemon_socket)
        threading.Thread(target=self.daemon.serve_forever, daemon=True).start()
        self.addCleanup(self.daemon.server_close)
        self.addCleanup(self.daemon.shutdown)
        self.port = free_port()
        config = CONFIG.read_text()
        for shipped, here in ((":2375", f"127.0.0.1:{self.port}"), ("/var/run/docker.sock", daemon_socket)):
            self.assertIn(shipped, config)
            config = config.replace(shipped, here)
        (work / "socket-proxy.cfg").write_text(config)
        start_haproxy(self, work / "socket-proxy.cfg", self.port)

    def status(self, method: str, path: str) -> int:
        return get(self.port, path, method).status

    def test_the_swarm_providers_reads_go_through(self) -> None:
        for path in ("/v1.41/services", "/v1.41/tasks?filters=%7B%7D", "/_ping", "/version", "/v1.24/nodes/abc"):
            with self.subTest(path=path):
                self.assertEqual(self.status("GET", path), 200)
        self.assertIn("/v1.41/services", self.daemon.paths)

    def test_anything_but_a_read_of_those_endpoints_is_refused(self) -> None:
        self.assertEqual(self.status("POST", "/v1.41/services/create"), 405)
        self.assertEqual(self.status("DELETE", "/v1.41/services/abc"), 405)
        self.assertEqual(self.status("GET", "/v1.41/containers/json"), 403)
        self.assertEqual(self.status("GET", "/v1.41/secrets"), 403)
        self.assertEqual(self.daemon.paths, [])

    def test_a_path_that_could_be_resolved_past_the_allow_list_never_reaches_the_daemon(self) -> None:
        for path in (
            "/services/../containers/json",
            "/v1.41/services/./../containers/json",
            "/services/%2e%2e/containers/json",
            "/services/%2E%2E/containers/json",
            "/services/..%2fcontainers/json",
            "/services//../containers/json",
            "/services/..\\containers/json",
        ):
            with self.subTest(path=path):
                self.assertEqual(self.status("GET", path), 400)
        self.assertEqual(self.daemon.paths, [])


if __name__ == "__main__":
    unittest.main()
