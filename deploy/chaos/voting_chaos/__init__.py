"""Failures injected into a running voting deployment under load, judged by one runner.

`runner` runs a scenario (load, fault, recovery) and turns `voting load --verify`'s report into
a verdict; `swarm` says how to fail things in the Swarm stack across Docker-in-Docker nodes
(`scripts/e2e-swarm`); `traefik` finds the Traefik binary that suite builds its Traefik image
from.
"""
