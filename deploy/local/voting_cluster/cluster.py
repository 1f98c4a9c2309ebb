"""The cluster as a whole: its directory, its secrets and its hosts."""

from __future__ import annotations

import os
import secrets as random_secrets
import shutil
from pathlib import Path

from . import topology
from .hosts import Host
from .topology import Node

# Every password the topology uses; generated once per cluster directory, kept as files the
# way Swarm secrets arrive (`/run/secrets/<name>`), never printed.
SECRET_NAMES = ("redis_password", "postgres_password", "repmgr_password", "voting_db_password", "cookie_secret")
# Random bytes of each secret, written as hex: 16 unless said here. The vote service refuses a
# cookie key under 32 bytes.
SECRET_BYTES = {"cookie_secret": 32}
# Owner of the secrets directory and files. Root, which runs the voting services, reads them
# anyway; the postgres user runs PostgreSQL, repmgr and Pgpool-II, and initdb reads the
# superuser's password from its file itself. Nobody else may.
SECRETS_OWNER = "postgres"


class Cluster:
    def __init__(self, root: Path | None = None):
        self.root = root or topology.cluster_dir()
        self.secrets_dir = self.root / "secrets"

    def host(self, node: Node) -> Host:
        return Host(node, self.root)

    def secret(self, name: str) -> str:
        if name not in SECRET_NAMES:
            raise KeyError(name)
        path = self.secrets_dir / name
        size = SECRET_BYTES.get(name, 16)
        # A cookie key from a cluster directory made before the services wanted 32 bytes is made
        # anew: it only signs voter cookies. Passwords never are: the running servers hold them.
        if not path.exists() or (name == "cookie_secret" and len(path.read_text().strip()) < 2 * size):
            self._write_secret(path, random_secrets.token_hex(size))
        return path.read_text().strip()

    def secret_file(self, name: str) -> Path:
        self.secret(name)
        return self.secrets_dir / name

    def _write_secret(self, path: Path, value: str) -> None:
        self.secrets_dir.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.chmod(0o700)
        shutil.chown(self.secrets_dir, SECRETS_OWNER, SECRETS_OWNER)
        # Created 0600, never readable by others even for a moment.
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(value + "\n")
        shutil.chown(path, SECRETS_OWNER, SECRETS_OWNER)
