"""The Redis tier: three Redis nodes, a Sentinel beside each, HAProxy in front of the master.

redis-1 starts as master, the others as its replicas; from then on the Sentinels decide who is
master, HAProxy follows by asking every node for its role, and a node brought back after a
failure starts as a replica of the master the Sentinels name, never as a second master.

Every question is asked over the network from this machine, whose end of the bridge reaches
every node even while nodes are partitioned from each other, with a minimal RESP client.
"""

from __future__ import annotations

import csv
import http.client
import io
import pwd
import re
import shutil
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import templates, topology
from .cluster import Cluster
from .hosts import Host, wait_until
from .topology import DEPLOY, Node, Ports

REDIS_TEMPLATE = DEPLOY / "redis" / "redis.conf"
SENTINEL_TEMPLATE = DEPLOY / "redis" / "sentinel.conf"
HAPROXY_TEMPLATE = DEPLOY / "haproxy" / "haproxy.cfg"
# The backend of haproxy.cfg whose servers are the Redis nodes, named like the nodes.
HAPROXY_BACKEND = "redis_master"

INITIAL_MASTER = topology.REDIS[0]
PROXY = topology.REDIS_PROXY
SENTINEL_MAJORITY = len(topology.REDIS) // 2 + 1

QUERY_TIMEOUT = 1.0
SPAWN_TIMEOUT = 15.0
START_TIMEOUT = 30.0
# Sentinel sees a dead master after 2 s and promotes within about one more; the rest is margin
# for a machine busy compiling.
FAILOVER_TIMEOUT = 20.0


# -- a minimal Redis client ------------------------------------------------------------

Reply = str | int | None | list["Reply"]


class RedisError(Exception):
    """An error reply: the server answered and refused (NOREPLICAS, READONLY, WRONGPASS, …)."""


class RespConnection:
    """One TCP connection speaking just enough RESP2 to run commands and read their replies."""

    def __init__(self, address: str, port: int, password: str | None = None, timeout: float = QUERY_TIMEOUT):
        self._socket = socket.create_connection((address, port), timeout=timeout)
        self._replies = self._socket.makefile("rb")
        if password is not None:
            self.execute("AUTH", password)

    def execute(self, *command: str | int) -> Reply:
        """Raises RedisError on an error reply (the connection stays usable), OSError when the
        connection fails or times out (it does not)."""
        self._socket.sendall(_encode(command))
        return self._read_reply()

    def close(self) -> None:
        self._replies.close()
        self._socket.close()

    def __enter__(self) -> RespConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_reply(self) -> Reply:
        line = self._replies.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the server")
        kind, value = line[:1], line[1:-2].decode()
        if kind == b"+":
            return value
        if kind == b"-":
            raise RedisError(value)
        if kind == b":":
            return int(value)
        if kind == b"$":
            return self._read_bulk(int(value))
        if kind == b"*":
            return None if int(value) < 0 else [self._read_reply() for _ in range(int(value))]
        raise ConnectionError(f"not a RESP reply: {line[:40]!r}")

    def _read_bulk(self, length: int) -> str | None:
        if length < 0:
            return None
        data = self._replies.read(length + 2)
        if len(data) != length + 2:
            raise ConnectionError("connection closed by the server")
        return data[:-2].decode()


def _encode(command: tuple[str | int, ...]) -> bytes:
    parts = [f"*{len(command)}\r\n".encode()]
    for argument in command:
        data = str(argument).encode()
        parts += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(parts)


def _pairs(reply: Reply) -> dict[str, str]:
    """A flat [key, value, key, value, …] reply (SENTINEL MASTER and REPLICAS) as a dict."""
    if not isinstance(reply, list):
        raise RedisError(f"expected an array, got {reply!r}")
    return dict(zip(map(str, reply[0::2]), map(str, reply[1::2])))


