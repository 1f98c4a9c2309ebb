"""One chaos runner and one report checker, whichever backend injects the failures.

Every scenario runs its own load (open loop, every vote a new voter so each one moves the
total), injects one failure a few seconds in, and measures:
- acknowledged / counted / lost / extra / unknown: from `voting load --verify`;
- longest vote outage: the longest stretch in which no vote was acknowledged;
- longest result staleness: the longest an acknowledged vote waited before the live result
  stream (`/events`, followed through Traefik and reconnected like a browser) showed it;
- time to recover: from the failure until the topology is whole again (a new master or
  primary routed to, a killed process or node back in rotation, a rejoined node following).
A scenario fails if it loses or adds a vote or misses its target; the exit status says so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
B = TypeVar("B")

# Targets (docs/chaos.md says where they come from).
MAX_STALENESS_S = 10.0
MAX_REDIS_FAILOVER_OUTAGE_S = 5.0
# An edge lost: a client that knows every edge's address gives the lost one up after a 1 s
# connect timeout and goes to the next, as browsers do with several address records.
MAX_EDGE_OUTAGE_S = 5.0
NO_OUTAGE = 0.0  # no stretch of 500 ms without an acknowledged vote
# Where no outage is the target, a stretch without acknowledgements in which no vote was
# refused, none timed out and none failed to connect is a stall: every vote waited, and was
# taken. On the 2-core machine that carries the four Swarm nodes, every request stalls for up
# to about a second when Swarm starts a replacement container or PostgreSQL clones a rejoining
# node (docs/chaos.md, "The harness is paid for by the machine it measures"): such a stall is
# reported as a missed target, not failed. One that lasts longer, or in which votes failed, is
# an outage.
HOST_STALL_S = 2.0
HOST_STALL_LIMIT = "a 2-core host running 4 nodes, on which every request stalls while Swarm starts a container"
RECOVERY_TIMEOUT_S = 180.0


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Polls `probe` until it returns something truthy; raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:  # a probe failing is the same as "not yet"
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s{detail}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now, for a server a harness starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    # Timing targets missed where the scenario names what limits them (`Scenario.limited_by`):
    # shown in the row and the summary, without failing the run. Nothing lost, nothing extra,
    # results converged, one master, a recovery: those always fail.
    missed: list[str] = field(default_factory=list)


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
    # The scenario's outage target when it depends on what the failure hit (a node holding
    # the Redis master, or not); None keeps the scenario's own.
    max_outage_s: float | None = None


@dataclass
class Scenario(Generic[B]):
    name: str
    title: str
    inject: Callable[[B, dict], Fault]
    max_outage_s: float | None
    # No request may fail at all (a rolling update): not one error, refusal or unknown outcome.
    strict: bool = False
    # Seconds of load for this scenario instead of the run's (room for a failure and a return).
    duration_s: float | None = None
    # None: no target (nothing can be shown while every node is down).
    max_staleness_s: float | None = MAX_STALENESS_S
    # Run before the load starts: puts the topology in the shape the failure needs.
    prepare: Callable[[B], None] | None = None
    # Why this scenario's outage and staleness targets cannot be met yet, if they cannot: the
    # component that limits them. A missed timing target is then reported, not failed.
    limited_by: str | None = None
    # The same for the staleness target alone: the outage target still fails when missed.
    staleness_limited_by: str | None = None


class SplitBrainWatch:
    """Samples who claims to be master while something fails or rejoins: two at once is split
    brain. `masters` answers from wherever it can; a sample that raises is skipped."""

    def __init__(self, masters: Callable[[], list[str]], interval: float = 0.05):
        self._masters = masters
        self._interval = interval
        self._seen_two: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
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


def run_scenario(
    backend: B,
    scenario: Scenario[B],
    state: dict,
    load_command: Callable[[float], list[str]],
    duration: float,
    fault_at: float,
    results_dir: Path,
    poll_interval: float = 0.05,
) -> Row:
    row = Row(scenario.name)
    duration = scenario.duration_s or duration
    if scenario.prepare:
        scenario.prepare(backend)
    load = subprocess.Popen(load_command(duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The failure is scheduled into the run, so there is load before and after it.
    time.sleep(fault_at)
    began = time.monotonic()
    try:
        fault = scenario.inject(backend, state)
        wait_until(fault.recovered, RECOVERY_TIMEOUT_S, f"{scenario.name}: recovery", interval=poll_interval)
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
        row.failures.append(f"voting load printed no report: {error_of(stderr)}")
        return row
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{scenario.name}.json").write_text(json.dumps(report, indent=2))
    max_outage = fault.max_outage_s if fault.max_outage_s is not None else scenario.max_outage_s
    judge(
        row,
        report,
        max_outage,
        fault.held_back_s,
        strict=scenario.strict,
        max_staleness_s=scenario.max_staleness_s,
        limited_by=scenario.limited_by,
        staleness_limited_by=scenario.staleness_limited_by,
    )
    return row


def stalled_only(report: dict, outage_s: float) -> bool:
    """Whether a stretch without acknowledgements was a stall of the host, not an outage: see
    HOST_STALL_S."""
    errors = report.get("errors") or {}
    failed = report.get("refused", 0) + errors.get("timeout", 0) + errors.get("connect", 0)
    return failed == 0 and outage_s < HOST_STALL_S


def judge(
    row: Row,
    report: dict,
    max_outage_s: float | None,
    held_back_s: float | None = None,
    strict: bool = False,
    max_staleness_s: float | None = MAX_STALENESS_S,
    limited_by: str | None = None,
    staleness_limited_by: str | None = None,
) -> None:
    """Fills `row` from a `voting load --json` report and records every missed target."""

    def missed(target: str, limit: str | None) -> None:
        # A target with a known limit is reported and the limit named once; any other fails.
        if limit is None:
            row.failures.append(target)
            return
        row.missed.append(target)
        note = f"target missed, limited by {limit}"
        if note not in row.notes:
            row.notes.append(note)

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
    if row.acknowledged == 0:
        row.failures.append("nothing was acknowledged")
    if row.lost or row.extra:
        row.failures.append(f"{row.lost} lost, {row.extra} extra")
    if max_outage_s is not None and row.outage_s > max_outage_s:
        outage = f"vote outage {row.outage_s:.2f} s, {row.outage_s - max_outage_s:.2f} s over {max_outage_s:.0f} s"
        if limited_by is None and max_outage_s == NO_OUTAGE and stalled_only(report, row.outage_s):
            missed(f"{outage} (votes slowed, none refused)", HOST_STALL_LIMIT)
        else:
            missed(outage, limited_by)
    if row.staleness_s is None:
        row.failures.append("the result stream never showed every acknowledged vote")
    elif max_staleness_s is not None and row.staleness_s > max_staleness_s:
        missed(
            f"results {row.staleness_s:.1f} s stale, {row.staleness_s - max_staleness_s:.1f} s over "
            f"{max_staleness_s:.0f} s",
            limited_by or staleness_limited_by,
        )
    if strict:
        failed = sum((report.get("errors") or {}).values())
        refused, unknown = report.get("refused", 0), report.get("unknown", 0)
        if failed or refused or unknown:
            row.failures.append(f"{failed} failed requests, {refused} refused, {unknown} unknown")


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | acknowledged | counted | lost | extra | unknown | longest vote outage "
        "| longest result staleness | time to recover | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        staleness = f"{r.staleness_s:.2f} s" if r.staleness_s is not None else "—"
        recover = f"{r.recover_s:.2f} s" if r.recover_s is not None else "—"
        if r.failures:
            verdict = "FAIL: " + "; ".join(r.failures)
        elif r.missed:
            verdict = "target missed: " + "; ".join(r.missed)
        else:
            verdict = "pass"
        # One line a row, whatever a failure's text holds (a program's error runs over several).
        verdict = " ".join(verdict.split())
        lines.append(
            f"| {r.scenario} | {r.acknowledged} | {r.counted} | {r.lost} | {r.extra} | {r.unknown} "
            f"| {r.outage_s:.2f} s | {staleness} | {recover} | {verdict} |"
        )
    return "\n".join(lines)


def write_doc(doc: Path, section: str, rows: Sequence[Row], description: str) -> None:
    """Replaces the text between `<!-- SECTION:begin -->` and `<!-- SECTION:end -->` in `doc`."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    notes = "\n".join(f"- {r.scenario}: {'; '.join(r.notes)}" for r in rows if r.notes)
    generated = (
        f"{begin}\nLast run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {description}.\n\n"
        f"{table(rows)}\n\n{notes}\n{end}"
    )
    text = doc.read_text() if doc.exists() else f"# Chaos\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    start, stop = text.index(begin), text.index(end) + len(end)
    doc.write_text(text[:start] + generated + text[stop:])


