# TEST ONLY (scripts/e2e-swarm): stands in for the official redis:7.2-bookworm image, which CI
# cannot pull. Debian's Redis, the official image's user (redis, 999:999) and data directory.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
RUN set -eu; \
    groupadd --system --gid 999 redis; \
    useradd --system --uid 999 --gid redis --home-dir /data --shell /usr/sbin/nologin redis; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    mkdir -p /data; chown redis:redis /data
WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server"]
