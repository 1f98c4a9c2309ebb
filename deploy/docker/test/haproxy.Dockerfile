# TEST ONLY (scripts/e2e-swarm): stands in for the official haproxy:2.8 image, which CI cannot
# pull. Debian's HAProxy, running as haproxy like the official image (uid and gid are the
# package's: nothing the stack mounts depends on them).
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    mkdir -p /var/lib/haproxy /usr/local/etc/haproxy; chown haproxy:haproxy /var/lib/haproxy
USER haproxy
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
