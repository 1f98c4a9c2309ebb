"""The PostgreSQL tier: three nodes under repmgr, with Pgpool-II in front.

pg-1 is initialised as the primary; pg-2 and pg-3 are cloned from it. Synchronous replication
(`ANY 1` over the standbys) keeps every acknowledged commit across a failover. repmgrd on each
node promotes the most advanced standby when the primary dies and repoints the other one;
Pgpool-II sends writes to whichever node is primary and balances reads over all of them.

Every process runs as the `postgres` OS user (PostgreSQL, repmgr and repmgrd refuse root) from
the files under deploy/postgres and deploy/pgpool, rendered into the cluster directory:

    <cluster>/pg-N/data            PGDATA; its postgresql.conf includes voting.conf
    <cluster>/pg-N/socket          unix socket directory, outside PGDATA (which clone and
                                   pg_rewind overwrite with the primary's)
    <cluster>/pg-N/repmgr.conf     repmgr and repmgrd configuration
    <cluster>/pg-N/pgpass          the repmgr password, for repmgr and the walreceiver
    <cluster>/pgpool/              pgpool.conf, pool_hba.conf, pool_passwd, pcp.conf, run/
    <cluster>/log/<node>.<process>.log
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import quote

from . import templates, topology
from .cluster import Cluster
from .hosts import Host, process_alive, sh, wait_until
from .topology import Node, Ports

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
# repmgr's role, and the database that holds its metadata.
REPMGR = "repmgr"
# deploy/postgres/postgresql.conf, rendered into each PGDATA next to the postgresql.conf that
# includes it: a relative include, so the copy that clone and pg_rewind make stays valid.
SHARED_CONFIG = "voting.conf"

POSTGRES_DEPLOY = topology.DEPLOY / "postgres"
PGPOOL_DEPLOY = topology.DEPLOY / "pgpool"

# How long repmgrd may take to promote a standby: reconnect_attempts x reconnect_interval
# (3 s), an election, and a re-run of it if a node answered late, with room to spare.
FAILOVER_TIMEOUT = 30.0
# Until a standby streams, a synchronous commit waits forever: bootstrapping the first node
# commits locally.
_LOCAL_COMMIT = {"PGOPTIONS": "-c synchronous_commit=local"}


# -- Public API -----------------------------------------------------------------------------------

def start(cluster: Cluster) -> Node:
    """Initialises and starts the tier in a fresh cluster directory; returns the primary."""
    first, *others = _members(cluster)
    if (first.data_dir / "PG_VERSION").exists():
        raise RuntimeError(f"{first.data_dir} is already initialised: start needs a fresh cluster directory")
    _initialise_primary(first)
    for standby in others:
        _clone_standby(standby, upstream=first.node)
    for member in _members(cluster):
        _start_repmgrd(member)
    _start_pgpool(cluster)
    return wait_healthy(cluster, timeout=60)


def stop(cluster: Cluster) -> None:
    """Stops Pgpool-II, then every repmgrd (so that stopping the primary starts no failover),
    then the primary, whose shutdown hands its last WAL to the standbys, then the standbys."""
    pool = _Pgpool(cluster).host
    # SIGINT is the fast shutdown of both Pgpool-II and PostgreSQL: clients are disconnected
    # rather than waited for (SIGTERM); the host's stop() SIGKILLs whatever hangs.
    pool.kill("pgpool", signal.SIGINT)
    pool.stop("pgpool")
    members = _members(cluster)
    for member in members:
        member.host.stop("repmgrd")
    for member in sorted(members, key=lambda member: _role(cluster, member.node) != "primary"):
        # A dead postmaster's recorded pid may belong to another process by now: only signal
        # a live one, adopted afresh (repmgr restarts the server under a new pid).
        if member.postmaster_pid() is not None:
            member.adopt_postmaster()
            member.host.kill("postgres", signal.SIGINT)
            member.host.stop("postgres", timeout=60)


def database_url(cluster: Cluster) -> str:
    """The application's URL: through Pgpool-II, as the voting role."""
    password = quote(cluster.secret("voting_db_password"), safe="")
    return (f"postgres://{topology.DATABASE_USER}:{password}@{topology.PGPOOL.ip}:{Ports.PGPOOL}"
            f"/{topology.DATABASE}")


