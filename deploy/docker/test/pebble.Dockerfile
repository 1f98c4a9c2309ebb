# TEST ONLY (scripts/e2e-swarm): Pebble, the ACME test server, standing in for Let's Encrypt.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pebble; \
    apt-get clean; rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["pebble"]