def _info_fields(text: str) -> dict[str, str]:
    """INFO's `key:value` lines as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _comma_fields(value: str) -> dict[str, str]:
    """An INFO value such as `ip=…,port=6379,state=online` as a dict."""
    return dict(item.split("=", 1) for item in value.split(",") if "=" in item)


# -- start and stop --------------------------------------------------------------------

def start(cluster: Cluster) -> None:
    """Starts the tier on a fresh cluster directory and returns once it is healthy."""
    for node in topology.REDIS:
        _render_node_configs(cluster, node)
    _spawn_redis(cluster, INITIAL_MASTER, replica_of=None)
    for replica in topology.REDIS[1:]:
        _spawn_redis(cluster, replica, replica_of=INITIAL_MASTER)
    for node in topology.REDIS:
        _spawn_sentinel(cluster, node)
    _spawn_haproxy(cluster)
    wait_healthy(cluster, START_TIMEOUT)


def stop(cluster: Cluster) -> None:
    """Stops every process of the tier; Sentinels first, so that the master going away does
    not start a failover on the way down."""
    for node in topology.REDIS:
        cluster.host(node).stop("sentinel")
    cluster.host(PROXY).stop("haproxy")
    for node in topology.REDIS:
        cluster.host(node).stop("redis")


def redis_url(cluster: Cluster) -> str:
    return f"redis://:{_password(cluster)}@{PROXY.ip}:{Ports.REDIS}"


def _password(cluster: Cluster) -> str:
    return cluster.secret("redis_password")


def _redis_conf(host: Host) -> Path:
    return host.dir / "redis.conf"


def _sentinel_conf(host: Host) -> Path:
    return host.dir / "sentinel.conf"


def _render_node_configs(cluster: Cluster, node: Node) -> None:
    """One writable copy per process: Redis and Sentinel both rewrite their files."""
    host = cluster.host(node)
    data_dir = host.dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    shared = {"REDIS_PASSWORD": _password(cluster), "REDIS_PORT": Ports.REDIS}
    templates.render(REDIS_TEMPLATE, _redis_conf(host), {
        **shared, "REDIS_ANNOUNCE_HOST": node.ip, "REDIS_DATA_DIR": data_dir,
    }, mode=0o600)
    templates.render(SENTINEL_TEMPLATE, _sentinel_conf(host), {
        **shared, "SENTINEL_PORT": Ports.SENTINEL, "SENTINEL_ANNOUNCE_HOST": node.ip,
        "REDIS_MASTER_HOST": INITIAL_MASTER.ip,
    }, mode=0o600)
    _hand_over(host.dir, _service_user("redis"))


def _render_haproxy_config(cluster: Cluster) -> Path:
    host = cluster.host(PROXY)
    redis_hosts = {f"REDIS_{number}_HOST": node.ip for number, node in enumerate(topology.REDIS, start=1)}
    config = templates.render(HAPROXY_TEMPLATE, host.dir / "haproxy.cfg", {
        **redis_hosts, "REDIS_PASSWORD": _password(cluster), "REDIS_PORT": Ports.REDIS,
        "HAPROXY_STATS_PORT": Ports.HAPROXY_STATS,
    }, mode=0o600)
    _hand_over(host.dir, _service_user("haproxy"))
    return config


def _service_user(name: str) -> str | None:
    """The account Debian's package made for the server, or None (root) where there is none."""
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        return None


def _hand_over(directory: Path, user: str | None) -> None:
    """Makes `directory` and everything in it the server's own (it writes data and configs),
    and closed to others: the configurations hold the password, and Redis and Sentinel
    rewrite theirs readable by all."""
    directory.chmod(0o700)
    if user is None:
        return
    for path in (directory, *directory.rglob("*")):
        shutil.chown(path, user, user)


def _spawn_redis(cluster: Cluster, node: Node, replica_of: Node | None) -> None:
    """Starts `node`'s Redis with its role on the command line, which overrides the file: the
    role Redis last wrote there may be stale (a dead master's file still says master)."""
    host = cluster.host(node)
    upstream = ["no", "one"] if replica_of is None else [replica_of.ip, str(Ports.REDIS)]
    host.spawn("redis", ["redis-server", str(_redis_conf(host)), "--replicaof", *upstream],
               user=_service_user("redis"), cwd=host.dir)
    _wait_serving(host, "redis", lambda: _ask(cluster, node, Ports.REDIS, "PING"))


