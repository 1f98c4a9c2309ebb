#!/usr/bin/env python3
"""Entrypoint of the PostgreSQL + repmgr image: brings up one node of the voting cluster.

A node decides what it is from what it holds and what the other nodes say, asked over the
network each time it starts:

- Its data directory is empty:
  - one of the others is primary: it clones that one and registers as a standby;
  - none answers, and this is the initial primary: it initialises the cluster;
  - anything else: it waits.
- Its data directory holds data:
  - one of the others is primary: `repmgr node rejoin --force-rewind` onto it, a standby again
    whatever it was before (a fresh clone of it instead if this was a primary that was killed,
    or if the rejoin fails while the primary answers);
  - it was a standby, and no primary answers: it starts as a standby (repmgrd picks a primary);
  - it was primary, no primary answers, a majority of the nodes (itself included) answer, none
    names another primary, and the grace period is over: it starts as primary (a cold start of
    the whole cluster);
  - it was primary, anything else: it waits.

So a killed primary that Swarm restarts never comes back as a second primary: by then repmgrd
has promoted a standby (it decides after 3 x 1 s), the restarted node sees it and rejoins; if
it came back faster than that, it waits the grace period out, sees the promotion and rejoins.
A primary that was not killed but frozen (a paused container or node, a stalled VM) or cut
off wakes up still a primary after the others promoted a standby: repmgr does not fence it. Its
commits wait for a synchronous standby that no longer follows it, so it acknowledges nothing,
but it must not stay a primary. While running, this process asks the other nodes every
few seconds; when another primary runs on a newer timeline than this one, a standby was
promoted after this node last became primary, and this one has been superseded
(`superseded_by`): it stops PostgreSQL at once and exits, and the restarted container decides
again, which makes it rejoin as a standby. The timeline, not repmgr's metadata, decides: the
metadata is replicated, so a standby that has not yet followed the promoted node still names
the old primary (a node cut off and healed: the old primary and a standby that had not
followed yet outvoted the promoted node, which stepped down for the stale primary).
Two primaries visible at once at start-up are left to an operator: the node waits.

repmgrd is the one that fails over, but it acts only where it runs: a standby's repmgrd
refuses to start while its upstream is down, and one can hang on a query to a frozen primary,
while the others wait for it for good. So a standby that has streamed from no primary for
`ELECTION_AFTER` seconds decides for itself (`without_a_leader`): it follows the one primary
that answers, or, when none does and it sees a majority of the nodes, the standby furthest
ahead (repmgr's rule) promotes itself with `repmgr standby promote`.

The decisions (`decide`, `superseded_by`, `without_a_leader`) are pure functions of those
facts and are unit-tested (`python3 -m unittest discover -s deploy/docker/postgres`);
everything else carries them out with PostgreSQL's and repmgr's own tools. PostgreSQL then
runs detached (repmgr stops and starts it on follow and rejoin), repmgrd runs in the
foreground (started again whenever it exits), and this process supervises
both: it exits, stopping repmgrd and then PostgreSQL cleanly, on SIGTERM, or when PostgreSQL
stays down; the orchestrator restarts the container and the node decides again.

Configuration (environment; every `*_PASSWORD` also as `*_PASSWORD_FILE`, a Docker secret):
  NODE_ID                  repmgr node id, 1..n, unique
  NODE_NAME                this node's name: its host name on the network, repmgr node_name
                           and application_name (synchronous_standby_names, Pgpool-II)
  NODES                    every node's name, comma-separated, in node-id order (pg-1,pg-2,pg-3)
  INITIAL_PRIMARY          the node that initialises an empty cluster (default: the first)
  DATABASE, DATABASE_USER  the application's database and the role owning it (the migrate
                           job's); created at initialisation, with the roles below
  REPMGR_PASSWORD          repmgr's (replication, clone, rewind)
  DATABASE_PASSWORD        the owning role's
  DATABASE_WORKER_PASSWORD the worker's role's (voting_worker; `voting migrate` grants it
                           what it needs: crates/voting-core/migrations/postgres-service-roles.sql)
  DATABASE_RESULT_PASSWORD the result service's role's (voting_result, likewise)
  DATABASE_CERTS_PASSWORD  the certificate manager's role's (voting_certs, likewise)
  PGPOOL_CHECK_PASSWORD    Pgpool-II's checks' role's (pgpool_check, a member of pg_monitor)
  CLUSTER_SUBNET           pg_hba.conf's client address (default `samenet`: the networks this
                           container is attached to)
  TEMPLATE_DIR             deploy/postgres/ as mounted (default /etc/voting/postgres)
  PGDATA                   data directory (default /var/lib/postgresql/data/pgdata: a
                           subdirectory of the volume, so a failed clone can be wiped)
  PRIMARY_GRACE_SECONDS    how long a former primary waits for a promotion before it starts
                           as primary again (default 15)
  DECIDE_TIMEOUT_SECONDS   how long to wait for a decision before giving up (default 600)

Templates and secrets are read as voting_common (deploy/docker/common) reads them. Only modules
of python3-minimal are imported: the image installs nothing more.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from voting_common import render_file, required, secret

PG_BIN = "/usr/lib/postgresql/15/bin"
PORT = 5432
SERVICE_USER = "postgres"

# -- the decision (pure) ------------------------------------------------------------------

UNREACHABLE = "unreachable"  # no TCP connection: down, not resolvable, cut off
UNKNOWN = "unknown"  # answers, but could not be asked (starting up, no repmgr database yet)
PRIMARY = "primary"
STANDBY = "standby"


class Peer(NamedTuple):
    """Another node as this one sees it."""

    name: str
    state: str
    # The primary named by the node's repmgr metadata (repmgr.nodes), when it could be read.
    recorded_primary: str | None = None
    # The timeline it writes (a primary) or last checkpointed (a standby); each promotion
    # starts a newer one.
    timeline: int | None = None
    # A standby's position: the WAL it has received or replayed (bytes), which an election
    # compares.
    lsn: int | None = None


class Local(NamedTuple):
    """This node, as its data directory says."""

    name: str
    initial_primary: bool
    has_data: bool
    was_primary: bool  # no standby.signal: it last ran as primary


class Decision(NamedTuple):
    action: str  # one of the constants below
    reason: str
    primary: str | None = None  # the node to clone from or rejoin


INIT_PRIMARY = "init-primary"
CLONE = "clone"
REJOIN = "rejoin"
START_STANDBY = "start-standby"
START_PRIMARY = "start-primary"
WAIT = "wait"
# What a running standby does when no primary has led it for a while (`without_a_leader`).
PROMOTE = "promote"
FOLLOW = "follow"


def majority(nodes: int) -> int:
    return nodes // 2 + 1


def decide(local: Local, peers: Sequence[Peer], waited: float, grace: float) -> Decision:
    """What `local` does next, given what `peers` answered and how long it has waited so far."""
    primaries = sorted(peer.name for peer in peers if peer.state == PRIMARY)
    if len(primaries) > 1:
        return Decision(
            WAIT,
            f"several nodes say they are primary ({', '.join(primaries)}): "
            "waiting for an operator or repmgrd to leave one",
        )
    if primaries:
        primary = primaries[0]
        if not local.has_data:
            return Decision(CLONE, f"{primary} is primary and this node has no data", primary)
        return Decision(REJOIN, f"{primary} is primary: joining it as a standby", primary)

    if not local.has_data:
        if local.initial_primary and all(peer.state == UNREACHABLE for peer in peers):
            return Decision(INIT_PRIMARY, "no data, no other node answers, and this is the initial primary")
        return Decision(WAIT, "no data and no primary to clone from yet")

    if not local.was_primary:
        return Decision(START_STANDBY, "no primary answers: starting as a standby, repmgrd elects one")

    others = sorted(
        {peer.recorded_primary for peer in peers if peer.recorded_primary and peer.recorded_primary != local.name}
    )
    if others:
        return Decision(
            WAIT,
            f"this node was primary, but {', '.join(others)} is the primary on record: waiting for it to come back",
        )
    agreeing = sum(1 for peer in peers if peer.state == STANDBY and peer.recorded_primary == local.name)
    needed = majority(len(peers) + 1)
    if 1 + agreeing < needed:
        return Decision(
            WAIT,
            f"this node was primary; {1 + agreeing} of the {needed} nodes needed to start it as primary again answer",
        )
    if waited < grace:
        return Decision(
            WAIT,
            f"this node was primary; giving repmgrd {grace - waited:.0f} s more "
            "to promote a standby before starting as primary",
        )
    return Decision(
        START_PRIMARY, f"this node was primary and {1 + agreeing} nodes agree: nobody was promoted in its absence"
    )


def superseded_by(local_timeline: int | None, peers: Sequence[Peer]) -> str | None:
    """The primary promoted after this one (on a newer timeline than `local_timeline`, this
    running primary's), newest first, or None: a former primary that resumed after a failover
    steps down for it. An unknown timeline, here or there, supersedes nothing."""
    if local_timeline is None:
        return None
    newer = [
        (peer.timeline, peer.name)
        for peer in peers
        if peer.state == PRIMARY and peer.timeline is not None and peer.timeline > local_timeline
    ]
    return max(newer, key=lambda timeline_and_name: timeline_and_name[0])[1] if newer else None


def without_a_leader(
    local: str, local_lsn: int | None, local_timeline: int | None, nodes: Sequence[str], peers: Sequence[Peer]
) -> Decision:
    """What a running standby that has streamed from no primary for `ELECTION_AFTER` does.

    repmgrd elects and promotes within seconds, but only where it runs, and it cannot always:
    a standby's repmgrd refuses to start while its upstream is down, and one can hang on a
    query to a frozen primary (libpq has no timeout; the frozen node's kernel still answers
    TCP). Its peers then wait for it for good. So the node follows the one primary that
    answers, on this node's timeline or a newer one; and when none answers, the standbys that
    see a majority of the nodes (themselves included) elect by repmgr's own rule: the most WAL
    (received or replayed), then the lowest node id. Each computes the same winner from the
    same answers; only the winner promotes itself, and `repmgr standby promote` refuses while
    the recorded primary still answers.
    """
    primaries = sorted(peer.name for peer in peers if peer.state == PRIMARY)
    if len(primaries) > 1:
        return Decision(WAIT, f"several nodes say they are primary ({', '.join(primaries)})")
    if primaries:
        primary = next(peer for peer in peers if peer.state == PRIMARY)
        if local_timeline is not None and (primary.timeline is None or primary.timeline < local_timeline):
            return Decision(WAIT, f"{primary.name} is primary on an older or unknown timeline than this node's")
        return Decision(FOLLOW, f"{primary.name} is primary and this standby does not stream from it", primary.name)
    if local_lsn is None:
        return Decision(WAIT, "no primary answers, and this node's own WAL position is unknown")
    standbys = [peer for peer in peers if peer.state == STANDBY and peer.lsn is not None]
    needed = majority(len(nodes))
    if 1 + len(standbys) < needed:
        return Decision(WAIT, f"no primary answers; {1 + len(standbys)} of the {needed} nodes needed to elect one do")
    candidates = [(local_lsn, -nodes.index(local), local)] + [
        (peer.lsn, -nodes.index(peer.name), peer.name) for peer in standbys if peer.name in nodes
    ]
    winner = max(candidates)[2]
    if winner == local:
        return Decision(PROMOTE, f"no primary answers; of {1 + len(standbys)} standbys this one is furthest ahead")
    return Decision(WAIT, f"no primary answers; {winner} is furthest ahead and promotes itself", winner)


# -- pure helpers -------------------------------------------------------------------------


def parse_probe(output: str) -> tuple[str, str | None, int | None, int | None]:
    """psql -At output of PROBE_QUERY: (state, recorded primary, timeline, WAL position)."""
    fields = output.strip().split("|")
    if len(fields) != 4 or fields[0] not in ("t", "f"):
        return UNKNOWN, None, None, None
    timeline = int(fields[2]) if fields[2].isdigit() else None
    lsn = int(fields[3]) if fields[3].isdigit() else None
    return (STANDBY if fields[0] == "t" else PRIMARY), (fields[1] or None), timeline, lsn


# A primary's timeline is that of the WAL it writes now (its checkpoint's may still be the one
# before a promotion); a standby's, that of its last restartpoint.
TIMELINE_QUERY = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
)
# A standby's position, in bytes: the WAL it has received or replayed, whichever is further.
# The received position alone can be behind what the standby holds: after the server starts
# (or changes timeline), its first WAL receiver reports the start of the segment it asks for,
# and it is NULL until one runs. Counted on that alone, a restarted standby that was ahead
# could lose an election and then not follow the winner, whose new timeline forked before its
# own recovery point.
WAL_POSITION_QUERY = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(greatest(pg_last_wal_receive_lsn(), "
    "pg_last_wal_replay_lsn()), '0/0')::bigint END"
)
PROBE_QUERY = (
    "SELECT pg_is_in_recovery(), "
    "(SELECT node_name FROM repmgr.nodes WHERE type = 'primary' AND active ORDER BY node_id LIMIT 1), "
    f"({TIMELINE_QUERY}), ({WAL_POSITION_QUERY})"
)


def cluster_state(controldata: str) -> str:
    """`Database cluster state` from pg_controldata's output ("shut down", "in production", …)."""
    match = re.search(r"^Database cluster state:\s*(.+?)\s*$", controldata, re.MULTILINE)
    return match.group(1) if match else "unknown"


def shut_down_cleanly(state: str) -> bool:
    return state in ("shut down", "shut down in recovery")


def sql_literal(value: str) -> str:
    """A string constant for SQL (standard_conforming_strings is on): quotes doubled."""
    if "\0" in value:
        raise ValueError("a NUL byte cannot be part of a PostgreSQL string")
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def pgpass_line(host: str, database: str, user: str, password: str) -> str:
    def field(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return ":".join([field(host), "*", field(database), field(user), field(password)])


# The services' own roles. `voting migrate` grants them their privileges by these names
# (crates/voting-core/migrations/postgres-service-roles.sql), and pg_hba.conf, pool_hba.conf and
# pgpool.conf name them too.
WORKER_ROLE = "voting_worker"
RESULT_ROLE = "voting_result"
CERTS_ROLE = "voting_certs"
CHECK_ROLE = "pgpool_check"


def bootstrap_sql(settings: Settings) -> str:
    """Roles and databases of a new cluster. `postgres` has no password: the superuser logs in
    over the local socket only (peer)."""
    s = settings
    return "\n".join(
        [
            f"CREATE ROLE repmgr LOGIN SUPERUSER REPLICATION PASSWORD {sql_literal(s.repmgr_password)};",
            "CREATE DATABASE repmgr OWNER repmgr;",
            f"CREATE ROLE {sql_identifier(s.database_user)} LOGIN;",
            f"CREATE DATABASE {sql_identifier(s.database)} OWNER {sql_identifier(s.database_user)};",
            service_roles_sql(s),
        ]
    )


def service_roles_sql(settings: Settings) -> str:
    """The application's roles as the secrets say, whatever the cluster had: made if missing (a
    cluster from before they existed), their passwords set (a secret that changed). Only the
    owner (the migrate job's role) may change the schema; the worker, the result service and
    the certificate manager connect with roles of their own, and Pgpool-II's checks with one
    that may read the monitoring views and not open the application's database."""
    s = settings
    database, owner = sql_identifier(s.database), sql_identifier(s.database_user)
    passwords = {
        WORKER_ROLE: s.worker_password,
        RESULT_ROLE: s.result_password,
        CERTS_ROLE: s.certs_password,
        CHECK_ROLE: s.check_password,
    }
    missing = "".join(
        f"    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {sql_literal(role)}) THEN\n"
        f"        CREATE ROLE {role};\n"
        "    END IF;\n"
        for role in passwords
    )
    return "\n".join(
        [
            f"DO $$\nBEGIN\n{missing}END\n$$;",
            f"ALTER ROLE {owner} LOGIN PASSWORD {sql_literal(s.database_password)};",
            *(f"ALTER ROLE {role} LOGIN PASSWORD {sql_literal(password)};" for role, password in passwords.items()),
            f"GRANT pg_monitor TO {CHECK_ROLE};",
            f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;",
            f"GRANT CONNECT ON DATABASE {database} TO {WORKER_ROLE}, {RESULT_ROLE}, {CERTS_ROLE};",
            "",
        ]
    )


class Settings(NamedTuple):
    node_id: int
    name: str
    nodes: tuple[str, ...]
    initial_primary: str
    database: str
    database_user: str
    repmgr_password: str
    database_password: str
    worker_password: str
    result_password: str
    certs_password: str
    check_password: str
    cluster_subnet: str
    template_dir: str
    data_dir: str
    run_dir: str
    socket_dir: str
    primary_grace: float
    decide_timeout: float

    def node_id_of(self, name: str) -> int:
        """repmgr's id of the node `name`: NODES is in node-id order."""
        return self.nodes.index(name) + 1

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(node for node in self.nodes if node != self.name)

    @property
    def repmgr_conf(self) -> str:
        return os.path.join(self.run_dir, "repmgr.conf")

    @property
    def passfile(self) -> str:
        return os.path.join(self.run_dir, "pgpass")


def settings_from(env: Mapping[str, str]) -> Settings:
    nodes = tuple(node.strip() for node in required(env, "NODES").split(",") if node.strip())
    name = required(env, "NODE_NAME")
    if name not in nodes:
        raise ValueError(f"NODE_NAME {name!r} is not one of NODES ({', '.join(nodes)})")
    if len(nodes) != 3:
        # postgresql.conf's synchronous_standby_names and pgpool.conf name exactly three nodes.
        raise ValueError(f"NODES names {len(nodes)} nodes; the configuration templates are for 3")
    if required(env, "NODE_ID") != str(nodes.index(name) + 1):
        raise ValueError(f"NODE_ID of {name} is not its place in NODES ({', '.join(nodes)}), counted from 1")
    initial = env.get("INITIAL_PRIMARY", "").strip() or nodes[0]
    if initial not in nodes:
        raise ValueError(f"INITIAL_PRIMARY {initial!r} is not one of NODES")
    return Settings(
        node_id=int(required(env, "NODE_ID")),
        name=name,
        nodes=nodes,
        initial_primary=initial,
        database=required(env, "DATABASE"),
        database_user=required(env, "DATABASE_USER"),
        repmgr_password=secret(env, "REPMGR_PASSWORD"),
        database_password=secret(env, "DATABASE_PASSWORD"),
        worker_password=secret(env, "DATABASE_WORKER_PASSWORD"),
        result_password=secret(env, "DATABASE_RESULT_PASSWORD"),
        certs_password=secret(env, "DATABASE_CERTS_PASSWORD"),
        check_password=secret(env, "PGPOOL_CHECK_PASSWORD"),
        cluster_subnet=env.get("CLUSTER_SUBNET", "").strip() or "samenet",
        template_dir=env.get("TEMPLATE_DIR", "/etc/voting/postgres"),
        data_dir=env.get("PGDATA", "/var/lib/postgresql/data/pgdata"),
        run_dir=env.get("RUN_DIR", "/run/voting-postgres"),
        socket_dir=env.get("SOCKET_DIR", "/var/run/postgresql"),
        primary_grace=float(env.get("PRIMARY_GRACE_SECONDS", "15")),
        decide_timeout=float(env.get("DECIDE_TIMEOUT_SECONDS", "600")),
    )


def template_values(settings: Settings) -> dict[str, object]:
    """Every placeholder of deploy/postgres/*.conf."""
    values: dict[str, object] = {
        "NODE_ID": settings.node_id,
        "NODE_NAME": settings.name,
        "NODE_HOST": settings.name,
        "DATA_DIR": settings.data_dir,
        "REPMGR_CONFIG": settings.repmgr_conf,
        "PASSFILE": settings.passfile,
        "SOCKET_DIR": settings.socket_dir,
        # pg_ctl appends the server's log to this file: the container's standard error.
        "SERVER_LOG": "/dev/stderr",
        "CLUSTER_SUBNET": settings.cluster_subnet,
        "DATABASE": settings.database,
        "DATABASE_USER": settings.database_user,
    }
    for number, node in enumerate(settings.nodes, start=1):
        values[f"PG_{number}_NAME"] = node
        values[f"PG_{number}_HOST"] = node
    return values


def data_dir_postgresql_conf(run_dir: str) -> str:
    """The data directory's own postgresql.conf: only pointers to the rendered files, which sit
    at the same path on every node (clone and pg_rewind copy this file from the primary)."""
    return (
        "# Written by the voting image's entrypoint. The settings live in the rendered\n"
        "# deploy/postgres/ templates, re-rendered at every container start.\n"
        f"include '{run_dir}/postgresql.conf'\n"
        f"hba_file = '{run_dir}/pg_hba.conf'\n"
    )


# -- carrying it out ----------------------------------------------------------------------


def log(message: str) -> None:
    print(f"pgnode: {message}", file=sys.stderr, flush=True)


class Node:
    """This container's node: renders its files, asks the others, runs PostgreSQL and repmgrd."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.env = dict(os.environ, PGPASSFILE=settings.passfile, PGCONNECT_TIMEOUT="2")

    # -- preparation, as root ---------------------------------------------------------------

    def prepare(self) -> None:
        """Renders the templates and the password file, and hands the directories to postgres."""
        s = self.settings
        account = pwd.getpwnam(SERVICE_USER)
        for directory in (s.run_dir, os.path.dirname(s.data_dir), s.socket_dir):
            os.makedirs(directory, exist_ok=True)
            os.chown(directory, account.pw_uid, account.pw_gid)
        os.chmod(s.run_dir, 0o700)
        # pg_ctl -l /dev/stderr reopens the container's standard error as postgres: hand the
        # pipes over, as runc does for a container that starts as a non-root user.
        for fd in (1, 2):
            # A terminal or file we may not own: the server log then goes nowhere new.
            with contextlib.suppress(OSError):
                os.fchown(fd, account.pw_uid, account.pw_gid)
        values = template_values(s)
        for name in ("postgresql.conf", "pg_hba.conf", "repmgr.conf"):
            text = render_file(os.path.join(s.template_dir, name), values)
            self._write(os.path.join(s.run_dir, name), text, account)
        passwords = "".join(
            line + "\n"
            for line in (
                pgpass_line("*", "repmgr", "repmgr", s.repmgr_password),
                pgpass_line("*", "replication", "repmgr", s.repmgr_password),
            )
        )
        self._write(s.passfile, passwords, account)

    @staticmethod
    def _write(path: str, text: str, account: pwd.struct_passwd) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(path, 0o600)
        os.chown(path, account.pw_uid, account.pw_gid)

    def hold_volume(self) -> int:
        """Waits until no other container's entrypoint holds this node's volume, then holds it
        until this process ends (the kernel lets go of it then, however it ends). Swarm may start
        a node's new task before the old one has stopped: seen when the managers had counted an
        overloaded node as down and it came back. Two entrypoints on one data directory clone
        and wipe it under each other's running server."""
        path = os.path.join(os.path.dirname(self.settings.data_dir), ".pgnode.lock")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another container of this node still holds its volume: waiting for it to stop")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            log("the volume is this container's now")
        return descriptor

    @staticmethod
    def drop_privileges() -> None:
        account = pwd.getpwnam(SERVICE_USER)
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        os.environ["HOME"] = account.pw_dir
        os.environ["USER"] = SERVICE_USER

    # -- facts ------------------------------------------------------------------------------

    def local(self) -> Local:
        s = self.settings
        has_data = os.path.exists(os.path.join(s.data_dir, "PG_VERSION"))
        standby = os.path.exists(os.path.join(s.data_dir, "standby.signal"))
        return Local(s.name, s.name == s.initial_primary, has_data, has_data and not standby)

    def probe(self, host: str) -> Peer:
        try:
            socket.create_connection((host, PORT), timeout=2).close()
        except OSError:
            return Peer(host, UNREACHABLE)
        answer = self._run(
            [f"{PG_BIN}/psql", "-X", "-At", "-d", self._conninfo(host), "-c", PROBE_QUERY],
            check=False,
            quiet=True,
            timeout=10,
        )
        if answer.returncode != 0:
            return Peer(host, UNKNOWN)
        return Peer(host, *parse_probe(answer.stdout))

    def _conninfo(self, host: str) -> str:
        return f"host={host} port={PORT} user=repmgr dbname=repmgr connect_timeout=2"

    # -- actions ----------------------------------------------------------------------------

    def init_primary(self) -> None:
        s = self.settings
        self.wipe_data_dir()
        self._run(
            [
                f"{PG_BIN}/initdb",
                "-D",
                s.data_dir,
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--username=postgres",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
            ]
        )
        self._write_data_dir_conf()
        self.start_postgres()
        self._run(self._psql_script(), stdin=bootstrap_sql(s), env=self._local_commit())
        self._repmgr(["primary", "register", "--force"], env=self._local_commit())

    def ensure_service_roles(self) -> bool:
        """Runs service_roles_sql on this node, a primary; whether it worked."""
        try:
            answer = self._run(
                self._psql_script(),
                stdin=service_roles_sql(self.settings),
                env=self._local_commit(),
                check=False,
                quiet=True,
                timeout=10,
            )
        except subprocess.TimeoutExpired:
            log("setting the application's roles up took over 10 s; trying again later")
            return False
        if answer.returncode != 0:
            log(f"could not set the application's roles up: {answer.stderr.strip()}")
        return answer.returncode == 0

    def _psql_script(self) -> list[str]:
        """psql as postgres on this node's socket, reading a script that stops at its first error."""
        connection = ["-h", self.settings.socket_dir, "-U", "postgres", "-d", "postgres"]
        return [f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *connection]

    def _local_commit(self) -> dict[str, str]:
        """Commits that do not wait for a synchronous standby: there may be none yet (a new
        cluster), and roles are not votes."""
        return dict(self.env, PGOPTIONS="-c synchronous_commit=local")

    def clone(self, primary: str) -> None:
        self.wipe_data_dir()
        # The upstream named, not looked up: repmgr takes it from the metadata otherwise, which
        # can still name a primary that has died since (a clone then made its replication slot
        # on that dead node, dropped the one on the real upstream, and never streamed).
        upstream = f"--upstream-node-id={self.settings.node_id_of(primary)}"
        source = ["-h", primary, "-p", str(PORT), "-U", "repmgr", "-d", "repmgr"]
        self._repmgr([*source, "standby", "clone", "--fast-checkpoint", upstream])
        self.start_postgres()
        self._repmgr(["standby", "register", "--force", upstream])

    def data_dir_state(self) -> str:
        return cluster_state(self._run([f"{PG_BIN}/pg_controldata", self.settings.data_dir], quiet=True).stdout)

    def rejoin(self, primary: str) -> None:
        state = self.data_dir_state()
        if self.local().was_primary:
            # A former primary's last checkpoint is on its old timeline, past the point where
            # the new primary's timeline forked off: written by its own crash recovery when it
            # was killed, or by its shutdown when it stepped down (superseded). Every such
            # rewind here (3 of 3 killed, 1 of 1 superseded) replayed the old timeline past the
            # fork and then waited forever for WAL the new primary does not have (its WAL
            # receiver "waiting" on the old timeline, repmgr reporting the rejoin successful). A
            # fresh copy is what it ends up needing anyway: take it straight away. Nothing
            # acknowledged is given up: every commit was on a standby before it was
            # acknowledged (synchronous replication), and what this node holds beyond the new
            # primary is what a rewind would discard too.
            log(f"data directory state is {state!r} and this node was primary: cloning {primary} instead of rewinding")
            self.clone(primary)
            return
        try:
            self._rewind_onto(primary, state)
            self._await_streaming(primary, REJOIN_STREAMING_TIMEOUT)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            # A rewound node does not always come back: one killed during an earlier rewind or
            # rejoin can hold a backup_label and a minimum recovery point on a timeline the
            # primary's history has left, and PostgreSQL refuses to start at every attempt; one
            # can start and never stream (repmgr reports the rejoin successful all the same).
            # Start over from a copy of the primary instead, for the reasons above. Only while
            # that primary still answers as one: a rejoin that failed because it went away is
            # decided again from the start.
            self.stop_postgres()
            if self.probe(primary).state != PRIMARY:
                raise
            log(f"rejoin failed ({error}): cloning {primary} afresh instead")
            self.clone(primary)

    def _await_streaming(self, primary: str, timeout: float) -> None:
        """Returns once this standby streams WAL from `primary` on the primary's timeline (a
        receiver can stream for a moment and then wait forever on an old one); raises after
        `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.local_query("SELECT status || ' ' || received_tli FROM pg_stat_wal_receiver")
            status, _, received = (answer or "").partition(" ")
            wanted = self.probe(primary).timeline
            if status == "streaming" and (wanted is None or received == str(wanted)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not streaming from the primary {timeout:.0f} s after the rejoin "
                    f"(WAL receiver: {status or 'none'})"
                )
            time.sleep(1)

    def _rewind_onto(self, primary: str, state: str) -> None:
        s = self.settings
        if not shut_down_cleanly(state):
            # A standby killed rather than stopped: replay its own WAL first, reachable by
            # nobody, so that rejoin and pg_rewind find a cleanly shut down cluster (a standby
            # stays in recovery: it writes no checkpoint of its own).
            log(f"data directory state is {state!r}: recovering it locally before the rejoin")
            self._pg_ctl_start(f"-c listen_addresses='' -c unix_socket_directories={s.socket_dir}")
            self._run([f"{PG_BIN}/pg_ctl", "stop", "-w", "-t", "120", "-m", "fast", "-D", s.data_dir])
        self._write_data_dir_conf()
        self._repmgr(["node", "rejoin", "-d", self._conninfo(primary), "--force-rewind", "--verbose"])
        if not self.postgres_running():
            self.start_postgres()

    def start_postgres(self) -> None:
        self._write_data_dir_conf()
        self._pg_ctl_start(f"-c unix_socket_directories={self.settings.socket_dir}")

    def _pg_ctl_start(self, server_options: str) -> None:
        """Starts the postmaster with these options and waits (up to 300 s) until it accepts
        connections; its log goes to this container's."""
        command = [f"{PG_BIN}/pg_ctl", "start", "-w", "-t", "300", "-D", self.settings.data_dir]
        self._run([*command, "-l", "/dev/stderr", "-o", server_options])

    def stop_postgres(self) -> None:
        if self.postgres_running():
            self._run(
                [f"{PG_BIN}/pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", self.settings.data_dir], check=False
            )

    def local_query(self, sql: str) -> str | None:
        """One value from this node's own server over its socket; None if it does not answer."""
        answer = self._run(
            [f"{PG_BIN}/psql", "-X", "-At", "-h", self.settings.socket_dir, "-d", "postgres", "-c", sql],
            check=False,
            quiet=True,
            timeout=10,
        )
        return answer.stdout.strip() if answer.returncode == 0 else None

    def running_as_primary(self) -> bool:
        return self.local_query("SELECT pg_is_in_recovery()") == "f"

    def timeline(self) -> int | None:
        return self._local_number(TIMELINE_QUERY)

    def wal_position(self) -> int | None:
        return self._local_number(WAL_POSITION_QUERY)

    def _local_number(self, sql: str) -> int | None:
        answer = self.local_query(sql)
        return int(answer) if answer and answer.isdigit() else None

    def streaming(self) -> bool | None:
        """Whether this standby's WAL receiver streams; None if the server does not answer."""
        answer = self.local_query("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        return None if answer is None else answer != "0"

    def promote(self) -> None:
        self._repmgr(["standby", "promote", "--verbose"])

    def follow(self, primary: str) -> None:
        self._repmgr(["standby", "follow", f"--upstream-node-id={self.settings.node_id_of(primary)}", "--verbose"])

    def postgres_running(self) -> bool:
        return (
            self._run([f"{PG_BIN}/pg_ctl", "status", "-D", self.settings.data_dir], check=False, quiet=True).returncode
            == 0
        )

    def _write_data_dir_conf(self) -> None:
        path = os.path.join(self.settings.data_dir, "postgresql.conf")
        with open(path, "w", encoding="utf-8") as file:
            file.write(data_dir_postgresql_conf(self.settings.run_dir))
        os.chmod(path, 0o600)

    def wipe_data_dir(self) -> None:
        """Removes a half-made data directory (an interrupted clone): the volume itself stays."""
        subprocess.run(["rm", "-rf", self.settings.data_dir], check=True)
        os.makedirs(self.settings.data_dir, mode=0o700)

    def _repmgr(self, arguments: list[str], env: dict[str, str] | None = None) -> None:
        self._run([f"{PG_BIN}/repmgr", "-f", self.settings.repmgr_conf, *arguments], env=env)

    def _run(
        self,
        command: list[str],
        check: bool = True,
        quiet: bool = False,
        timeout: float = 600,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        if not quiet:
            log("running " + " ".join(command[:6]) + (" …" if len(command) > 6 else ""))
        result = subprocess.run(
            command,
            input=stdin,
            text=True,
            timeout=timeout,
            env=env or self.env,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.PIPE if quiet else None,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip() if quiet else ""
            raise RuntimeError(f"{command[0]} exited with {result.returncode}{': ' + detail if detail else ''}")
        return result


# -- main ---------------------------------------------------------------------------------


class Stop(Exception):
    pass


REPMGRD_RETRY = 5.0
# A rejoined standby that does not stream by then is cloned afresh.
REJOIN_STREAMING_TIMEOUT = 30.0
# How often a running primary asks whether the others have promoted someone else.
SUPERSEDED_CHECK_INTERVAL = 2.0
# repmgr restarts PostgreSQL to follow a new primary; down for longer than this is a failure.
POSTGRES_DOWN_LIMIT = 120.0
# repmgrd promotes a standby 3 x 1 s after the primary fails, and a standby follows it seconds
# later; a standby that has streamed from no primary for this long has been left without one
# (`without_a_leader`).
ELECTION_AFTER = 30.0


def settle(node: Node, clock: Callable[[], float] = time.monotonic) -> Decision:
    """Asks the other nodes until the decision is something to do; carries it out."""
    s = node.settings
    started = clock()
    last_reason = ""
    while True:
        waited = clock() - started
        peers = [node.probe(host) for host in s.peers]
        decision = decide(node.local(), peers, waited, s.primary_grace)
        if decision.action != WAIT:
            log(f"{decision.action}: {decision.reason}")
            break
        if decision.reason != last_reason:
            log(f"waiting: {decision.reason} ({', '.join(f'{p.name} {p.state}' for p in peers)})")
            last_reason = decision.reason
        if waited > s.decide_timeout:
            raise RuntimeError(f"no decision after {s.decide_timeout:.0f} s: {decision.reason}")
        time.sleep(1)
    if decision.action in (INIT_PRIMARY, CLONE):
        # A half-made node is worth nothing: start it over next time rather than let a data
        # directory without its repmgr registration look like a node that was primary.
        try:
            node.init_primary() if decision.action == INIT_PRIMARY else node.clone(decision.primary or "")
        except BaseException:
            node.stop_postgres()
            node.wipe_data_dir()
            raise
    elif decision.action == REJOIN:
        node.rejoin(decision.primary or "")
    else:  # START_STANDBY, START_PRIMARY: the data directory already says which
        node.start_postgres()
    return decision


def supervise(node: Node, stopping: list[bool]) -> int:
    """Runs repmgrd until a signal arrives, restarting it when it exits; watches PostgreSQL."""

    def start_repmgrd() -> subprocess.Popen:
        return subprocess.Popen(
            [f"{PG_BIN}/repmgrd", "-f", node.settings.repmgr_conf, "--daemonize=false"], env=node.env
        )

    def stop_repmgrd() -> None:
        if repmgrd.poll() is None:
            repmgrd.terminate()
            try:
                repmgrd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                repmgrd.kill()
                repmgrd.wait()

    repmgrd = start_repmgrd()
    repmgrd_exited: float | None = None
    down_since: float | None = None
    last_superseded_check = 0.0
    # Since when this standby has streamed from no primary, and what it last decided about it.
    leaderless_since: float | None = None
    last_reason = ""
    # Once per term as primary (a promotion included): the roles as the secrets say.
    roles_ensured = False
    try:
        while not stopping[0]:
            now = time.monotonic()
            if now - last_superseded_check >= SUPERSEDED_CHECK_INTERVAL:
                last_superseded_check = now
                primary = node.running_as_primary()
                if primary and not roles_ensured:
                    roles_ensured = node.ensure_service_roles()
                roles_ensured = roles_ensured and primary
                if primary:
                    leaderless_since = None
                    timeline = node.timeline()
                    successor = superseded_by(timeline, [node.probe(host) for host in node.settings.peers])
                    if successor:
                        log(
                            f"superseded: {successor} is primary on a newer timeline than this one's ({timeline}); "
                            "stopping this primary so that it rejoins as a standby"
                        )
                        return 1
                elif node.streaming() is not False:  # streaming, or not answering: nothing to decide on
                    leaderless_since = None
                elif leaderless_since is None:
                    leaderless_since = now
                elif now - leaderless_since >= ELECTION_AFTER:
                    s = node.settings
                    peers = [node.probe(host) for host in s.peers]
                    decision = without_a_leader(s.name, node.wal_position(), node.timeline(), s.nodes, peers)
                    if decision.reason != last_reason:
                        log(f"no primary has led this standby for {now - leaderless_since:.0f} s: {decision.reason}")
                        last_reason = decision.reason
                    if decision.action in (PROMOTE, FOLLOW):
                        # repmgrd stands aside (it is restarted below), so that it does not act too.
                        stop_repmgrd()
                        try:
                            if decision.action == PROMOTE:
                                node.promote()
                            else:
                                node.follow(decision.primary or "")
                        except (RuntimeError, subprocess.TimeoutExpired) as error:
                            if decision.action == FOLLOW:
                                # It holds WAL the primary never had (a timeline forked before its
                                # recovery point): the restarted container rejoins it, rewound
                                # or cloned (`decide`).
                                log(f"follow failed ({error}): exiting so that the node rejoins {decision.primary}")
                                return 1
                            log(f"promote failed: {error}")
                        leaderless_since, last_reason = None, ""
            if repmgrd_exited is None and repmgrd.poll() is not None:
                # On a standby repmgrd refuses to start while its upstream is down (a cold start
                # of the cluster): the node stays up as a standby, others count on it answering.
                log(f"repmgrd exited with {repmgrd.returncode}; starting it again in {REPMGRD_RETRY:.0f} s")
                repmgrd_exited = now
            if repmgrd_exited is not None and now - repmgrd_exited >= REPMGRD_RETRY:
                repmgrd, repmgrd_exited = start_repmgrd(), None
            if node.postgres_running():
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since > POSTGRES_DOWN_LIMIT:
                log(f"PostgreSQL has been down for {POSTGRES_DOWN_LIMIT:.0f} s")
                return 1
            time.sleep(1)
        return 0
    finally:
        # repmgrd first: a primary going away on purpose must not start a failover from here.
        stop_repmgrd()
        node.stop_postgres()


def main() -> int:
    stopping = [False]

    def on_signal(signum: int, _frame: object) -> None:
        stopping[0] = True
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node: Node | None = None
    try:
        if os.getuid() != 0:
            raise RuntimeError("start the container as root: it prepares the volume, then runs as postgres")
        node = Node(settings_from(os.environ))
        node.prepare()
        node.hold_volume()  # until this process ends
        node.drop_privileges()
        settle(node)
    except Stop as stop:
        log(f"{stop} before the node was up: stopping")
        if node is not None and os.getuid() != 0:
            node.stop_postgres()
        return 0
    except (RuntimeError, ValueError, KeyError, OSError, subprocess.TimeoutExpired) as error:
        log(f"error: {error}")
        if node is not None and os.getuid() != 0:
            node.stop_postgres()
        return 1
    # From here on a signal only sets the flag: supervise stops repmgrd and PostgreSQL in order.
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stopping.__setitem__(0, True))
    code = supervise(node, stopping)
    log("stopped" if code == 0 else "exiting: the orchestrator restarts the node and it decides again")
    return code


if __name__ == "__main__":
    sys.exit(main())
