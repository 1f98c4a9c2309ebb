"""Hosts as network namespaces on one bridge, and the processes that run on them.

Processes are started detached (their own session, output to a log file, pid in a pid
file), so `scripts/cluster up` can return and a later `down`, `status` or chaos run can
find, signal and stop them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from voting_chaos.runner import wait_until

from .topology import BRIDGE, HOST_IP, PREFIX, Node

__all__ = ["Host", "sh", "wait_until"]


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None,
       env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a command to completion and returns what it printed."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                            env=None if env is None else {**os.environ, **env})
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


class Host:
    """One node: commands run inside its network namespace, optionally as another user."""

    def __init__(self, node: Node, root: Path):
        self.node = node
        self.root = root
        self.dir = root / node.name
        self.name = node.name
        self.ip = node.ip

    def _argv(self, argv: Sequence[str], user: str | None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.node.netns]
        if user:
            # setpriv execs the command itself (su and runuser fork): the pid we record is the
            # server's own, so `kill -9` hits the server and not a wrapper.
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
        return prefix + list(argv)

    def run(self, argv: Sequence[str], *, user: str | None = None, check: bool = True, timeout: float = 120,
            input: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return sh(self._argv(argv, user), check=check, timeout=timeout, input=input, env=env)

    # -- long-running processes --------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{self.name}.{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / "log" / f"{self.name}.{name}.log"

    def spawn(self, name: str, argv: Sequence[str], *, user: str | None = None,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        """Starts a server in the background; its output goes to `log_file(name)`."""
        if self.alive(name):
            raise RuntimeError(f"{self.name}/{name} is already running (pid {self.pid(name)})")
        log = self.log_file(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                self._argv(argv, user), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd, env=None if env is None else {**os.environ, **env})
        self.pid_file(name).write_text(f"{process.pid}\n")
        return process.pid

    def adopt(self, name: str, pid: int) -> None:
        """Records a server that started itself (pg_ctl, daemonising tools) under `name`."""
        self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).write_text(f"{pid}\n")

    def pid(self, name: str) -> int | None:
        try:
            return int(self.pid_file(name).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def alive(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and process_alive(pid)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int | None:
        pid = self.pid(name)
        if pid is not None and process_alive(pid):
            os.kill(pid, sig)
            if sig == signal.SIGKILL:
                wait_until(lambda: not process_alive(pid), 10, f"{self.name}/{name} to die")
            return pid
        return None

    def stop(self, name: str, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        pid = self.pid(name)
        if pid is None or not process_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not process_alive(pid), timeout, f"{self.name}/{name} to stop")
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not process_alive(pid), 10, f"{self.name}/{name} to die")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# -- the network -----------------------------------------------------------------------

def create_network(nodes: Iterable[Node]) -> None:
    """A bridge on this machine with one namespace per node plugged into it."""
    sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    # With br_netfilter loaded (Docker loads it) bridged frames cross the FORWARD chain, whose
    # policy Docker sets to DROP: let this bridge's own traffic through, and only that.
    sh(["iptables", "-w", "-I", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])
    sh(["ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", BRIDGE])
    sh(["ip", "link", "set", BRIDGE, "up"])
    for node in nodes:
        sh(["ip", "netns", "add", node.netns])
        sh(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns])
        sh(["ip", "link", "set", node.veth, "master", BRIDGE, "up"])
        inside = ["ip", "netns", "exec", node.netns]
        sh(inside + ["ip", "addr", "add", f"{node.ip}/{PREFIX}", "dev", "eth0"])
        sh(inside + ["ip", "link", "set", "eth0", "up"])
        sh(inside + ["ip", "link", "set", "lo", "up"])


def destroy_network(nodes: Iterable[Node]) -> None:
    for node in nodes:
        sh(["ip", "netns", "delete", node.netns], check=False)
        sh(["ip", "link", "delete", node.veth], check=False)
    sh(["ip", "link", "delete", BRIDGE], check=False)
    while sh(["iptables", "-w", "-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"], check=False).returncode == 0:
        pass


def network_exists() -> bool:
    return sh(["ip", "link", "show", BRIDGE], check=False).returncode == 0


def partition(side_a: Iterable[Node], side_b: Iterable[Node]) -> None:
    """Drops every packet between the two sides, both ways: a cut cable, not a refusal.

    Packets are dropped where they arrive (INPUT), never where they leave: dropping on OUTPUT
    would fail the sender's call at once (EPERM), which no real network does.
    """
    _filter("-A", list(side_a), list(side_b))


def heal(side_a: Iterable[Node], side_b: Iterable[Node]) -> None:
    _filter("-D", list(side_a), list(side_b))


def _filter(action: str, side_a: list[Node], side_b: list[Node]) -> None:
    for this, others in ((side_a, side_b), (side_b, side_a)):
        for node in this:
            for other in others:
                rule = ["INPUT", "-s", other.ip, "-j", "DROP"]
                sh(["ip", "netns", "exec", node.netns, "iptables", "-w", action, *rule], check=action == "-A")
