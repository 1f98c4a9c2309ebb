"""Bringing the whole topology up, down, and reporting on it."""

from __future__ import annotations

import shutil
import sys
import time

from . import app, edge, hosts, postgres_ha, redis_ha, topology
from .cluster import Cluster


def up(cluster: Cluster, build: bool) -> None:
    if hosts.network_exists():
        sys.exit(f"a cluster is already up on {topology.BRIDGE}: `scripts/cluster down` first")
    if build:
        hosts.sh(["cargo", "build", "--release", "--bin", "voting"], timeout=1800)
    shutil.rmtree(cluster.root, ignore_errors=True)
    cluster.root.mkdir(parents=True)
    cluster.root.chmod(0o755)
    hosts.create_network(topology.ALL)
    for stage, start in (
        ("redis: 3 nodes, 3 sentinels, haproxy", lambda: redis_ha.start(cluster)),
        ("postgresql: 3 nodes with repmgrd, pgpool-ii", lambda: postgres_ha.start(cluster)),
        ("schema: voting migrate", lambda: (app.configure(cluster, redis_ha.redis_url(cluster),
                                                          postgres_ha.database_url(cluster)),
                                            app.migrate(cluster))),
        ("services: vote, worker, result on each app host", lambda: app.start(cluster)),
        ("edge: traefik with a certificate from pebble",
         lambda: edge.start(cluster, app.backends("vote"), app.backends("result"))),
    ):
        began = time.monotonic()
        start()
        print(f"up  {stage} ({time.monotonic() - began:.1f} s)", flush=True)
    print(f"""
vote:    {edge.vote_url()}
result:  {edge.result_url()}
CA:      {edge.ca_bundle(cluster)}   (Pebble's root: trust it to check the certificates)
try:     target/release/voting load {" ".join(edge.load_args(cluster))} --rate 200 --duration 10s
status:  scripts/cluster status      stop: scripts/cluster down""")


def down(cluster: Cluster) -> None:
    for stop in (edge.stop, app.stop, postgres_ha.stop, redis_ha.stop):
        try:
            stop(cluster)
        except Exception as error:  # keep tearing down: a half-dead cluster is why we're here
            print(f"down: {error}", file=sys.stderr)
    # Whatever is still running (a process a stage could not stop cleanly) goes too.
    for pid_file in sorted((cluster.root / "run").glob("*.pid")) if (cluster.root / "run").exists() else []:
        node_name, name = pid_file.stem.split(".", 1)
        cluster.host(topology.node(node_name)).kill(name)
    hosts.destroy_network(topology.ALL)
    shutil.rmtree(cluster.root, ignore_errors=True)
    print("down")


def status(cluster: Cluster) -> None:
    if not hosts.network_exists():
        sys.exit("no cluster is up: `scripts/cluster up`")
    for title, lines in (
        ("redis", lambda: redis_ha.status_lines(cluster)),
        ("postgresql", lambda: postgres_ha.status_lines(cluster)),
        ("services", lambda: [*app.status_lines(cluster), app.queue_lag(cluster)]),
        ("edge", lambda: edge.status_lines(cluster)),
    ):
        print(f"== {title}")
        try:
            for line in lines():
                print(f"  {line}")
        except Exception as error:
            print(f"  unavailable: {error}")