def _spawn_sentinel(cluster: Cluster, node: Node) -> None:
    host = cluster.host(node)
    # `redis-server --sentinel` rather than `redis-sentinel`: Debian ships that one separately.
    host.spawn("sentinel", ["redis-server", str(_sentinel_conf(host)), "--sentinel"],
               user=_service_user("redis"), cwd=host.dir)
    _wait_serving(host, "sentinel", lambda: _ask(cluster, node, Ports.SENTINEL, "PING"))


def _spawn_haproxy(cluster: Cluster) -> None:
    host = cluster.host(PROXY)
    config = _render_haproxy_config(cluster)
    host.spawn("haproxy", ["haproxy", "-f", str(config)], user=_service_user("haproxy"), cwd=host.dir)
    _wait_serving(host, "haproxy", lambda: _haproxy_get("/healthz"))


def _wait_serving(host: Host, process: str, probe: Callable[[], object]) -> None:
    """Waits until a just-spawned server answers `probe`; fails at once if it exits instead."""
    def state() -> str | None:
        if not host.alive(process):
            return "exited"
        probe()  # raises until the server answers
        return "serving"

    if wait_until(state, SPAWN_TIMEOUT, f"{host.name}/{process} to answer") == "exited":
        raise RuntimeError(f"{host.name}/{process} exited at start; see {host.log_file(process)}")


# -- failures and recovery -------------------------------------------------------------

def kill(cluster: Cluster, node: Node) -> None:
    """kill -9 of `node`'s Redis; its Sentinel lives on."""
    cluster.host(node).kill("redis")


def restart(cluster: Cluster, node: Node) -> None:
    """Brings `node`'s Redis back as a connected replica of the master the Sentinels name, or
    as master only if they still name it and no replica is left to take over."""
    if cluster.host(node).alive("redis"):
        raise RuntimeError(f"{node.name}/redis is running; kill it before restarting it")
    leader = _master_to_come_back_under(cluster, node)
    if leader == node:
        _spawn_redis(cluster, node, replica_of=None)
        return
    _spawn_redis(cluster, node, replica_of=leader)
    wait_until(lambda: _replicates_from(cluster, node, leader), FAILOVER_TIMEOUT,
               f"{node.name} to replicate from {leader.name}")


def _master_to_come_back_under(cluster: Cluster, node: Node) -> Node:
    """The master the Sentinel majority names. While that is still `node` itself (its death
    not handled yet) and a replica is up to take over, waits for the failover rather than
    racing it as a second master. Never guesses: no majority, no answer."""
    named = wait_until(lambda: master(cluster), FAILOVER_TIMEOUT, "a Sentinel majority to name a master")
    if named != node or "replica" not in roles(cluster).values():
        return named
    return wait_until(lambda: _unless(master(cluster), node), FAILOVER_TIMEOUT,
                      f"the Sentinels to promote a replica in place of {node.name}")


def _unless(candidate: Node | None, excluded: Node) -> Node | None:
    return None if candidate == excluded else candidate


def _replicates_from(cluster: Cluster, node: Node, leader: Node) -> bool:
    replication = _replication(cluster, node)
    return (replication is not None and replication.get("role") == "slave"
            and _redis_node(replication.get("master_host", "")) == leader
            and replication.get("master_link_status") == "up")


def wait_healthy(cluster: Cluster, timeout: float = START_TIMEOUT) -> Node:
    """Waits until every Sentinel names the same master, which has every other node as an
    in-sync replica and is the one server HAProxy routes to; returns that master."""
    try:
        return wait_until(lambda: _healthy_master(cluster), timeout, "the Redis tier to be healthy")
    except TimeoutError as error:
        raise TimeoutError("\n  ".join([str(error), *status_lines(cluster)])) from None


