"""The topology is defined once, by deploy/swarm/stack.yml: the one-host Compose file and the
test harness (scripts/swarm-nodes) are checked against it here.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import re
import unittest
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
STACK = yaml.safe_load((DEPLOY / "swarm" / "stack.yml").read_text())["services"]
COMPOSE = yaml.safe_load((DEPLOY / "compose.yml").read_text())["services"]

# The edge (Traefik, its read-only Docker API, the certificate manager) exists only in the stack: Compose serves
# plain HTTP on loopback.
EDGE_ONLY = {"traefik", "socket-proxy", "certs"}
# Settings that only make sense behind the stack's edge: the network Traefik comes from, the
# drain that outlasts Traefik's health check, log lines for a log collector.
EDGE_ENVIRONMENT = {"TRUSTED_PROXIES", "SHUTDOWN_DRAIN_MS", "LOG_FORMAT"}
# What a container runs and how it is checked: the same in both files.
SAME = ("image", "user", "read_only", "cap_drop", "cap_add", "entrypoint", "command", "secrets", "stop_grace_period")
# Where one host differs on purpose, and why.
ONE_HOST_ENVIRONMENT = {
    # Docker's port publishing hides client addresses: every client would share one limit.
    "vote": {"NEW_VOTER_RATE": "0"},
}
ONE_HOST_REPLICAS = {
    # One published port each (127.0.0.1:8080, :8081): one replica.
    "vote": 1,
    "result": 1,
    # A second HAProxy or Pgpool-II guards against losing a node; one host has one.
    "redis-proxy": 1,
    "pgpool": 1,
}
# The capabilities a service may add back after dropping them all, and why.
ENTRYPOINT_AS_ROOT = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"}
CAPABILITIES_NEEDED = {
    # Ports 80 and 443.
    "traefik": {"NET_BIND_SERVICE"},
    # The entrypoints own the volume and the rendered files, then run as postgres; PostgreSQL's
    # tini (root) signals its entrypoint (postgres) on stop.
    **{name: ENTRYPOINT_AS_ROOT | {"KILL"} for name in ("pg-1", "pg-2", "pg-3")},
    "pgpool": ENTRYPOINT_AS_ROOT,
}
# The root filesystems left writable: PostgreSQL and Pgpool-II write sockets, pid and rendered
# files in several places of the image (issue 12 lists them as still to do).
WRITABLE_ROOT = {"pg-1", "pg-2", "pg-3", "pgpool"}
STACK_CONFIGS = yaml.safe_load((DEPLOY / "swarm" / "stack.yml").read_text())["configs"]


def config_files(service: dict) -> dict[str, Path]:
    """Each file mounted as configuration (templates, the entrypoint), by where it is mounted:
    Swarm configs in the stack, bind mounts of the same files in Compose (a mounted directory
    counts as each file in it)."""
    files = {}
    for config in service.get("configs", []):
        files[config["target"]] = (DEPLOY / "swarm" / STACK_CONFIGS[config["source"]]["file"]).resolve()
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = (DEPLOY / volume.split(":")[0]).resolve(), volume.split(":")[1]
            if source.is_dir():
                files.update({f"{target}/{f.name}": f for f in source.iterdir() if f.is_file()})
            else:
                files[target] = source
    return files


def tmpfs(service: dict) -> set[str]:
    """Where a tmpfs is mounted: Compose's `tmpfs` or the stack's tmpfs volumes."""
    mounts = set(service.get("tmpfs", []))
    mounts |= {v["target"] for v in service.get("volumes", []) if isinstance(v, dict) and v.get("type") == "tmpfs"}
    return mounts


class ComposeFollowsTheStack(unittest.TestCase):
    def test_the_same_services_but_the_edge(self):
        self.assertEqual(set(COMPOSE), set(STACK) - EDGE_ONLY)

    def test_each_service_runs_the_same_thing_the_same_way(self):
        for name, compose in COMPOSE.items():
            stack = STACK[name]
            for key in SAME:
                with self.subTest(service=name, key=key):
                    self.assertEqual(compose.get(key), stack.get(key))
            with self.subTest(service=name, key="tmpfs"):
                self.assertEqual(tmpfs(compose), tmpfs(stack))
            with self.subTest(service=name, key="healthcheck"):
                # The one-off migration has none in Compose; Swarm's image default is off.
                if name != "migrate":
                    self.assertEqual(compose.get("healthcheck"), stack.get("healthcheck"))

    def test_each_service_gets_the_same_environment(self):
        for name, compose in COMPOSE.items():
            with self.subTest(service=name):
                stack = {k: v for k, v in STACK[name].get("environment", {}).items() if k not in EDGE_ENVIRONMENT}
                self.assertEqual(compose.get("environment", {}), stack | ONE_HOST_ENVIRONMENT.get(name, {}))

    def test_each_service_gets_the_same_configuration_files(self):
        for name, compose in COMPOSE.items():
            with self.subTest(service=name):
                self.assertEqual(config_files(compose), config_files(STACK[name]))

    def test_as_many_replicas(self):
        for name, compose in COMPOSE.items():
            with self.subTest(service=name):
                wanted = ONE_HOST_REPLICAS.get(name, STACK[name].get("deploy", {}).get("replicas", 1))
                self.assertEqual(compose.get("deploy", {}).get("replicas", 1), wanted)


class NoSinglePointOfFailure(unittest.TestCase):
    def test_the_proxies_between_the_services_and_the_data_run_twice_on_different_nodes(self):
        for name in ("redis-proxy", "pgpool"):
            with self.subTest(service=name):
                deploy = STACK[name]["deploy"]
                self.assertGreaterEqual(deploy["replicas"], 2)
                self.assertEqual(deploy.get("placement", {}).get("max_replicas_per_node"), 1)

    def test_every_edge_node_runs_a_traefik_that_keeps_nothing_of_its_own(self):
        traefik = STACK["traefik"]
        self.assertEqual(traefik["deploy"]["mode"], "global")
        self.assertEqual(traefik["deploy"]["placement"]["constraints"], ["node.labels.voting.edge == true"])
        # No volume: certificates come from the certificate manager, which every Traefik polls.
        self.assertEqual([v for v in traefik.get("volumes", []) if not isinstance(v, dict)], [])
        self.assertEqual(traefik["environment"]["CERTS_PROVIDER_URL"], "http://certs:8084/traefik")

    def test_the_certificate_managers_run_twice_on_different_nodes_and_share_traefiks_token(self):
        certs = STACK["certs"]
        self.assertGreaterEqual(certs["deploy"]["replicas"], 2)
        self.assertEqual(certs["deploy"]["placement"]["max_replicas_per_node"], 1)
        self.assertIn("certs_provider_token", certs["secrets"])
        self.assertIn("certs_provider_token", STACK["traefik"]["secrets"])
        # Traefik reaches the managers on the public network, the managers PostgreSQL on the backend.
        self.assertEqual(set(certs["networks"]), {"public", "backend"})


class LeastPrivilege(unittest.TestCase):
    """A service holds exactly the secrets it reads (each named by a `*_FILE` variable of its
    environment): one that holds more gives an attacker who takes it more than it needs."""

    def test_each_service_holds_only_the_secrets_it_reads(self):
        for name, service in STACK.items():
            with self.subTest(service=name):
                read = {
                    value.removeprefix("/run/secrets/")
                    for variable, value in service.get("environment", {}).items()
                    if variable.endswith("_FILE") and str(value).startswith("/run/secrets/")
                }
                held = {
                    secret if isinstance(secret, str) else secret["source"] for secret in service.get("secrets", [])
                }
                self.assertEqual(held, read)

    def test_every_container_drops_every_capability_but_those_it_names(self):
        for name, service in STACK.items():
            with self.subTest(service=name):
                self.assertEqual(service.get("cap_drop"), ["ALL"])
                self.assertLessEqual(set(service.get("cap_add", [])), CAPABILITIES_NEEDED.get(name, set()))

    def test_root_filesystems_are_read_only_but_where_the_software_writes_to_it(self):
        writable = {name for name, service in STACK.items() if not service.get("read_only")}
        self.assertEqual(writable, WRITABLE_ROOT)


class NodeLabels(unittest.TestCase):
    """Every node label the stack places by is one the README tells users to set and the test
    nodes get (scripts/swarm-nodes), or a service could never be scheduled."""

    def stack_labels(self) -> set[str]:
        labels = set()
        for service in STACK.values():
            for constraint in service.get("deploy", {}).get("placement", {}).get("constraints", []):
                match = re.fullmatch(r"node\.labels\.(\S+) == true", constraint)
                if match:
                    labels.add(match.group(1))
        return labels

    def test_the_stack_places_by_labels(self):
        self.assertIn("voting.edge", self.stack_labels())

    def test_the_readme_sets_every_label(self):
        readme = (REPO / "README.md").read_text()
        told = set(re.findall(r"--label-add (voting\.[a-z-]+)-1=true", readme))
        told = {f"{label}-{member}" for label in told for member in (1, 2, 3)}
        told |= set(re.findall(r"--label-add (voting\.[a-z]+)=true", readme))
        self.assertLessEqual(self.stack_labels(), told)

    def test_the_test_nodes_get_every_label(self):
        script = (REPO / "scripts" / "swarm-nodes").read_text()
        set_here = set(re.findall(r"--label-add (voting\.[a-z]+)=true", script))
        per_member = set(re.findall(r'--label-add "(voting\.[a-z]+)-\$member=true"', script))
        set_here |= {f"{label}-{member}" for label in per_member for member in (1, 2, 3)}
        self.assertLessEqual(self.stack_labels(), set_here)


if __name__ == "__main__":
    unittest.main()