def error_of(stderr: str) -> str:
    """The end of what a failed program printed, without the backtrace that RUST_BACKTRACE adds
    to an error (hundreds of lines of frames that would push the error itself out)."""
    return stderr.split("\nStack backtrace:")[0].strip()[-500:]


def run_all(
    backend: B,
    scenarios: Sequence[Scenario[B]],
    load_command: Callable[[float], list[str]],
    duration: float,
    fault_at: float,
    results_dir: Path,
    before_each: Callable[[Scenario[B]], None] | None = None,
    poll_interval: float = 0.05,
) -> list[Row]:
    """Runs the scenarios in order, printing each row as it is done, then the table.
    `poll_interval`: how often recovery is probed (a probe that costs a process per node
    should not run back to back on the machine it measures)."""
    rows: list[Row] = []
    state: dict = {}
    for scenario in scenarios:
        print(f"== {scenario.name}: {scenario.title}", flush=True)
        if before_each:
            before_each(scenario)
        row = run_scenario(backend, scenario, state, load_command, duration, fault_at, results_dir, poll_interval)
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    print("\n" + table(rows))
    return rows


def summary(prog: str, rows: Sequence[Row]) -> int:
    """Prints the one-line summary; the exit status."""
    failed = [r.scenario for r in rows if r.failures]
    missed = [r.scenario for r in rows if r.missed and not r.failures]
    passed = len(rows) - len(failed) - len(missed)
    line = f"\n{prog}: {passed} passed, {len(missed)} missed a timing target whose limit is known"
    line += f" ({', '.join(missed)})" if missed else ""
    line += f", {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else "")
    print(line)
    # Again, one per line: a long table row is the first thing a truncated log loses.
    for row in rows:
        for failure in row.failures:
            print(f"  {row.scenario}: {failure}")
    return 1 if failed else 0


def choose(scenarios: Sequence[Scenario[B]], only: str | None) -> list[Scenario[B]]:
    """The scenarios named in `only` (comma-separated), in the suite's order; all without it."""
    if not only:
        return list(scenarios)
    wanted = only.split(",")
    unknown = sorted(set(wanted) - {s.name for s in scenarios})
    if unknown:
        raise SystemExit(f"no such scenario: {', '.join(unknown)} (known: {', '.join(s.name for s in scenarios)})")
    return [s for s in scenarios if s.name in wanted]
