# TEST ONLY (scripts/e2e-swarm): stands in for the official Rust image
# (docker.io/library/rust:<version>-slim-bookworm), which CI cannot pull, so that the voting
# image is built by its own Dockerfile's source stage. The same layout as the official image —
# rustup's proxies in /usr/local/cargo/bin, the toolchain under /usr/local/rustup, CARGO_HOME,
# RUSTUP_HOME and PATH set alike — with the toolchain copied from the machine running the
# tests (the build context holds it: see scripts/e2e-swarm), and the C compiler and libc
# headers the official image carries for linking. Also the extra certificate authorities the
# test machine trusts (`extra-ca/`, from /usr/local/share/ca-certificates): where egress to the
# crate registry passes a TLS-inspecting proxy, the build's `cargo fetch` must trust it too.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN set -eu; cargo --version; rustc --version
