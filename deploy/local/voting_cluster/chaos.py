"""`scripts/chaos`: failures injected into the running cluster under load, each checked by
`voting load --verify` through Traefik over HTTPS.

Every scenario runs its own load (open loop, every vote a new voter so each one moves the
total), injects one failure a few seconds in, and measures:
- acknowledged / counted / lost / extra / unknown: from `voting load --verify`;
- longest vote outage: the longest stretch in which no vote was acknowledged;
- longest result staleness: the longest an acknowledged vote waited before the live result
  stream (`/events`, followed through Traefik and reconnected like a browser) showed it;
- time to recover: from the failure until the topology is whole again (a new master or
  primary routed to, a killed process back in rotation, a rejoined node following).
A scenario fails if it loses or adds a vote or misses its target; the exit status says so.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import app, edge, hosts, postgres_ha, redis_ha, topology
from .cluster import Cluster
from .lifecycle import down, up
from .hosts import wait_until
from .topology import APPS, REDIS, Node

RESULTS_DIR = topology.REPO / "target" / "chaos"
DOC = topology.REPO / "docs" / "chaos.md"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"

# Targets (see docs/chaos.md for where they come from).
MAX_STALENESS_S = 10.0
MAX_REDIS_FAILOVER_OUTAGE_S = 5.0
NO_OUTAGE = 0.0  # no stretch of 500 ms without an acknowledged vote


@dataclass
class Row:
    scenario: str
    acknowledged: int = 0
    counted: int = 0
    lost: int = 0
    extra: int = 0
    unknown: int = 0
    outage_s: float = 0.0
    staleness_s: float | None = None
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Fault:
    """What a scenario did, and how to tell the topology has recovered from it."""

    recovered: Callable[[], object]
    # Checked when the load is over; each returns a failure message or None.
    checks: list[Callable[[], str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Votes the failure held back out of sight, for this long: the result stream's totals
    # cannot show a few missing votes while later ones keep arriving, so this is measured
    # at the source (e.g. a killed worker's batch, until another worker claimed it).
    held_back_s: float | None = None


@dataclass
class Scenario:
    name: str
    title: str
    inject: Callable[[Cluster, dict], Fault]
    max_outage_s: float | None


# -- faults ----------------------------------------------------------------------------

def kill_redis_master(cluster: Cluster, state: dict) -> Fault:
    old = _require(redis_ha.master(cluster), "a Redis master")
    redis_ha.kill(cluster, old)
    state["redis_down"] = old
    return Fault(recovered=lambda: _redis_routed_to_new_master(cluster, old),
                 notes=[f"killed {old.name}"])


def rejoin_old_redis_master(cluster: Cluster, state: dict) -> Fault:
    old: Node = state.pop("redis_down")
    watch = _MasterWatch(lambda: [n for n, r in redis_ha.roles(cluster).items() if r == "master"])
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
    watch = _MasterWatch(lambda: [n for n, r in postgres_ha.roles(cluster).items() if r == "primary"])
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


class _MasterWatch:
    """Samples who claims to be master while a node rejoins: two at once is split brain."""

    def __init__(self, masters: Callable[[], list[str]]):
        self._masters = masters
        self._seen_two: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                masters = self._masters()
            except Exception:
                continue
            if len(masters) > 1 and not self._seen_two:
                self._seen_two = masters

    def stop_and_check(self) -> str | None:
        self._stop.set()
        self._thread.join()
        return f"two primaries at once: {', '.join(self._seen_two)}" if self._seen_two else None


# -- running ---------------------------------------------------------------------------

def load_command(cluster: Cluster, rate: float, duration: float) -> list[str]:
    return [str(app.BINARY), "load", *edge.load_args(cluster), "--rate", str(rate), "--duration", f"{duration}s",
            "--concurrency", "2000", "--timeout", "5s", "--verify-timeout", "120s", "--json"]


def run_scenario(cluster: Cluster, scenario: Scenario, state: dict, rate: float, duration: float,
                 fault_at: float) -> Row:
    row = Row(scenario.name)
    load = subprocess.Popen(load_command(cluster, rate, duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # The failure is scheduled into the run, so there is load before and after it.
    time.sleep(fault_at)
    began = time.monotonic()
    try:
        fault = scenario.inject(cluster, state)
        wait_until(fault.recovered, 120, f"{scenario.name}: recovery", interval=0.05)
        row.recover_s = time.monotonic() - began
    except Exception as error:
        fault = Fault(recovered=lambda: True)
        row.failures.append(f"fault or recovery failed: {error}")
    stdout, stderr = load.communicate(timeout=duration + 300)
    row.notes += fault.notes
    for check in fault.checks:
        try:
            failure = check()
        except Exception as error:
            failure = f"check failed: {error}"
        if failure:
            row.failures.append(failure)
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        row.failures.append(f"voting load printed no report: {stderr.strip()[-500:]}")
        return row
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{scenario.name}.json").write_text(json.dumps(report, indent=2))
    _fill(row, report, scenario, fault.held_back_s)
    return row


def _fill(row: Row, report: dict, scenario: Scenario, held_back_s: float | None) -> None:
    verify = report.get("verify") or {}
    row.acknowledged = report["acknowledged"]
    row.counted = verify.get("counted", 0)
    row.lost, row.extra, row.unknown = verify.get("lost", 0), verify.get("extra", 0), verify.get("unknown", 0)
    row.outage_s = report["longest_outage_s"]
    screen = verify.get("vote_to_screen_ms")
    row.staleness_s = screen["max"] / 1000 if screen else None
    if row.staleness_s is not None and held_back_s is not None:
        row.staleness_s = max(row.staleness_s, held_back_s)
    if not verify.get("converged"):
        row.failures.append("the results never matched what was acknowledged")
    if row.lost or row.extra:
        row.failures.append(f"{row.lost} lost, {row.extra} extra")
    if scenario.max_outage_s is not None and row.outage_s > scenario.max_outage_s:
        row.failures.append(f"vote outage {row.outage_s:.2f} s > {scenario.max_outage_s:.0f} s")
    if row.staleness_s is None:
        row.failures.append("the result stream never showed every acknowledged vote")
    elif row.staleness_s > MAX_STALENESS_S:
        row.failures.append(f"results {row.staleness_s:.1f} s stale > {MAX_STALENESS_S:.0f} s")


def table(rows: list[Row]) -> str:
    lines = ["| scenario | acknowledged | counted | lost | extra | unknown | longest vote outage "
             "| longest result staleness | time to recover | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        staleness = f"{r.staleness_s:.2f} s" if r.staleness_s is not None else "—"
        recover = f"{r.recover_s:.2f} s" if r.recover_s is not None else "—"
        verdict = "pass" if not r.failures else "FAIL: " + "; ".join(r.failures)
        lines.append(f"| {r.scenario} | {r.acknowledged} | {r.counted} | {r.lost} | {r.extra} | {r.unknown} "
                     f"| {r.outage_s:.2f} s | {staleness} | {recover} | {verdict} |")
    return "\n".join(lines)


def write_doc(rows: list[Row], rate: float, duration: float) -> None:
    notes = "\n".join(f"- {r.scenario}: {'; '.join(r.notes)}" for r in rows if r.notes)
    generated = (f"{BEGIN}\nLast run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                 f"{rate:.0f} votes/s for {duration:.0f} s per scenario (`scripts/chaos`).\n\n"
                 f"{table(rows)}\n\n{notes}\n{END}")
    text = DOC.read_text() if DOC.exists() else f"# Chaos\n\n{BEGIN}\n{END}\n"
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + generated + text[end:])


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
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    cluster = Cluster()
    if not hosts.network_exists():
        up(cluster, build=True)
    rows: list[Row] = []
    state: dict = {}
    try:
        for scenario in chosen:
            print(f"== {scenario.name}: {scenario.title}", flush=True)
            row = run_scenario(cluster, scenario, state, args.rate, args.duration, args.fault_at)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            down(cluster)
    print("\n" + table(rows))
    if not args.no_doc and len(chosen) == len(SCENARIOS):
        write_doc(rows, args.rate, args.duration)
    failed = [r.scenario for r in rows if r.failures]
    print(f"\nchaos: {len(rows) - len(failed)} passed, {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
