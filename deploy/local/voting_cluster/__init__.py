"""The whole voting topology as processes on one machine, one network namespace per host.

`scripts/cluster` (up | down | status) and `scripts/chaos` drive it. Every component runs
from the configuration under `deploy/` (rendered with this cluster's addresses and secrets),
the same files the Swarm stack ships.
"""