def _healthy_master(cluster: Cluster) -> Node | None:
    leader = _master_all_sentinels_name(cluster)
    if leader is None or _routed() != [leader.name]:
        return None
    replication = _replication(cluster, leader)
    if replication is None or replication.get("role") != "master":
        return None
    return leader if len(_in_sync_replicas(replication)) == len(topology.REDIS) - 1 else None


def _master_all_sentinels_name(cluster: Cluster) -> Node | None:
    """The master if every Sentinel names it, knows the other Sentinels (so it can take part
    in an election) and sees every replica up (so it can promote one)."""
    views = list(_sentinel_views(cluster).values())
    others = len(topology.REDIS) - 1
    if not all(view and view.other_sentinels == others and view.replicas_up == others for view in views):
        return None
    addresses = {view.master for view in views if view}
    return _redis_node(addresses.pop()) if len(addresses) == 1 else None


# -- who is what -----------------------------------------------------------------------

def master(cluster: Cluster) -> Node | None:
    """The master as a majority of the Sentinels sees it; None if no majority agrees."""
    named = Counter(view.master for view in _sentinel_views(cluster).values() if view)
    if not named:
        return None
    address, votes = named.most_common(1)[0]
    return _redis_node(address) if votes >= SENTINEL_MAJORITY else None


def roles(cluster: Cluster) -> dict[str, str]:
    """Each Redis node's own word on its role: "master", "replica" or "down"."""
    return {node.name: _role(_replication(cluster, node)) for node in topology.REDIS}


def _role(replication: dict[str, str] | None) -> str:
    if replication is None:
        return "down"
    return "replica" if replication.get("role") == "slave" else "master"


def haproxy_routes_to(cluster: Cluster) -> str | None:
    """The server HAProxy sends clients to; None if none is UP, or several (haproxy.cfg then
    turns clients away rather than pick one)."""
    routed = _routed()
    return routed[0] if len(routed) == 1 else None


def _routed() -> list[str]:
    try:
        return _up(_haproxy_servers())
    except OSError:
        return []


def _up(servers: dict[str, dict[str, str]]) -> list[str]:
    # "UP 1/2" is UP and failing a check: it still gets clients.
    return [name for name, server in servers.items() if server["status"].startswith("UP")]


def _redis_node(address: str) -> Node | None:
    """The Redis node behind an address Redis or Sentinel hands out (an IP here, a name in Swarm)."""
    return next((node for node in topology.REDIS if address in (node.ip, node.name)), None)


def query(cluster: Cluster, *command: str | int) -> Reply:
    """One command to whichever node is master, through HAProxy, as the services send it."""
    with RespConnection(topology.REDIS_PROXY.ip, topology.Ports.REDIS, _password(cluster)) as connection:
        return connection.execute(*command)


def pairs(reply: Reply) -> dict[str, str]:
    """A flat [key, value, …] reply (XINFO, SENTINEL MASTER) as a dict."""
    return _pairs(reply)


def _ask(cluster: Cluster, node: Node, port: int, *command: str | int) -> Reply:
    """One command to `node`'s Redis (Ports.REDIS) or Sentinel (Ports.SENTINEL)."""
    with RespConnection(node.ip, port, _password(cluster)) as connection:
        return connection.execute(*command)


def _replication(cluster: Cluster, node: Node) -> dict[str, str] | None:
    """INFO replication of `node`, or None if it does not answer (dead, cut off, loading)."""
    try:
        return _info_fields(str(_ask(cluster, node, Ports.REDIS, "INFO", "replication")))
    except (OSError, RedisError):
        return None


def _in_sync_replicas(replication: dict[str, str]) -> list[dict[str, str]]:
    """The `slaveN` entries of a master's INFO that are streaming (state=online)."""
    entries = (_comma_fields(value) for key, value in replication.items() if re.fullmatch(r"slave\d+", key))
    return [entry for entry in entries if entry.get("state") == "online"]


@dataclass(frozen=True)
class _SentinelView:
    master: str  # the address it hands out for the master
    flags: str  # "master", or with s_down, o_down, failover_in_progress…
    replicas_up: int
    other_sentinels: int


