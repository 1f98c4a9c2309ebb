"""The cluster as a whole: its directory, its secrets and its hosts."""

from __future__ import annotations

import secrets as random_secrets
from pathlib import Path

from . import topology
from .hosts import Host
from .topology import Node

# Every password the topology uses; generated once per cluster directory, kept as files the
# way Swarm secrets arrive (`/run/secrets/<name>`), never printed.
SECRET_NAMES = ("redis_password", "postgres_password", "repmgr_password", "voting_db_password", "cookie_secret")


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
        if not path.exists():
            self.secrets_dir.mkdir(parents=True, exist_ok=True)
            self.secrets_dir.chmod(0o755)
            path.write_text(random_secrets.token_hex(16) + "\n")
            # Readable by the postgres user, which runs PostgreSQL, repmgr and Pgpool-II.
            path.chmod(0o644)
        return path.read_text().strip()

    def secret_file(self, name: str) -> Path:
        self.secret(name)
        return self.secrets_dir / name
