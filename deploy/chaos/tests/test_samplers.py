"""Who would accept a write: the Redis sampler's program (`voting_chaos.swarm.REDIS_SAMPLE_AWK`)
on INFO as a thawed master prints it, and on a real master and replica."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unittest

from voting_chaos.runner import free_port, wait_until
from voting_chaos.swarm import REDIS_MIN_REPLICAS_MAX_LAG, REDIS_SAMPLE_AWK, parse_sample


def sample(info: str) -> tuple[float, bool] | None:
    """The sampler's verdict on one INFO reply, parsed as the harness parses it."""
    output = subprocess.run(
        ["sh", "-c", REDIS_SAMPLE_AWK], input=info, capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return parse_sample(output)


def info(role: str, counted: int, replicas: list[str]) -> str:
    lines = ["# Server", "server_time_usec:1764700836051000", "# Replication", f"role:{role}"]
    lines += [f"connected_slaves:{len(replicas)}", f"min_slaves_good_slaves:{counted}"]
    lines += [f"slave{i}:ip=redis-{i + 2},port=6379,state={r}" for i, r in enumerate(replicas)]
    lines += ["master_failover_state:no-failover", "master_repl_offset:1596551"]
    return "\r\n".join(lines) + "\r\n"


class TheRedisSampler(unittest.TestCase):
    def test_a_master_with_a_replica_that_acknowledged_within_the_bound_accepts_writes(self) -> None:
        self.assertEqual(
            sample(info("master", 1, [f"online,offset=1596551,lag={REDIS_MIN_REPLICAS_MAX_LAG}"])),
            (1764700836.051, True),
        )

    def test_a_thawed_master_still_counting_the_replicas_that_left_it_does_not(self) -> None:
        # As redis-1 answered 90 ms after it thawed: its own count not yet refreshed, its
        # replicas silent for the 25 s it was frozen.
        stale = info("master", 2, ["online,offset=551483,lag=25", "online,offset=551483,lag=25"])
        self.assertEqual(sample(stale), (1764700836.051, False))

    def test_a_replica_still_catching_up_is_not_counted(self) -> None:
        self.assertEqual(sample(info("master", 1, ["wait_bgsave,offset=0,lag=0"])), (1764700836.051, False))

    def test_a_replica_does_not_accept_writes(self) -> None:
        self.assertEqual(sample(info("slave", 0, [])), (1764700836.051, False))

    def test_each_reply_is_judged_on_its_own(self) -> None:
        fresh = info("master", 1, ["online,offset=1,lag=0"])
        lone = info("master", 0, [])
        output = subprocess.run(
            ["sh", "-c", REDIS_SAMPLE_AWK], input=fresh + lone, capture_output=True, text=True, check=True, timeout=10
        ).stdout
        self.assertEqual(
            [parse_sample(line) for line in output.splitlines()],
            [(1764700836.051, True), (1764700836.051, False)],
        )


@unittest.skipUnless(shutil.which("redis-server") and shutil.which("redis-cli"), "needs redis-server and redis-cli")
class OnARealMasterAndReplica(unittest.TestCase):
    """The INFO fields the program reads, as Redis itself prints them."""

    def setUp(self) -> None:
        self.master = self.start("--min-replicas-to-write", "1", "--min-replicas-max-lag", "1")
        self.replica = self.start("--replicaof", "127.0.0.1", str(self.master))

    def start(self, *options: str) -> int:
        port = free_port()
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                directory.name,
                *options,
            ],
            stdout=subprocess.DEVNULL,
        )
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)
        wait_until(lambda: self.ping(port), 10, f"redis-server on port {port}")
        return port

    def ping(self, port: int) -> bool | None:
        reply = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=5)
        return reply.stdout.strip() == "PONG" or None

    def sample_of(self, port: int) -> tuple[float, bool] | None:
        reply = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "server", "replication"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout
        return sample(reply)

    def test_the_master_accepts_writes_once_its_replica_is_online_and_the_replica_never(self) -> None:
        wait_until(lambda: (self.sample_of(self.master) or (0, False))[1] or None, 10, "the master writable")
        replica = self.sample_of(self.replica)
        assert replica is not None
        self.assertFalse(replica[1])

    def test_a_master_whose_replica_left_does_not(self) -> None:
        wait_until(lambda: (self.sample_of(self.master) or (0, False))[1] or None, 10, "the master writable")
        subprocess.run(
            ["redis-cli", "-p", str(self.replica), "REPLICAOF", "NO", "ONE"],
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=5,
        )
        wait_until(lambda: not (self.sample_of(self.master) or (0, True))[1] or None, 10, "the master not writable")


if __name__ == "__main__":
    unittest.main()