def primary(cluster: Cluster) -> Node | None:
    """The node that accepts writes; raises if more than one does (split brain)."""
    return _primary_among(cluster, topology.POSTGRES)


def roles(cluster: Cluster) -> dict[str, str]:
    """Each node's role as it answers it: "primary", "standby" or "down" (no answer)."""
    return {node.name: _role(cluster, node) for node in topology.POSTGRES}


def pool_nodes(cluster: Cluster) -> list[dict[str, str]]:
    """Pgpool-II's view of the backends, one dict per node in backend order, with the columns
    of SHOW POOL_NODES: node_id, hostname, port, status ("up", "waiting", "down"), pg_status,
    lb_weight, role, pg_role, replication_delay, replication_state, replication_sync_state,
    last_status_change.

    Asked over PCP, which answers even while Pgpool-II restarts its children after a failover,
    when SQL clients wait seconds for an answer.
    """
    return _parse_node_info(_Pgpool(cluster).pcp("pcp_node_info", "--all", "--verbose"))


def kill(cluster: Cluster, node: Node) -> None:
    """kill -9 of the node's postmaster: a crash, with no shutdown checkpoint and nobody told."""
    member = _PgNode(cluster, node)
    if member.postmaster_pid() is None:
        raise RuntimeError(f"{node.name}: PostgreSQL is not running")
    member.adopt_postmaster()
    member.host.kill("postgres")


def rejoin(cluster: Cluster, node: Node) -> None:
    """Brings a stopped or killed node back, never as a second primary.

    If another node runs, the node follows the tier's primary: it is rewound to where it
    diverged from it (an old primary may hold WAL that no standby acknowledged, hence no
    client either). If no node is primary yet, a failover is under way: starting the old
    primary now could race repmgrd's promotion into a split brain, so the node waits for the
    new primary instead. Only when no other node runs does it start as it was. Then Pgpool-II
    attaches it again.
    """
    member = _PgNode(cluster, node)
    if member.postmaster_pid() is not None:
        raise RuntimeError(f"{node.name} is running: rejoin brings back a stopped node")
    others = [other for other in _members(cluster) if other.node != node]
    if any(other.postmaster_pid() is not None for other in others):
        _rewind_and_follow(member, _await_primary(cluster, [other.node for other in others]))
    else:
        member.start_server()
    if not member.host.alive("repmgrd"):
        _start_repmgrd(member)
    _attach_in_pgpool(cluster, node)


def wait_healthy(cluster: Cluster, timeout: float) -> Node:
    """Waits until exactly one node is primary, every other running node streams from it (at
    least one synchronously, so commits complete) and Pgpool-II routes to all of them with the
    right primary; returns the primary. Nodes that are not running are not waited for."""
    try:
        return wait_until(lambda: _healthy_primary(cluster), timeout, "the PostgreSQL tier to be healthy",
                          interval=0.2)
    except TimeoutError as error:
        raise TimeoutError("\n  ".join([str(error), *status_lines(cluster)])) from None


def status_lines(cluster: Cluster) -> list[str]:
    """One line per node (role, replication, lag), then one per backend as Pgpool-II sees it."""
    return [_node_status(cluster, node) for node in topology.POSTGRES] + _pgpool_status(cluster)


# -- One PostgreSQL node --------------------------------------------------------------------------

