"""Redis' users (deploy/redis/redis.conf and sentinel.conf), started for real the way the
stack starts them (voting-init, the shipped templates, the secrets as files): each client may
do its own work and nothing more, a replica replicates as user replication, and a Sentinel
fails a master over as user sentinel.

    python3 -m unittest discover -s deploy/swarm -p 'test_*.py'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from haproxy_harness import free_port, wait_until

DEPLOY = Path(__file__).resolve().parents[1]
INIT = DEPLOY / "docker" / "init" / "voting-init"
PASSWORDS = {
    "default": "REDIS_PASSWORD",  # the operator's
    "vote": "REDIS_VOTE_PASSWORD",
    "worker": "REDIS_WORKER_PASSWORD",
    "replication": "REDIS_REPLICATION_PASSWORD",
    "check": "REDIS_CHECK_PASSWORD",
    "sentinel": "SENTINEL_PASSWORD",
}
# What no client but the operator may do to a node.
OPERATOR_ONLY = (
    ("FLUSHALL",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "min-replicas-to-write", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("ACL", "LIST"),
    ("KEYS", "*"),
    ("DEL", "votes"),
    ("EVAL", "return 1", "0"),
)


@unittest.skipUnless(shutil.which("redis-server"), "redis-server is not installed (scripts/install-test-deps)")
class RedisUsers(unittest.TestCase):
    work: Path
    secrets: dict[str, str]
    common: dict[str, str]
    processes: list[subprocess.Popen]
    nodes: dict[int, subprocess.Popen]  # by port
    sentinel_port: int
    master_port: int
    replica_port: int

    @classmethod
    def setUpClass(cls) -> None:
        cls.work = Path(tempfile.mkdtemp(prefix="redis-users-test-"))
        cls.secrets = {user: f"{user}-password-for-the-test" for user in PASSWORDS}
        files = {}
        for user, variable in PASSWORDS.items():
            path = cls.work / f"{user}_password"
            path.write_text(cls.secrets[user] + "\n")  # a trailing newline, as secrets often have
            files[f"{variable}_FILE"] = str(path)
        cls.sentinel_port = free_port()
        cls.processes = []
        cls.nodes = {}
        # Only what a container has: PATH and the stack's variables.
        cls.common = {
            "PATH": os.environ["PATH"],
            "SENTINEL_PORT": str(cls.sentinel_port),
            "SENTINELS": "127.0.0.1",
            "DECIDE_TIMEOUT": "2",
            "REDIS_TEMPLATE": str(DEPLOY / "redis" / "redis.conf"),
            "SENTINEL_TEMPLATE": str(DEPLOY / "redis" / "sentinel.conf"),
            **files,
        }
        try:
            # A master with a replica (it takes writes only then: min-replicas-to-write 1).
            cls.master_port, cls.replica_port = cls.start_pair()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start_pair(cls) -> tuple[int, int]:
        """Two nodes on ports of their own; each finds no Sentinel and no other node, so each
        starts as the master of a fresh deployment; the second is then pointed at the first,
        as a Sentinel would, and syncs with the replication user's password from its file."""
        master, replica = free_port(), free_port()
        cls.start_node(master)
        cls.start_node(replica)
        pointed = cls.ask(replica, "default", "REPLICAOF", "127.0.0.1", str(master))
        if pointed != "OK":
            raise RuntimeError(f"REPLICAOF: {pointed}")
        wait_until(
            lambda: "master_link_status:up" in cls.ask(replica, "check", "INFO", "replication"),
            15,
            "the replica's link to its master",
        )
        return master, replica

    @classmethod
    def start_node(cls, port: int) -> None:
        """A node as the stack starts it; again on its own data if it ran before."""
        data = cls.work / f"node-{port}"
        data.mkdir(exist_ok=True)
        environment = {
            **cls.common,
            "REDIS_NODE": "127.0.0.1",
            "REDIS_NODES": "127.0.0.1",
            "REDIS_PORT": str(port),
            "REDIS_DATA_DIR": str(data),
        }
        cls.nodes[port] = cls.spawn(["sh", str(INIT), "redis"], environment, data / "log")
        wait_until(lambda: cls.ask(port, "default", "PING") == "PONG", 15, f"redis on {port}")

    @classmethod
    def spawn(cls, command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("a") as output:
            process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
        cls.processes.append(process)
        return process

    @classmethod
    def tearDownClass(cls) -> None:
        for process in cls.processes:
            process.kill()
            process.wait(10)
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def ask(cls, port: int, user: str | None, *command: str) -> str:
        """redis-cli as `user` (None: no user at all); its answer, errors included."""
        credentials = ["--user", user, "--pass", cls.secrets[user]] if user else []
        result = subprocess.run(
            ["redis-cli", "--no-auth-warning", "-p", str(port), *credentials, *command],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (result.stdout + result.stderr).strip()

    def assert_refused(self, port: int, user: str | None, *command: str) -> None:
        answer = self.ask(port, user, *command)
        self.assertRegex(answer, r"^(NOPERM|NOAUTH|ERR AUTH|WRONGPASS)", f"{user} ran {' '.join(command)}")

    def test_nobody_gets_in_without_a_user(self) -> None:
        self.assert_refused(self.master_port, None, "PING")
        self.assert_refused(self.master_port, None, "FLUSHALL")

    def test_only_the_operator_may_flush_reconfigure_or_stop_a_node(self) -> None:
        for user in ("vote", "worker", "replication", "check", "sentinel"):
            for command in OPERATOR_ONLY:
                if user == "sentinel" and command[0] == "REPLICAOF":
                    continue  # re-pointing nodes is a Sentinel's job
                with self.subTest(user=user, command=command[0]):
                    self.assert_refused(self.master_port, user, *command)

    def test_vote_may_append_a_vote_and_wait_for_a_replica_and_nothing_else(self) -> None:
        self.assertEqual(self.ask(self.master_port, "vote", "PING"), "PONG")
        self.assertRegex(
            self.ask(self.master_port, "vote", "XADD", "votes", "*", "voter", "v1", "option", "a"), r"^\d+-\d+$"
        )
        self.assertRegex(self.ask(self.master_port, "vote", "WAIT", "0", "10"), r"^\d+$")
        self.assert_refused(self.master_port, "vote", "XADD", "other", "*", "a", "b")
        self.assert_refused(self.master_port, "vote", "XREADGROUP", "GROUP", "workers", "w", "STREAMS", "votes", ">")
        self.assert_refused(self.master_port, "vote", "XTRIM", "votes", "MAXLEN", "0")
        self.assert_refused(self.master_port, "vote", "XRANGE", "votes", "-", "+")

    def test_worker_may_consume_trim_and_dead_letter_the_vote_stream(self) -> None:
        port = self.master_port
        self.ask(port, "vote", "XADD", "votes", "*", "voter", "v2", "option", "b")
        created = self.ask(port, "worker", "XGROUP", "CREATE", "votes", "workers", "0", "MKSTREAM")
        self.assertIn(created, ("OK", "BUSYGROUP Consumer Group name already exists"))
        read = self.ask(port, "worker", "XREADGROUP", "GROUP", "workers", "w1", "COUNT", "10", "STREAMS", "votes", ">")
        self.assertIn("votes", read)
        entry = read.splitlines()[1]
        self.assertEqual(self.ask(port, "worker", "XACK", "votes", "workers", entry), "1")
        self.assertNotIn("NOPERM", self.ask(port, "worker", "XAUTOCLAIM", "votes", "workers", "w2", "5000", "0"))
        self.assertNotIn("NOPERM", self.ask(port, "worker", "XPENDING", "votes", "workers"))
        self.assertNotIn("NOPERM", self.ask(port, "worker", "XINFO", "GROUPS", "votes"))
        self.assertRegex(self.ask(port, "worker", "XTRIM", "votes", "MINID", "~", "0"), r"^\d+$")
        self.assertRegex(self.ask(port, "worker", "XADD", "votes:dead", "*", "entry", entry), r"^\d+-\d+$")
        self.assert_refused(port, "worker", "XADD", "elsewhere", "*", "a", "b")
        self.assert_refused(port, "worker", "XGROUP", "DESTROY", "votes", "workers")

    def test_the_check_user_may_only_ping_and_ask(self) -> None:
        self.assertEqual(self.ask(self.master_port, "check", "PING"), "PONG")
        self.assertIn("role:master", self.ask(self.master_port, "check", "INFO", "replication"))
        self.assert_refused(self.master_port, "check", "XADD", "votes", "*", "a", "b")

    def test_a_restarted_node_keeps_the_consumer_groups_progress(self) -> None:
        # Reading several entries at once is written to the append-only file as a MULTI/EXEC
        # block, which a restarting Redis replays as the default user: with that user off, the
        # block was refused and the group forgot what it had delivered (redis/redis#14541).
        master, _ = self.start_pair()
        for voter in ("r1", "r2", "r3"):
            self.ask(master, "vote", "XADD", "votes", "*", "voter", voter, "option", "a")
        self.ask(master, "worker", "XGROUP", "CREATE", "votes", "workers", "0", "MKSTREAM")
        self.ask(master, "worker", "XREADGROUP", "GROUP", "workers", "w1", "COUNT", "3", "STREAMS", "votes", ">")
        self.assertTrue(self.ask(master, "worker", "XPENDING", "votes", "workers").startswith("3"))
        # Killed as a crash would (what was written is in the file), and started again.
        self.nodes[master].kill()
        self.nodes[master].wait(10)
        self.start_node(master)
        self.assertTrue(self.ask(master, "worker", "XPENDING", "votes", "workers").startswith("3"))
        log = (self.work / f"node-{master}" / "log").read_text()
        self.assertNotIn("NOPERM", log)

    def test_the_rendered_files_hold_no_clients_password(self) -> None:
        rendered = (self.work / f"node-{self.master_port}" / "redis.conf").read_text()
        for user in ("default", "vote", "worker", "check", "sentinel"):
            with self.subTest(user=user):
                self.assertNotIn(self.secrets[user], rendered)

    def test_a_replica_follows_as_user_replication_and_a_sentinel_fails_over_as_user_sentinel(self) -> None:
        # A pair of its own: the other tests' nodes keep their roles.
        master, replica = self.start_pair()
        # A Sentinel started by voting-init finds the one master among the nodes (asking as
        # user check), learns its replica, and promotes it when told to (as user sentinel).
        data = self.work / "sentinel"
        data.mkdir()
        environment = {
            **self.common,
            "SENTINEL_NODE": "127.0.0.1",
            "REDIS_NODES": "127.0.0.1",
            "REDIS_PORT": str(master),
            "REDIS_DATA_DIR": str(data),
        }
        self.spawn(["sh", str(INIT), "sentinel"], environment, data / "log")
        sentinel = ["redis-cli", "--no-auth-warning", "-p", str(self.sentinel_port), "-a", self.secrets["sentinel"]]

        def sentinel_says(*command: str) -> str:
            return subprocess.run([*sentinel, *command], capture_output=True, text=True, timeout=10).stdout

        def knows_the_replica() -> bool:
            fields = sentinel_says("SENTINEL", "master", "voting").split()
            return "num-slaves" in fields and fields[fields.index("num-slaves") + 1] == "1"

        wait_until(knows_the_replica, 20, "the Sentinel to learn the replica", interval=0.2)
        self.assertEqual(sentinel_says("SENTINEL", "FAILOVER", "voting").strip(), "OK")
        wait_until(
            lambda: (
                "role:master" in self.ask(replica, "check", "INFO", "replication")
                and "role:slave" in self.ask(master, "check", "INFO", "replication")
            ),
            30,
            "the replica promoted and the old master re-pointed",
            interval=0.2,
        )
        # Re-pointing goes with rewriting the node's file, which user sentinel may do.
        self.assertIn("replicaof", (self.work / f"node-{master}" / "redis.conf").read_text())


if __name__ == "__main__":
    unittest.main()
