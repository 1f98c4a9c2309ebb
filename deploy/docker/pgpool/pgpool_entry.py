#!/usr/bin/env python3
"""Entrypoint of the Pgpool-II image: renders deploy/pgpool/ from the environment and the
secrets, writes pool_passwd, and becomes Pgpool-II (as postgres, in the foreground).

Pgpool-II here never promotes and never repoints a standby (see deploy/pgpool/pgpool.conf):
repmgrd does. It starts with every node attached (`-D` forgets the states a previous container
saw), finds the primary by asking the nodes, and detaches the ones its health check finds dead.

Configuration (environment; every `*_PASSWORD` also as `*_PASSWORD_FILE`, a Docker secret):
  NODES                    the PostgreSQL nodes' names (host name = repmgr node_name), in order
  DATABASE, DATABASE_USER  the application's database and the role owning it (the migrate job's)
  DATABASE_PASSWORD        the owning role's password (clients authenticate with SCRAM)
  DATABASE_WORKER_PASSWORD the worker's role's (voting_worker)
  DATABASE_RESULT_PASSWORD the result service's role's (voting_result)
  DATABASE_CERTS_PASSWORD  the certificate manager's role's (voting_certs)
  PGPOOL_CHECK_PASSWORD    the role of Pgpool-II's health and replication checks (pgpool_check)
  CLUSTER_SUBNET           pool_hba.conf's client address (default `samenet`)
  TEMPLATE_DIR             deploy/pgpool/ as mounted (default /etc/voting/pgpool)
  RUN_DIR                  rendered files, sockets, pid and status (default /run/voting-pgpool)

Templates and secrets are read as voting_common (deploy/docker/common) reads them. Only modules
of python3-minimal are imported. Unit tests: test_pgpool_entry.py.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import sys
from collections.abc import Mapping

from voting_common import render_file, required, secret

SERVICE_USER = "postgres"
PGPOOL = "/usr/sbin/pgpool"


def password(env: Mapping[str, str], name: str) -> str:
    """The secret NAME (voting_common.secret), refused if it holds a line break."""
    value = secret(env, name)
    if "\n" in value or "\r" in value:
        raise ValueError(f"{name} holds a line break: pool_passwd is one line per user")
    return value


def template_values(env: Mapping[str, str]) -> dict[str, object]:
    nodes = [node.strip() for node in required(env, "NODES").split(",") if node.strip()]
    if len(nodes) != 3:
        raise ValueError(f"NODES names {len(nodes)} nodes; deploy/pgpool/pgpool.conf is for 3")
    values: dict[str, object] = {
        "PGPOOL_RUN_DIR": run_dir(env),
        "DATABASE": required(env, "DATABASE"),
        "DATABASE_USER": required(env, "DATABASE_USER"),
        "CLUSTER_SUBNET": env.get("CLUSTER_SUBNET", "").strip() or "samenet",
    }
    for number, node in enumerate(nodes, start=1):
        values[f"PG_{number}_HOST"] = node
        values[f"PG_{number}_NAME"] = node
    return values


def run_dir(env: Mapping[str, str]) -> str:
    return env.get("RUN_DIR", "/run/voting-pgpool")


def pool_passwd(users: Mapping[str, str]) -> str:
    """Clear-text ("TEXT") entries: Pgpool-II needs each password to authenticate to the backends
    with SCRAM on the client's behalf."""
    for user in users:
        if ":" in user:
            raise ValueError(f"user name {user!r} holds a colon")
    return "".join(f"{user}:TEXT{password}\n" for user, password in users.items())


def pcp_conf(password: str) -> str:
    """PCP over the unix socket only (pcp_listen_addresses = ''); a password nobody needs to know."""
    return f"pgpool:{hashlib.md5(password.encode()).hexdigest()}\n"


def files(env: Mapping[str, str]) -> dict[str, str]:
    """Every file the entrypoint writes, by name, from the environment and the templates."""
    template_dir = env.get("TEMPLATE_DIR", "/etc/voting/pgpool")
    values = template_values(env)
    rendered = {}
    for name in ("pgpool.conf", "pool_hba.conf"):
        rendered[name] = render_file(os.path.join(template_dir, name), values)
    rendered["pool_passwd"] = pool_passwd(
        {
            str(values["DATABASE_USER"]): password(env, "DATABASE_PASSWORD"),
            "voting_worker": password(env, "DATABASE_WORKER_PASSWORD"),
            "voting_result": password(env, "DATABASE_RESULT_PASSWORD"),
            "voting_certs": password(env, "DATABASE_CERTS_PASSWORD"),
            "pgpool_check": password(env, "PGPOOL_CHECK_PASSWORD"),
        }
    )
    rendered["pcp.conf"] = pcp_conf(os.urandom(16).hex())
    return rendered


def command(directory: str) -> list[str]:
    return [
        PGPOOL,
        "-n",
        "-D",
        "-f",
        os.path.join(directory, "pgpool.conf"),
        "-a",
        os.path.join(directory, "pool_hba.conf"),
        "-F",
        os.path.join(directory, "pcp.conf"),
    ]


def main() -> int:
    env = dict(os.environ)
    try:
        directory = run_dir(env)
        contents = files(env)
        account = pwd.getpwnam(SERVICE_USER)
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o700)
        for name, text in contents.items():
            path = os.path.join(directory, name)
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
            os.chmod(path, 0o600)
        if os.getuid() == 0:
            for path in [directory, *(os.path.join(directory, name) for name in contents)]:
                os.chown(path, account.pw_uid, account.pw_gid)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        os.environ["HOME"] = account.pw_dir
    except (ValueError, KeyError, OSError) as error:
        print(f"pgpool-entry: error: {error}", file=sys.stderr, flush=True)
        return 1
    arguments = command(directory) + sys.argv[1:]
    os.execv(arguments[0], arguments)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