@dataclass(frozen=True)
class _PgNode:
    """Where one PostgreSQL node keeps its files, and how to run its tools."""

    cluster: Cluster
    node: Node

    @property
    def host(self) -> Host:
        return self.cluster.host(self.node)

    @property
    def node_id(self) -> int:
        return topology.POSTGRES.index(self.node) + 1

    @property
    def data_dir(self) -> Path:
        return self.host.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.host.dir / "socket"

    @property
    def repmgr_conf(self) -> Path:
        return self.host.dir / "repmgr.conf"

    @property
    def passfile(self) -> Path:
        return self.host.dir / "pgpass"

    @property
    def server_log(self) -> Path:
        return self.host.log_file("postgres")

    @property
    def was_standby(self) -> bool:
        # Clone and rejoin leave standby.signal in PGDATA; a promotion removes it.
        return (self.data_dir / "standby.signal").exists()

    def run(self, argv: list[str], *, env: Mapping[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.host.run(argv, user=OS_USER, env=env, input=input)

    def repmgr(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run([str(PG_BIN / "repmgr"), "-f", str(self.repmgr_conf), *args],
                        env={"PGPASSFILE": str(self.passfile), **(env or {})})

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid, from postmaster.pid.

        A postmaster killed with -9 leaves its pid file behind, and the pid may since belong to
        another process: only a live process named postgres counts.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if name == "postgres" and process_alive(pid) else None

    def adopt_postmaster(self) -> None:
        # pg_ctl daemonises the postmaster: record its pid under the host's process names, so
        # that the cluster scripts find it like any other server.
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{self.node.name}: PostgreSQL is not running; see {self.server_log}")
        self.host.adopt("postgres", pid)

    def start_server(self) -> None:
        """Starts PostgreSQL with repmgr.conf's service_start_command, the one repmgr uses too."""
        self.repmgr("node", "service", "--action=start")
        self.adopt_postmaster()

    def recover_as_isolated_standby(self) -> None:
        """Replays the node's own WAL to a consistent point and shuts it down cleanly, as a
        standby that nobody reaches (no TCP listener) and that reaches nobody (no upstream)."""
        pg_ctl = str(PG_BIN / "pg_ctl")
        isolated = f"-c listen_addresses='' -c primary_conninfo='' -c unix_socket_directories='{self.socket_dir}'"
        self.run([pg_ctl, "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.server_log),
                  "-o", isolated])
        self.run([pg_ctl, "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir)])


def _members(cluster: Cluster) -> list[_PgNode]:
    return [_PgNode(cluster, node) for node in topology.POSTGRES]


# -- Bootstrap ------------------------------------------------------------------------------------

_ROLES_SQL = """\
CREATE ROLE :"repmgr" LOGIN SUPERUSER REPLICATION PASSWORD :'repmgr_password';
CREATE DATABASE :"repmgr" OWNER :"repmgr";
ALTER ROLE :"repmgr" SET search_path TO repmgr, "$user", public;
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_database" OWNER :"app_user";
"""


def _initialise_primary(member: _PgNode) -> None:
    _prepare_node(member)
    member.run([str(PG_BIN / "initdb"), "--pgdata", str(member.data_dir), "--data-checksums",
                "--username", SUPERUSER, "--pwfile", str(member.cluster.secret_file("postgres_password")),
                "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"])
    _install_server_config(member)
    member.start_server()
    _create_roles(member)
    member.repmgr("primary", "register", env=_LOCAL_COMMIT)


def _create_roles(member: _PgNode) -> None:
    # The passwords go in on stdin (psql variables), never on a command line others can read.
    variables = {"repmgr": REPMGR, "repmgr_password": member.cluster.secret("repmgr_password"),
                 "app_user": topology.DATABASE_USER, "app_database": topology.DATABASE,
                 "app_password": member.cluster.secret("voting_db_password")}
    script = "".join(f"\\set {name} '{value}'\n" for name, value in variables.items()) + _ROLES_SQL
    member.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(member.socket_dir), "-U", SUPERUSER,
                "-d", "postgres"], input=script, env=_LOCAL_COMMIT)


def _clone_standby(member: _PgNode, upstream: Node) -> None:
    _prepare_node(member)
    member.repmgr("-h", upstream.ip, "-U", REPMGR, "-d", REPMGR, "standby", "clone", "--fast-checkpoint")
    _install_server_config(member)
    member.start_server()
    # --wait-sync: repmgrd refuses to start on a node that cannot read its own record yet.
    member.repmgr("standby", "register", "--wait-sync=30")


def _start_repmgrd(member: _PgNode) -> None:
    # In the foreground, so the pid the host records is repmgrd's own; the host tracks it, so
    # no pid file (the default one, in /tmp, would be shared by every node on this machine).
    member.host.spawn("repmgrd", [str(PG_BIN / "repmgrd"), "-f", str(member.repmgr_conf), "--daemonize=false",
                                  "--no-pid-file"],
                      user=OS_USER, env={"PGPASSFILE": str(member.passfile)})


def _prepare_node(member: _PgNode) -> None:
    """The node's directories, server log, repmgr.conf and password file; PGDATA stays empty."""
    _make_dir(member.host.dir)
    _make_dir(member.data_dir, 0o700)
    _make_dir(member.socket_dir)
    # pg_ctl, running as postgres, appends to the log in a directory root owns.
    member.server_log.parent.mkdir(parents=True, exist_ok=True)
    member.server_log.touch()
    shutil.chown(member.server_log, OS_USER, OS_USER)
    _render(POSTGRES_DEPLOY / "repmgr.conf", member.repmgr_conf, {
        "NODE_ID": member.node_id, "NODE_NAME": member.node.name, "NODE_HOST": member.node.ip,
        "DATA_DIR": member.data_dir, "REPMGR_CONFIG": member.repmgr_conf, "PASSFILE": member.passfile,
        "SOCKET_DIR": member.socket_dir, "SERVER_LOG": member.server_log})
    # Any database: "*" also covers the replication pseudo-database of clone and streaming.
    password = member.cluster.secret("repmgr_password")
    _write_private(member.passfile, f"*:{Ports.POSTGRES}:*:{REPMGR}:{password}\n")


def _install_server_config(member: _PgNode) -> None:
    """Renders deploy/postgres into PGDATA: after initdb, and again after a clone, so that every
    node runs the current deploy/ version rather than a copy of the primary's."""
    _render(POSTGRES_DEPLOY / "postgresql.conf", member.data_dir / SHARED_CONFIG, _node_names())
    _render(POSTGRES_DEPLOY / "pg_hba.conf", member.data_dir / "pg_hba.conf", _access_values())
    main_config = member.data_dir / "postgresql.conf"
    include = f"include '{SHARED_CONFIG}'\n"
    if include not in main_config.read_text():
        with main_config.open("a") as out:
            out.write(include)


def _node_names() -> dict[str, str]:
    return {f"PG_{index}_NAME": node.name for index, node in enumerate(topology.POSTGRES, start=1)}


def _access_values() -> dict[str, str]:
    return {"CLUSTER_SUBNET": f"{topology.SUBNET}.0/{topology.PREFIX}",
            "DATABASE": topology.DATABASE, "DATABASE_USER": topology.DATABASE_USER}


def _make_dir(path: Path, mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    shutil.chown(path, OS_USER, OS_USER)


def _render(template: Path, target: Path, values: Mapping[str, object]) -> None:
    templates.render(template, target, values)
    shutil.chown(target, OS_USER, OS_USER)


def _write_private(path: Path, text: str, owner: str = OS_USER) -> None:
    """A file only its owner may read: libpq and pcp ignore password files others can read."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    shutil.chown(path, owner, owner)


# -- Failover and rejoin --------------------------------------------------------------------------

def _primary_among(cluster: Cluster, nodes: list[Node]) -> Node | None:
    primaries = [node for node in nodes if _role(cluster, node) == "primary"]
    if len(primaries) > 1:
        raise RuntimeError(f"split brain: {', '.join(node.name for node in primaries)} all accept writes")
    return primaries[0] if primaries else None


def _await_primary(cluster: Cluster, candidates: list[Node]) -> Node:
    """Waits until one of `candidates` is primary and its promotion is complete: out of recovery
    and named primary in repmgr's metadata, which `repmgr standby promote` updates only after
    the server left recovery, and which `repmgr node rejoin` checks."""

    def registered_primary() -> Node | None:
        current = _primary_among(cluster, candidates)
        if current is None:
            return None
        rows = _query(cluster, current.ip, "SELECT node_name FROM repmgr.nodes WHERE type = 'primary' AND active",
                      database=REPMGR)
        return current if [row["node_name"] for row in rows] == [current.name] else None

    return wait_until(registered_primary, FAILOVER_TIMEOUT,
                      f"a primary among {', '.join(node.name for node in candidates)} (is repmgrd running?)",
                      interval=0.2)


def _rewind_and_follow(member: _PgNode, current_primary: Node) -> None:
    if member.was_standby:
        # A standby that crashed must redo its crash recovery as a standby. Left to pg_rewind,
        # that recovery runs in single-user mode, as a primary, and writes a checkpoint into
        # the WAL the node shares with its upstream: it could never replay the primary's again.
        member.recover_as_isolated_standby()
    # pg_rewind (before PostgreSQL 16) takes the source's timeline from its control file, which
    # a promotion only updates at the next checkpoint: without one it compares the wrong
    # timelines, and fails or rewinds too little.
    _query(member.cluster, current_primary.ip, "CHECKPOINT")
    # repmgr rewinds if the node diverged, points it at the primary, starts it with
    # service_start_command and waits until it streams.
    member.repmgr("node", "rejoin", "--force-rewind", "-d", _repmgr_conninfo(current_primary))
    member.adopt_postmaster()


def _repmgr_conninfo(node: Node) -> str:
    return f"host={node.ip} port={Ports.POSTGRES} user={REPMGR} dbname={REPMGR} connect_timeout=2"


# -- Pgpool-II ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pgpool:
    """Where Pgpool-II keeps its files, and how to reach its PCP interface."""

    cluster: Cluster

    @property
    def host(self) -> Host:
        return self.cluster.host(topology.PGPOOL)

    @property
    def config(self) -> Path:
        return self.host.dir / "pgpool.conf"

    @property
    def hba(self) -> Path:
        return self.host.dir / "pool_hba.conf"

    @property
    def passwords(self) -> Path:
        # pgpool.conf's pool_passwd names it relative to pgpool.conf's directory.
        return self.host.dir / "pool_passwd"

    @property
    def pcp_config(self) -> Path:
        return self.host.dir / "pcp.conf"

    @property
    def pcp_passfile(self) -> Path:
        # Read by the pcp_* tools, which run as root on this machine.
        return self.host.dir / "pcppass"

    @property
    def run_dir(self) -> Path:
        return self.host.dir / "run"

    def pcp(self, tool: str, *args: str) -> str:
        """Runs a PCP tool over the unix socket in run_dir; returns what it printed."""
        result = sh([tool, "-h", str(self.run_dir), "-p", str(Ports.PCP), "-U", SUPERUSER, "-w", *args],
                    env={"PCPPASSFILE": str(self.pcp_passfile)}, timeout=10)
        return result.stdout


def _start_pgpool(cluster: Cluster) -> None:
    pool = _Pgpool(cluster)
    _make_dir(pool.host.dir)
    _make_dir(pool.run_dir)
    backends = {f"PG_{index}_HOST": node.ip for index, node in enumerate(topology.POSTGRES, start=1)}
    _render(PGPOOL_DEPLOY / "pgpool.conf", pool.config, {**backends, **_node_names(), "PGPOOL_RUN_DIR": pool.run_dir})
    _render(PGPOOL_DEPLOY / "pool_hba.conf", pool.hba, _access_values())
    superuser_password = cluster.secret("postgres_password")
    # Clear-text ("TEXT") entries: with SCRAM, Pgpool-II must know the password itself to
    # authenticate to the backends on the client's behalf.
    _write_private(pool.passwords, f"{SUPERUSER}:TEXT{superuser_password}\n"
                                   f"{topology.DATABASE_USER}:TEXT{cluster.secret('voting_db_password')}\n")
    # PCP administers Pgpool-II with the superuser's password.
    _write_private(pool.pcp_config, f"{SUPERUSER}:{hashlib.md5(superuser_password.encode()).hexdigest()}\n")
    _write_private(pool.pcp_passfile, f"*:{Ports.PCP}:{SUPERUSER}:{superuser_password}\n", owner="root")
    pool.host.spawn("pgpool", ["pgpool", "-n", "-f", str(pool.config), "-a", str(pool.hba),
                               "-F", str(pool.pcp_config)], user=OS_USER)


# pcp_node_info's labels, and the SHOW POOL_NODES columns that say the same. Its numeric
# "Status" is left out: "Status Name" is SHOW POOL_NODES' status.
_NODE_INFO_COLUMNS = {
    "Hostname": "hostname", "Port": "port", "Status Name": "status", "Backend Status Name": "pg_status",
    "Weight": "lb_weight", "Role": "role", "Backend Role": "pg_role", "Replication Delay": "replication_delay",
    "Replication State": "replication_state", "Replication Sync State": "replication_sync_state",
    "Last Status Change": "last_status_change",
}


def _parse_node_info(output: str) -> list[dict[str, str]]:
    """pcp_node_info --verbose prints one block of "Label : value" lines per backend, in order."""
    backends = []
    for node_id, block in enumerate(output.strip().split("\n\n")):
        backend = {"node_id": str(node_id)}
        for line in block.splitlines():
            label, _, value = line.partition(":")
            if label.strip() in _NODE_INFO_COLUMNS:
                backend[_NODE_INFO_COLUMNS[label.strip()]] = value.strip()
        backends.append(backend)
    return backends


def _attached(backend: Mapping[str, str]) -> bool:
    # "waiting": attached, but no client has used the backend since it was (re)attached.
    return backend["status"] in ("up", "waiting")


def _attach_in_pgpool(cluster: Cluster, node: Node) -> None:
    """Pgpool-II re-attaches a streaming standby by itself (auto_failback), but only after its
    next replication and health checks, never a node that came back as primary, and not twice
    within auto_failback_interval: attach explicitly whatever is still detached."""
    node_id = topology.POSTGRES.index(node)

    def attached() -> bool:
        return _attached(pool_nodes(cluster)[node_id])

    if not attached():
        _Pgpool(cluster).pcp("pcp_attach_node", "--node-id", str(node_id))
    wait_until(attached, 10, f"Pgpool-II to attach {node.name}")


# -- Queries, health and status -------------------------------------------------------------------

class _NotHealthy(Exception):
    """The tier cannot serve as it should yet; the message says why."""


def _query(cluster: Cluster, ip: str, sql: str, database: str = "postgres") -> list[dict[str, str]]:
    """Runs one statement as the superuser on `ip` (a node, or Pgpool-II); rows as dicts."""
    result = sh(["psql", "-X", "--csv", "-h", ip, "-p", str(Ports.POSTGRES), "-U", SUPERUSER, "-d", database,
                 "-c", sql],
                env={"PGPASSWORD": cluster.secret("postgres_password"), "PGCONNECT_TIMEOUT": "2"}, timeout=10)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _role(cluster: Cluster, node: Node) -> str:
    try:
        in_recovery = _query(cluster, node.ip, "SELECT pg_is_in_recovery() AS in_recovery")[0]["in_recovery"]
    except (RuntimeError, subprocess.TimeoutExpired):
        return "down"
    return "standby" if in_recovery == "t" else "primary"


def _replication(cluster: Cluster, primary_node: Node) -> dict[str, dict[str, str]]:
    """The primary's view of its standbys, by application_name (the repmgr node name)."""
    rows = _query(cluster, primary_node.ip,
                  "SELECT application_name, state, sync_state,"
                  " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS replay_lag_bytes"
                  " FROM pg_stat_replication")
    return {row["application_name"]: row for row in rows}


def _healthy_primary(cluster: Cluster) -> Node:
    primary_node = primary(cluster)
    if primary_node is None:
        raise _NotHealthy("no primary")
    running = [member.node for member in _members(cluster) if member.postmaster_pid() is not None]
    replication = _replication(cluster, primary_node)
    not_streaming = [node.name for node in running
                     if node != primary_node and replication.get(node.name, {}).get("state") != "streaming"]
    if not_streaming:
        raise _NotHealthy(f"not streaming from {primary_node.name}: {', '.join(not_streaming)}")
    # Under ANY 1 every candidate shows as "quorum"; "sync" would be a FIRST n configuration.
    if not any(row["sync_state"] in ("quorum", "sync") for row in replication.values()):
        raise _NotHealthy(f"no synchronous standby: commits on {primary_node.name} wait")
    backends = dict(zip(topology.POSTGRES, pool_nodes(cluster)))
    detached = [node.name for node in running if not _attached(backends[node])]
    if detached:
        raise _NotHealthy(f"detached in Pgpool-II: {', '.join(detached)}")
    if backends[primary_node]["role"] != "primary":
        raise _NotHealthy(f"Pgpool-II does not know {primary_node.name} as the primary yet")
    return primary_node


def _node_status(cluster: Cluster, node: Node) -> str:
    role = _role(cluster, node)
    prefix = f"{node.name} {node.ip}"
    try:
        if role == "primary":
            return f"{prefix} primary; standbys: {_describe_standbys(_replication(cluster, node))}"
        if role == "standby":
            return f"{prefix} standby; {_describe_upstream(cluster, node)}"
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return f"{prefix} {role}; no answer to the replication query: {error}"
    running = _PgNode(cluster, node).postmaster_pid() is not None
    return f"{prefix} down" + (" (postmaster running, not answering)" if running else "")


def _describe_standbys(replication: Mapping[str, Mapping[str, str]]) -> str:
    if not replication:
        return "none"
    return ", ".join(f"{name} ({row['state']}, {row['sync_state']}, replay lag {row['replay_lag_bytes'] or '?'} B)"
                     for name, row in sorted(replication.items()))


def _describe_upstream(cluster: Cluster, node: Node) -> str:
    rows = _query(cluster, node.ip,
                  "SELECT sender_host, status,"
                  " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) AS unreplayed_bytes"
                  " FROM pg_stat_wal_receiver")
    if not rows:
        return "not streaming (no WAL receiver)"
    row = rows[0]
    return (f"{row['status']} from {_name_at(row['sender_host'])}, "
            f"{row['unreplayed_bytes'] or '?'} B received but not replayed")


def _pgpool_status(cluster: Cluster) -> list[str]:
    try:
        backends = pool_nodes(cluster)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return [f"pgpool {topology.PGPOOL.ip} no answer over PCP: {error}"]
    return [f"pgpool {topology.PGPOOL.ip} backend {backend['node_id']} {_name_at(backend['hostname'])}: "
            f"{backend['status']}, {backend['role']}, replication {backend['replication_state']}"
            f" {backend['replication_sync_state']}, delay {backend['replication_delay']}"
            for backend in backends]


def _name_at(ip: str) -> str:
    return next((node.name for node in topology.POSTGRES if node.ip == ip), ip)
