"""`scripts/cluster up | down | status`: the whole topology on this machine."""

from __future__ import annotations

import argparse

from .cluster import Cluster
from .lifecycle import down, status, up


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start every node (fresh data)")
    start.add_argument("--no-build", action="store_true", help="use target/release/voting as it is")
    commands.add_parser("down", help="stop every node and remove its data")
    commands.add_parser("status", help="who is primary, queue lag, every node's health")
    args = parser.parse_args()
    cluster = Cluster()
    if args.command == "up":
        up(cluster, build=not args.no_build)
    elif args.command == "down":
        down(cluster)
    else:
        status(cluster)


if __name__ == "__main__":
    main()
