"""The voting services on the app hosts: vote, worker and result on each, like the replicas
of the Swarm stack, reaching Redis through HAProxy and PostgreSQL through Pgpool-II."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from . import redis_ha, topology
from .cluster import Cluster
from .hosts import Host, wait_until
from .topology import APPS, EDGE, Node, Ports

BINARY = topology.REPO / "target" / "release" / "voting"
SERVICES = {"vote": Ports.VOTE, "worker": Ports.WORKER_HEALTH, "result": Ports.RESULT}

# How long an entry may stay pending with a silent worker before the other worker takes it
# over. The default (30 s) would leave a killed worker's batch uncounted for longer than the
# 10 s the results may be stale; a slow-but-alive worker losing a batch to its twin only
# means the batch is applied twice, which changes nothing.
CLAIM_IDLE_MS = 5000


def configure(cluster: Cluster, redis_url: str, database_url: str) -> None:
    """URLs with passwords go to the services as files (`*_FILE`), as Swarm secrets would."""
    files = _files(cluster)
    for variable, url in (("REDIS_URL_FILE", redis_url), ("DATABASE_URL_FILE", database_url)):
        files[variable].parent.mkdir(parents=True, exist_ok=True)
        # Only root, which runs the services, reads them.
        files[variable].parent.chmod(0o700)
        files[variable].write_text(url + "\n")
        files[variable].chmod(0o600)


def _files(cluster: Cluster) -> dict[str, Path]:
    """Where each `*_FILE` variable of the services points."""
    return {"REDIS_URL_FILE": cluster.root / "app" / "redis_url",
            "DATABASE_URL_FILE": cluster.root / "app" / "database_url"}


def _environment(cluster: Cluster, node: Node, service: str, files: dict[str, Path]) -> dict[str, str]:
    common = {"INSTANCE_NAME": f"{node.name}-{service}", "RUST_BACKTRACE": "0",
              # Traefik on the edge adds the client's address to X-Forwarded-For: believed from
              # there, and from nowhere else.
              "TRUSTED_PROXIES": f"{EDGE.ip}/32"}
    if service == "vote":
        return {**common, "VOTE_ADDR": f"0.0.0.0:{Ports.VOTE}", "REDIS_URL_FILE": str(files["REDIS_URL_FILE"]),
                # Acknowledge a vote only once a replica has it: a Redis failover then
                # cannot lose it.
                "VOTE_DURABILITY": "replicated",
                "COOKIE_SECRET_FILE": str(cluster.secret_file("cookie_secret")),
                # scripts/chaos's `voting load` runs on this machine and sends every vote as a
                # new voter, 200 a second from this one address: just what the per-address
                # new-voter limit (5/s) is there to refuse. Every other client arriving through
                # the edge is limited.
                "RATE_LIMIT_EXEMPT": f"{topology.HOST_IP}/32"}
    if service == "worker":
        return {**common, "WORKER_ADDR": f"0.0.0.0:{Ports.WORKER_HEALTH}",
                "REDIS_URL_FILE": str(files["REDIS_URL_FILE"]),
                "DATABASE_URL_FILE": str(files["DATABASE_URL_FILE"]),
                "WORKER_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)}
    return {**common, "RESULT_ADDR": f"0.0.0.0:{Ports.RESULT}",
            "DATABASE_URL_FILE": str(files["DATABASE_URL_FILE"])}


def migrate(cluster: Cluster) -> None:
    """`voting migrate` through Pgpool-II, as the stack's one-shot job does."""
    host = cluster.host(APPS[0])
    env = {"DATABASE_URL_FILE": str(_files(cluster)["DATABASE_URL_FILE"])}
    wait_until(lambda: host.run([str(BINARY), "migrate"], check=False, timeout=60, env=env).returncode == 0,
               60, "voting migrate to succeed", interval=1)


def start(cluster: Cluster) -> None:
    for node in APPS:
        for service in SERVICES:
            start_service(cluster, node, service)
    for node in APPS:
        for service in SERVICES:
            wait_ready(cluster.host(node), service, timeout=60)


def start_service(cluster: Cluster, node: Node, service: str) -> None:
    env = _environment(cluster, node, service, _files(cluster))
    cluster.host(node).spawn(service, [str(BINARY), service], env=env)


def stop(cluster: Cluster) -> None:
    for node in APPS:
        for service in SERVICES:
            cluster.host(node).stop(service)


def health(host: Host, service: str, endpoint: str = "readyz") -> tuple[int, str]:
    """(status, body) of a service's health endpoint; (0, reason) when it does not answer."""
    url = f"http://{host.ip}:{SERVICES[service]}/{endpoint}"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()
    except OSError as error:
        return 0, str(getattr(error, "reason", error))


def wait_ready(host: Host, service: str, timeout: float) -> None:
    wait_until(lambda: health(host, service)[0] == 200, timeout, f"{host.name}/{service} to be ready")


def backends(service: str) -> list[str]:
    return [f"http://{node.ip}:{SERVICES[service]}" for node in APPS]


def status_lines(cluster: Cluster) -> list[str]:
    lines = []
    for node in APPS:
        host = cluster.host(node)
        for service in SERVICES:
            pid = host.pid(service) if host.alive(service) else None
            status, body = health(host, service)
            state = "ready" if status == 200 else f"NOT READY ({status or body})"
            lines.append(f"{node.name:<8} {service:<7} pid {pid or '-':<8} {state}")
    return lines


def results(cluster: Cluster) -> dict:
    """The counts as the first reachable result replica serves them."""
    for node in APPS:
        try:
            url = f"http://{node.ip}:{Ports.RESULT}/api/results"
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            continue
    raise RuntimeError("no result replica answers")


def queue_lag(cluster: Cluster) -> str:
    """Votes queued but not yet counted, as the workers' consumer group sees it."""
    try:
        groups = redis_ha.query(cluster, "XINFO", "GROUPS", "votes")
    except (OSError, redis_ha.RedisError) as error:
        return f"queue: unknown ({error})"
    if not isinstance(groups, list) or not groups:
        return "queue: no consumer group yet"
    group = redis_ha.pairs(groups[0])
    return f"queue: {group.get('lag', '?')} not yet delivered, {group['pending']} delivered but not yet counted"


def pending_of(cluster: Cluster, consumer_prefix: str) -> int:
    """Votes delivered to a worker (by consumer-name prefix) and not yet acknowledged."""
    consumers = redis_ha.query(cluster, "XINFO", "CONSUMERS", "votes", "workers")
    for consumer in consumers if isinstance(consumers, list) else []:
        fields = redis_ha.pairs(consumer)
        if fields["name"].startswith(consumer_prefix):
            return int(fields["pending"])
    return 0