def _sentinel_views(cluster: Cluster) -> dict[str, _SentinelView | None]:
    """Each Sentinel's view of the master, None for a Sentinel that does not answer."""
    views: dict[str, _SentinelView | None] = {}
    for node in topology.REDIS:
        try:
            views[node.name] = _sentinel_view(cluster, node)
        except (OSError, RedisError):
            views[node.name] = None
    return views


def _sentinel_view(cluster: Cluster, node: Node) -> _SentinelView:
    with RespConnection(node.ip, Ports.SENTINEL, _password(cluster)) as connection:
        master_fields = _pairs(connection.execute("SENTINEL", "MASTER", topology.REDIS_MASTER_NAME))
        replicas = connection.execute("SENTINEL", "REPLICAS", topology.REDIS_MASTER_NAME)
    replica_fields = [_pairs(replica) for replica in replicas] if isinstance(replicas, list) else []
    return _SentinelView(
        master=master_fields["ip"],
        flags=master_fields["flags"],
        replicas_up=sum(1 for replica in replica_fields
                        if replica["flags"] == "slave" and replica.get("master-link-status") == "ok"),
        other_sentinels=int(master_fields["num-other-sentinels"]))


def _haproxy_get(path: str) -> str:
    connection = http.client.HTTPConnection(PROXY.ip, Ports.HAPROXY_STATS, timeout=QUERY_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            raise ConnectionError(f"HAProxy {path}: HTTP {response.status}")
        return response.read().decode()
    finally:
        connection.close()


def _haproxy_servers() -> dict[str, dict[str, str]]:
    """HAProxy's row for each Redis server of its stats CSV (status, last check…)."""
    rows = csv.DictReader(io.StringIO(_haproxy_get("/stats;csv").removeprefix("# ")))
    return {row["svname"]: row for row in rows
            if row["pxname"] == HAPROXY_BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")}


# -- status ----------------------------------------------------------------------------

def status_lines(cluster: Cluster) -> list[str]:
    lines = [_redis_status(cluster, node) for node in topology.REDIS]
    lines += [_sentinel_status(name, view) for name, view in _sentinel_views(cluster).items()]
    lines.append(_haproxy_status())
    return lines


def _redis_status(cluster: Cluster, node: Node) -> str:
    replication = _replication(cluster, node)
    if replication is None:
        return f"{node.name}: down"
    if replication.get("role") == "slave":
        leader = _redis_node(replication.get("master_host", ""))
        return (f"{node.name}: replica of {leader.name if leader else replication.get('master_host')}, "
                f"link {replication.get('master_link_status')}, offset {replication.get('slave_repl_offset')}")
    offset = int(replication.get("master_repl_offset", "0"))
    replicas = ", ".join(_replica_status(entry, offset) for entry in _in_sync_replicas(replication)) or "none"
    return f"{node.name}: master, offset {offset}, replicas in sync: {replicas}"


def _replica_status(entry: dict[str, str], master_offset: int) -> str:
    replica = _redis_node(entry.get("ip", ""))
    behind = master_offset - int(entry.get("offset", "0"))
    return f"{replica.name if replica else entry.get('ip')} ({behind} B behind, acked {entry.get('lag')} s ago)"


def _sentinel_status(name: str, view: _SentinelView | None) -> str:
    if view is None:
        return f"sentinel on {name}: down"
    leader = _redis_node(view.master)
    return (f"sentinel on {name}: master {leader.name if leader else view.master} ({view.flags}), "
            f"{view.replicas_up} replicas up, {view.other_sentinels} other sentinels")


def _haproxy_status() -> str:
    try:
        servers = _haproxy_servers()
    except OSError as error:
        return f"haproxy: not answering ({error})"
    states = ", ".join(f"{name} {server['status']}" + ("" if server["status"] == "UP" else f" ({server['last_chk']})")
                       for name, server in servers.items())
    return f"haproxy: routes to {' and '.join(_up(servers)) or 'nothing'}; {states}"
