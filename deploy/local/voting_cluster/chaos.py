"""`scripts/chaos`: failures injected into the local cluster under load, each checked by
`voting load --verify` through Traefik over HTTPS and judged by `voting_chaos.runner` (what
each column measures and when a scenario fails are said there).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Callable

from voting_chaos.runner import (MAX_REDIS_FAILOVER_OUTAGE_S, NO_OUTAGE, Fault, Scenario, SplitBrainWatch, choose,
                                 run_all, summary, wait_until, write_doc)

from . import app, edge, hosts, postgres_ha, redis_ha, topology
from .cluster import Cluster
from .lifecycle import down, up
from .topology import APPS, REDIS, Node

RESULTS_DIR = topology.REPO / "target" / "chaos"
DOC = topology.REPO / "docs" / "chaos.md"


# -- faults ----------------------------------------------------------------------------

def kill_redis_master(cluster: Cluster, state: dict) -> Fault:
    old = _require(redis_ha.master(cluster), "a Redis master")
    redis_ha.kill(cluster, old)
    state["redis_down"] = old
    return Fault(recovered=lambda: _redis_routed_to_new_master(cluster, old),
                 notes=[f"killed {old.name}"])


def rejoin_old_redis_master(cluster: Cluster, state: dict) -> Fault:
    old: Node = state.pop("redis_down")
    watch = SplitBrainWatch(lambda: [n for n, r in redis_ha.roles(cluster).items() if r == "master"])
    redis_ha.restart(cluster, old)
    return Fault(recovered=lambda: redis_ha.roles(cluster).get(old.name) == "replica",
                 checks=[watch.stop_and_check],
                 notes=[f"restarted {old.name}"])


def partition_redis_master(cluster: Cluster, state: dict) -> Fault:
    old = _require(redis_ha.master(cluster), "a Redis master")
    others = [n for n in REDIS if n != old]
    # Cut off from the other Redis hosts (their replicas and Sentinels) while HAProxy and
    # the services still reach it: the classic split brain.
    hosts.partition([old], others)

    def heal_and_rejoin() -> str | None:
        hosts.heal([old], others)
        redis_ha.wait_healthy(cluster, timeout=60)
        role = redis_ha.roles(cluster).get(old.name)
        return None if role == "replica" else f"{old.name} is {role} after the partition healed"

    return Fault(recovered=lambda: _redis_routed_to_new_master(cluster, old), checks=[heal_and_rejoin],
                 notes=[f"partitioned {old.name} from {', '.join(n.name for n in others)}"])


def kill_postgres_primary(cluster: Cluster, state: dict) -> Fault:
    old = _require(postgres_ha.primary(cluster), "a PostgreSQL primary")
    postgres_ha.kill(cluster, old)
    state["postgres_down"] = old
    return Fault(recovered=lambda: _pgpool_routes_to_new_primary(cluster, old), notes=[f"killed {old.name}"])


def rejoin_old_postgres_primary(cluster: Cluster, state: dict) -> Fault:
    old: Node = state.pop("postgres_down")
    watch = SplitBrainWatch(lambda: [n for n, r in postgres_ha.roles(cluster).items() if r == "primary"])
    began = time.monotonic()
    postgres_ha.rejoin(cluster, old)
    took = time.monotonic() - began
    return Fault(recovered=lambda: postgres_ha.roles(cluster).get(old.name) == "standby",
                 checks=[watch.stop_and_check], notes=[f"rejoined {old.name} in {took:.1f} s"])


def kill_worker_mid_batch(cluster: Cluster, state: dict) -> Fault:
    node = APPS[0]
    host = cluster.host(node)
    consumer = f"{node.name}-worker-{host.pid('worker')}-"
    pending = wait_until(lambda: _freeze_holding_votes(cluster, host, consumer), 30,
                         "the worker to be caught holding a batch", interval=0.005)
    host.kill("worker")
    killed = time.monotonic()
    fault = Fault(recovered=lambda: False,
                  notes=[f"killed the {node.name} worker holding {pending} votes; the other worker claimed them"])

    def claimed_then_restarted() -> bool:
        if fault.held_back_s is None:
            if app.pending_of(cluster, consumer) > 0:
                return False
            fault.held_back_s = time.monotonic() - killed
            app.start_service(cluster, node, "worker")
        return app.health(host, "worker")[0] == 200

    fault.recovered = claimed_then_restarted
    return fault


def kill_vote_replica(cluster: Cluster, state: dict) -> Fault:
    return _kill_and_restart(cluster, APPS[0], "vote")


def kill_result_replicas(cluster: Cluster, state: dict) -> Fault:
    """Both, one after the other, so the open result stream is certainly cut once."""
    first = _kill_and_restart(cluster, APPS[0], "result")
    wait_until(first.recovered, 60, "the first result replica to come back")
    second = _kill_and_restart(cluster, APPS[1], "result")
    return Fault(recovered=second.recovered, notes=["killed app-1 result, then app-2 result"])


def restart_traefik(cluster: Cluster, state: dict) -> Fault:
    before = {h: edge.served_certificate(cluster, h) for h in (topology.VOTE_HOST, topology.RESULT_HOST)}
    serving_after = edge.restart_traefik(cluster)

    def same_certificates() -> str | None:
        for host_name, fingerprint in before.items():
            if edge.served_certificate(cluster, host_name) != fingerprint:
                return f"{host_name}: a new certificate was issued instead of reusing the stored one"
        return None

    return Fault(recovered=lambda: True, checks=[same_certificates],
                 notes=[f"HTTPS served again {serving_after:.2f} s after the restart, same certificates"])


SCENARIOS = [
    Scenario("redis-master-killed", "kill -9 the Redis master", kill_redis_master, MAX_REDIS_FAILOVER_OUTAGE_S),
    Scenario("redis-old-master-rejoins", "the killed Redis master comes back", rejoin_old_redis_master, NO_OUTAGE),
    Scenario("redis-master-partitioned", "cut the Redis master off from replicas and Sentinels",
             partition_redis_master, MAX_REDIS_FAILOVER_OUTAGE_S),
    Scenario("postgres-primary-killed", "kill -9 the PostgreSQL primary", kill_postgres_primary, NO_OUTAGE),
    Scenario("postgres-old-primary-rejoins", "the killed PostgreSQL primary comes back",
             rejoin_old_postgres_primary, NO_OUTAGE),
    Scenario("worker-killed", "kill -9 a worker mid-batch", kill_worker_mid_batch, NO_OUTAGE),
    Scenario("vote-replica-killed", "kill -9 a vote replica", kill_vote_replica, NO_OUTAGE),
    Scenario("result-replicas-killed", "kill -9 each result replica in turn", kill_result_replicas, NO_OUTAGE),
    Scenario("traefik-restarted", "restart Traefik", restart_traefik, None),
]


# -- helpers ---------------------------------------------------------------------------

def _require(value, what: str):
    if value is None:
        raise RuntimeError(f"no {what} to fail: is the cluster healthy? (`scripts/cluster status`)")
    return value


def _redis_routed_to_new_master(cluster: Cluster, old: Node) -> bool:
    new = redis_ha.master(cluster)
    return new is not None and new != old and redis_ha.haproxy_routes_to(cluster) == new.name


def _pgpool_routes_to_new_primary(cluster: Cluster, old: Node) -> bool:
    new = postgres_ha.primary(cluster)
    if new is None or new == old:
        return False
    return any(n.get("role") == "primary" and n.get("hostname") == new.ip and n.get("status") in ("up", "waiting")
               for n in postgres_ha.pool_nodes(cluster))


def _freeze_holding_votes(cluster: Cluster, host: hosts.Host, consumer: str) -> int:
    """Stops the worker (SIGSTOP) while it holds delivered, unacknowledged votes: mid-batch.

    A batch takes milliseconds, so seeing votes pending and then killing could miss it; a
    stopped worker cannot acknowledge in between. Returns how many it holds, or 0 (and lets
    it run on) if it held none at the moment it stopped.
    """
    if app.pending_of(cluster, consumer) == 0:
        return 0
    host.kill("worker", signal.SIGSTOP)
    held = app.pending_of(cluster, consumer)
    if held == 0:
        host.kill("worker", signal.SIGCONT)
    return held


def _kill_and_restart(cluster: Cluster, node: Node, service: str) -> Fault:
    host = cluster.host(node)
    host.kill(service)
    # What Swarm's restart policy does for a dead task.
    app.start_service(cluster, node, service)
    return Fault(recovered=lambda: app.health(host, service)[0] == 200,
                 notes=[f"killed and restarted {node.name} {service}"])


# -- running ---------------------------------------------------------------------------

def load_command(cluster: Cluster, rate: float) -> Callable[[float], list[str]]:
    return lambda duration: [
        str(app.BINARY), "load", *edge.load_args(cluster), "--rate", str(rate), "--duration", f"{duration}s",
        "--concurrency", "2000", "--timeout", "5s", "--verify-timeout", "120s", "--json"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="votes per second (default 200)")
    parser.add_argument("--duration", type=float, default=25, help="seconds of load per scenario (default 25)")
    parser.add_argument("--fault-at", type=float, default=5, help="seconds into the load (default 5)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/chaos.md")
    args = parser.parse_args()
    chosen = choose(SCENARIOS, args.only)
    cluster = Cluster()
    if not hosts.network_exists():
        up(cluster, build=True)
    try:
        rows = run_all(cluster, chosen, load_command(cluster, args.rate), args.duration, args.fault_at, RESULTS_DIR)
    finally:
        if not args.keep:
            down(cluster)
    if not args.no_doc and len(chosen) == len(SCENARIOS):
        write_doc(DOC, "chaos", rows, f"{args.rate:.0f} votes/s for {args.duration:.0f} s per scenario "
                                      "on the local cluster (`scripts/chaos`)")
    sys.exit(summary("chaos", rows))


if __name__ == "__main__":
    main()
