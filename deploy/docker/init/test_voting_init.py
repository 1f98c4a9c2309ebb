"""Tests of voting-init, the start step of the official-image containers: rendering, secret
files, and the role a Redis node takes. Runs the script with /bin/sh and a fake redis-cli.

    python3 -m unittest discover -s deploy/docker/init
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parent / "voting-init"
DEPLOY = Path(__file__).resolve().parents[2]

# A redis-cli that answers as the test says, from the environment (see the file).
FAKE_REDIS_CLI = Path(__file__).resolve().parent / "fake-redis-cli"

# A redis-server that prints its arguments instead of running.
FAKE_REDIS_SERVER = '#!/bin/sh\necho "redis-server $*"\n'


class Tool(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        bin_dir = self.dir / "bin"
        bin_dir.mkdir()
        for name, text in (("redis-cli", FAKE_REDIS_CLI.read_text()), ("redis-server", FAKE_REDIS_SERVER)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def tearDown(self):
        subprocess.run(["rm", "-rf", str(self.dir)], check=True)

    def run_init(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", str(SCRIPT), *args], env={**self.env, **env}, text=True, capture_output=True, timeout=30
        )


class Render(Tool):
    def test_placeholders_are_filled_from_the_environment_and_the_command_runs(self):
        template = self.dir / "t.conf"
        template.write_text("a ${ALPHA} b ${BETA_2} $KEEP ${lower} ${ALPHA}\n")
        out = self.dir / "out" / "t.conf"
        result = self.run_init("render", f"{template}:{out}", "--", "cat", str(out), ALPHA="x&y/z", BETA_2="")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "a x&y/z b  $KEEP ${lower} x&y/z\n")
        self.assertEqual(out.stat().st_mode & 0o777, 0o600)

    def test_a_placeholder_without_a_value_fails_and_writes_nothing(self):
        template = self.dir / "t.conf"
        template.write_text("${MISSING}\n")
        out = self.dir / "t.out"
        result = self.run_init("render", f"{template}:{out}", "--", "true")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no value for MISSING", result.stderr)
        self.assertFalse(out.exists())

    def test_secret_files_are_read_into_their_variable_without_the_newline(self):
        secret = self.dir / "secret"
        secret.write_text("p@ss w'rd\n")
        template = self.dir / "t.conf"
        template.write_text("requirepass ${REDIS_PASSWORD}\n")
        out = self.dir / "t.out"
        result = self.run_init("render", f"{template}:{out}", "--", "cat", str(out), REDIS_PASSWORD_FILE=str(secret))
        self.assertEqual(result.stdout, "requirepass p@ss w'rd\n", result.stderr)

    def test_every_placeholder_of_the_official_image_templates_is_set(self):
        """By the stack, for the service that mounts the template (a variable or its *_FILE
        secret), or by voting-init itself: a placeholder nobody sets stops the container."""
        stack = yaml.safe_load((DEPLOY / "swarm" / "stack.yml").read_text())
        configs = {name: (DEPLOY / "swarm" / config["file"]).resolve() for name, config in stack["configs"].items()}
        # Set by voting-init before it renders (defaults, and what it works out).
        own = {
            "REDIS_PORT",
            "SENTINEL_PORT",
            "REDIS_DATA_DIR",
            "REDIS_ANNOUNCE_HOST",
            "SENTINEL_ANNOUNCE_HOST",
            "REDIS_MASTER_HOST",
            "TRAEFIK_DYNAMIC_DIR",
        }
        script = SCRIPT.read_text()
        for name in own:
            self.assertRegex(script, rf"(export {name}\b|\$\{{{name}:=)", f"voting-init sets {name}")
        templates = ["redis/redis.conf", "redis/sentinel.conf", "haproxy/haproxy.cfg", "traefik/traefik.yml"]
        templates.append("traefik/dynamic/middlewares.yml")
        for path in templates:
            template = (DEPLOY / path).resolve()
            users = [
                s
                for s in stack["services"].values()
                if template in {configs[c["source"]] for c in s.get("configs", [])}
            ]
            with self.subTest(template=path):
                self.assertTrue(users, "some service of the stack mounts it")
                names = {variable.removesuffix("_FILE") for s in users for variable in s.get("environment", {})}
                found = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", template.read_text()))
                # NAME_PASSWORD_SHA256: voting-init hashes every NAME_PASSWORD it is given.
                found = {name.removesuffix("_SHA256") if name.endswith("_PASSWORD_SHA256") else name for name in found}
                self.assertLessEqual(found, names | own)

    def test_templates_use_only_braced_placeholders(self):
        # A bare `$NAME` is left as it is by the renderers here (voting-init, voting_common.py), while
        # envsubst, which an operator might reach for, would replace it: only `${NAME}` means
        # the same to all of them.
        bare = re.compile(r"\$(?!\{)[A-Za-z_]")
        templates = sorted(
            p
            for d in ("redis", "haproxy", "postgres", "pgpool", "traefik")
            for p in (DEPLOY / d).rglob("*")
            if p.is_file()
        )
        self.assertTrue(templates, "no templates found")
        for path in templates:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                with self.subTest(file=str(path.relative_to(DEPLOY)), line=number):
                    self.assertIsNone(bare.search(line), line)


class RedisRole(Tool):
    COMMON = {
        "REDIS_NODES": "redis-1,redis-2,redis-3",
        "SENTINELS": "sentinel-1,sentinel-2,sentinel-3",
        "REDIS_CHECK_PASSWORD": "check-secret",
        "SENTINEL_PASSWORD": "sentinel-secret",
        "REDIS_PASSWORD": "operator-secret",
        "REDIS_VOTE_PASSWORD": "vote-secret",
        "REDIS_WORKER_PASSWORD": "worker-secret",
        "REDIS_REPLICATION_PASSWORD": "replication-secret",
        "DECIDE_TIMEOUT": "2",
        "REDIS_TEMPLATE": str(DEPLOY / "redis" / "redis.conf"),
    }

    def start(self, node: str, **answers: str) -> subprocess.CompletedProcess:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        return self.run_init("redis", REDIS_NODE=node, REDIS_DATA_DIR=str(data), **self.COMMON, **answers)

    def test_a_fresh_deployment_takes_the_initial_roles(self):
        self.assertIn("--replicaof no one", self.start("redis-1").stdout)
        self.assertIn("--replicaof redis-1 6379", self.start("redis-3").stdout)

    def test_a_node_follows_the_master_a_majority_of_sentinels_names(self):
        result = self.start("redis-1", FAKE_SENTINEL_1="redis-2", FAKE_SENTINEL_2="redis-2", FAKE_SENTINEL_3="redis-1")
        self.assertIn("--replicaof redis-2 6379", result.stdout, result.stderr)

    def test_a_node_never_follows_a_named_master_that_answers_as_a_replica(self):
        # A node that was frozen or cut off comes back while the Sentinels still name a node
        # that has turned replica (of this one, say): following it could close a loop with
        # no master. It waits for the Sentinels' failover instead.
        result = self.start(
            "redis-1",
            FAKE_SENTINEL_1="redis-3",
            FAKE_SENTINEL_2="redis-3",
            FAKE_ROLE_REDIS_3="slave",
            FAKE_ROLE_REDIS_2="slave",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)
        self.assertIn("answers as a replica", result.stderr)

    def test_a_dead_master_never_restarts_as_master_while_a_replica_can_take_over(self):
        result = self.start(
            "redis-1",
            FAKE_SENTINEL_1="redis-1",
            FAKE_SENTINEL_2="redis-1",
            FAKE_SLAVES_SENTINEL_1="2",
            FAKE_ROLE_REDIS_2="slave",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)
        self.assertIn("no decision", result.stderr)

    def test_the_initial_master_starts_when_the_sentinels_never_saw_a_replica(self):
        # A fresh deployment where the Sentinels and replicas came up first: no failover can
        # happen, so waiting for one would wait forever.
        result = self.start(
            "redis-1",
            FAKE_SENTINEL_1="redis-1",
            FAKE_SENTINEL_2="redis-1",
            FAKE_SENTINEL_3="redis-1",
            FAKE_SLAVES_SENTINEL_1="0",
            FAKE_ROLE_REDIS_2="slave",
            FAKE_ROLE_REDIS_3="slave",
        )
        self.assertIn("--replicaof no one", result.stdout, result.stderr)

    def test_the_named_master_restarts_as_master_when_no_replica_answers(self):
        result = self.start("redis-1", FAKE_SENTINEL_1="redis-1", FAKE_SENTINEL_2="redis-1")
        self.assertIn("--replicaof no one", result.stdout, result.stderr)

    def test_without_sentinels_a_node_follows_the_one_master_among_the_nodes(self):
        # The Sentinels are busy or restarting: a node that answers as master is asked instead.
        result = self.start("redis-1", FAKE_ROLE_REDIS_2="slave", FAKE_ROLE_REDIS_3="master")
        self.assertIn("--replicaof redis-3 6379", result.stdout, result.stderr)

    def test_without_sentinels_the_initial_master_waits_while_replicas_answer(self):
        # Never the initial roles while other nodes hold data and roles of their own.
        result = self.start("redis-1", FAKE_ROLE_REDIS_2="slave", FAKE_ROLE_REDIS_3="slave")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)

    def test_sentinels_without_a_majority_get_no_guess(self):
        result = self.start("redis-3", FAKE_SENTINEL_1="redis-1", FAKE_SENTINEL_2="redis-2")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)

    def test_the_rendered_file_announces_the_node_by_name(self):
        self.start("redis-2")
        conf = (self.dir / "data" / "redis.conf").read_text()
        self.assertIn("replica-announce-ip redis-2", conf)
        # Users with hashed passwords; only the one this node itself sends is in clear.
        vote = hashlib.sha256(b"vote-secret").hexdigest()
        self.assertIn(f"user vote on #{vote} ", conf)
        operator = hashlib.sha256(b"operator-secret").hexdigest()
        self.assertIn(f"user default on #{operator} ", conf)
        self.assertIn("masterauth replication-secret", conf)
        for password in ("operator-secret", "vote-secret", "worker-secret", "check-secret", "sentinel-secret"):
            self.assertNotIn(password, conf)

    def test_a_node_without_every_users_password_does_not_start(self):
        result = self.run_init(
            "redis",
            REDIS_NODE="redis-1",
            REDIS_DATA_DIR=str(self.dir),
            **{k: v for k, v in self.COMMON.items() if k != "REDIS_WORKER_PASSWORD"},
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("REDIS_WORKER_PASSWORD (or REDIS_WORKER_PASSWORD_FILE) is required", result.stderr)

    def test_the_newest_configuration_outranks_a_majority_of_stale_sentinels(self):
        # Two Sentinels restarted (or were away) and name the old master under an old epoch;
        # the one that saw the last failover names the new master under a newer epoch.
        result = self.start(
            "redis-1",
            FAKE_SENTINEL_1="redis-1",
            FAKE_SENTINEL_3="redis-1",
            FAKE_SENTINEL_2="redis-2",
            FAKE_EPOCH_SENTINEL_2="3",
            FAKE_EPOCH_SENTINEL_1="1",
            FAKE_EPOCH_SENTINEL_3="1",
            FAKE_ROLE_REDIS_2="master",
        )
        self.assertIn("--replicaof redis-2 6379", result.stdout, result.stderr)

    def test_sentinels_of_the_newest_epoch_that_disagree_get_no_guess(self):
        result = self.start(
            "redis-3",
            FAKE_SENTINEL_1="redis-1",
            FAKE_SENTINEL_2="redis-2",
            FAKE_EPOCH_SENTINEL_1="4",
            FAKE_EPOCH_SENTINEL_2="4",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)

    def sentinel(self, **answers: str) -> tuple[subprocess.CompletedProcess, Path]:
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        result = self.run_init(
            "sentinel",
            SENTINEL_NODE="sentinel-1",
            REDIS_DATA_DIR=str(data),
            SENTINEL_TEMPLATE=str(DEPLOY / "redis" / "sentinel.conf"),
            **self.COMMON,
            **answers,
        )
        return result, data / "sentinel.conf"

    def test_a_sentinel_monitors_the_master_the_others_name(self):
        result, conf = self.sentinel(FAKE_SENTINEL_2="redis-3", FAKE_SENTINEL_3="redis-3")
        self.assertIn("--sentinel", result.stdout, result.stderr)
        self.assertIn("sentinel monitor voting redis-3 6379 2", conf.read_text())

    def test_a_sentinel_adopts_the_one_answering_sentinels_view(self):
        # The other two restarted with it (their node came back) and do not answer yet.
        result, conf = self.sentinel(
            FAKE_SENTINEL_2="redis-2", FAKE_EPOCH_SENTINEL_2="3", FAKE_ROLE_REDIS_1="slave", FAKE_ROLE_REDIS_2="master"
        )
        self.assertIn("--sentinel", result.stdout, result.stderr)
        self.assertIn("sentinel monitor voting redis-2 6379 2", conf.read_text())

    def test_a_sentinel_never_guesses_the_initial_master_while_nodes_answer(self):
        # No Sentinel answers and no node answers as the one master: waiting, not redis-1.
        result, conf = self.sentinel(FAKE_ROLE_REDIS_1="slave", FAKE_ROLE_REDIS_2="slave")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("redis-server", result.stdout)
        self.assertFalse(conf.exists())

    def test_a_sentinel_of_a_fresh_deployment_monitors_the_initial_master(self):
        result, conf = self.sentinel()
        self.assertIn("--sentinel", result.stdout, result.stderr)
        self.assertIn("sentinel monitor voting redis-1 6379 2", conf.read_text())


class Traefik(Tool):
    def test_the_providers_block_goes_under_providers(self):
        bin_dir = self.dir / "bin"
        (bin_dir / "traefik").write_text('#!/bin/sh\necho "traefik $*"\n')
        (bin_dir / "traefik").chmod(0o755)
        providers = self.dir / "providers.yml"
        providers.write_text('  swarm:\n    endpoint: "${SWARM_ENDPOINT}"\n')
        run = self.dir / "run"
        token = self.dir / "certs_provider_token"
        token.write_text("the-token\n")
        result = self.run_init(
            "traefik",
            TRAEFIK_TEMPLATE=str(DEPLOY / "traefik" / "traefik.yml"),
            TRAEFIK_TEMPLATE_DYNAMIC_DIR=str(DEPLOY / "traefik" / "dynamic"),
            TRAEFIK_RUN_DIR=str(run),
            TRAEFIK_PROVIDERS=str(providers),
            SWARM_ENDPOINT="tcp://socket-proxy:2375",
            CERTS_PROVIDER_URL="http://certs:8084/traefik",
            CERTS_PROVIDER_TOKEN_FILE=str(token),
            TRAEFIK_PING_PORT="8090",
            TRAEFIK_API_PORT="8091",
            RATE_LIMIT_AVERAGE="100",
            RATE_LIMIT_BURST="200",
            VOTE_HOST="v",
            RESULT_HOST="r",
            VOTE_SERVERS="[]",
            RESULT_SERVERS="[]",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"--configFile={run}/traefik.yml", result.stdout)
        text = (run / "traefik.yml").read_text()
        self.assertIn('providers:\n  swarm:\n    endpoint: "tcp://socket-proxy:2375"\n  file:', text)
        # The certificate manager's configuration, asked for with the token from its secret.
        self.assertIn('endpoint: "http://certs:8084/traefik"', text)
        self.assertIn('Authorization: "Bearer the-token"', text)
        self.assertTrue((run / "dynamic" / "middlewares.yml").exists())


if __name__ == "__main__":
    unittest.main()
