"""Who runs where: one network namespace per host on a private bridge, fixed addresses.

Every host listens on the same well-known ports as it would in the Swarm stack; only the
addresses differ, so one configuration file serves every node of a kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Several clusters can coexist on one machine (CLUSTER_NETWORK=0..9): each gets its own
# bridge, subnet and namespace names.
NETWORK = int(os.environ.get("CLUSTER_NETWORK", "0"))
BRIDGE = f"vt{NETWORK}"
SUBNET = f"10.89.{NETWORK}"
PREFIX = 24
# The machine's own end of the bridge: where `voting load` and a browser on this machine
# come from.
HOST_IP = f"{SUBNET}.1"

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"


@dataclass(frozen=True)
class Node:
    """One host of the topology: a network namespace with one address."""

    name: str
    octet: int

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{self.octet}"

    @property
    def netns(self) -> str:
        return f"{BRIDGE}-{self.name}"

    @property
    def veth(self) -> str:
        # The bridge end of this host's cable; interface names are limited to 15 bytes.
        return f"{BRIDGE}p{self.octet}"


REDIS = [Node("redis-1", 11), Node("redis-2", 12), Node("redis-3", 13)]
REDIS_PROXY = Node("redis-proxy", 20)
POSTGRES = [Node("pg-1", 21), Node("pg-2", 22), Node("pg-3", 23)]
PGPOOL = Node("pgpool", 30)
APPS = [Node("app-1", 41), Node("app-2", 42)]
EDGE = Node("edge", 50)
ALL = [*REDIS, REDIS_PROXY, *POSTGRES, PGPOOL, *APPS, EDGE]


def node(name: str) -> Node:
    for candidate in ALL:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no node named {name!r}; nodes: {', '.join(n.name for n in ALL)}")


class Ports:
    REDIS = 6379
    SENTINEL = 26379
    HAPROXY_STATS = 8404
    POSTGRES = 5432
    PGPOOL = 5432
    PCP = 9898
    VOTE = 8080
    RESULT = 8081
    WORKER_HEALTH = 8082
    HTTP = 80
    HTTPS = 443
    TRAEFIK_PING = 8090
    ACME = 14000
    ACME_MANAGEMENT = 15000
    DNS = 53


VOTE_HOST = os.environ.get("VOTE_HOST", "vote.voting.test")
RESULT_HOST = os.environ.get("RESULT_HOST", "result.voting.test")
REDIS_MASTER_NAME = "voting"
DATABASE = "voting"
DATABASE_USER = "voting"


def cluster_dir() -> Path:
    """Where every node keeps its data, logs, pid files and rendered configuration."""
    return Path(os.environ.get("CLUSTER_DIR", f"/tmp/voting-cluster-{NETWORK}"))
