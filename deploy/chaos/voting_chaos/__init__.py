"""Failures injected into a running voting deployment under load, judged by one runner.

`runner` runs a scenario (load, fault, recovery) and turns `voting load --verify`'s report into
a verdict; the backends say how to fail things: `voting_cluster.chaos` on the local
network-namespace cluster (`scripts/chaos`), `voting_chaos.swarm` on the Swarm stack across
Docker-in-Docker nodes (`scripts/e2e-swarm`).
"""
