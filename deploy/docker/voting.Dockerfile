# The voting image: one binary for vote, worker, result and migrate (and the all-in-one mode).
#
#   docker build -f deploy/docker/voting.Dockerfile -t voting .        # from the repository root
#
# Needs BuildKit (the default builder since Docker 23; on Docker 20.10 set DOCKER_BUILDKIT=1): it
# builds only the stages the result needs, so the `prebuilt` stage below is skipped.
#
# The runtime is `scratch` plus exactly what the binary loads: the C library and libgcc_s, as
# the builder's `ldd` lists them, copied from the builder (so they match what it linked against),
# and a passwd entry for the unprivileged user. No shell, no package manager, no curl: the
# health check is `voting healthcheck`. Nothing is written to the root filesystem, so the
# containers run with `read_only: true`; only the all-in-one mode (`voting up`) writes, to /data.
#
# Build arguments
#   RUST_IMAGE     the builder: a Rust toolchain on Debian bookworm (its C library is copied
#                  into the runtime)
#   RUNTIME_BASE   the runtime's base: scratch, or any image (a debug shell: debian:bookworm-slim)
#   VOTING_BINARY  `source` (the default) compiles the workspace; `prebuilt` takes an already
#                  built target/release/voting from the build context instead, with RUST_IMAGE
#                  set to any Debian bookworm image. CI uses it (it builds the binary on the host
#                  and has no Rust image); the image it produces is otherwise the same.
#   VERSION, REVISION, CREATED   OCI labels (a release, the git commit, the build time)

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_BASE=scratch
ARG VOTING_BINARY=source

# -- source: compile the workspace ------------------------------------------------------------
FROM ${RUST_IMAGE} AS source
WORKDIR /src
# The dependency layer: the manifests and the lock file with empty crates. It is rebuilt only
# when a manifest or Cargo.lock changes, not on every source change.
COPY Cargo.toml Cargo.lock ./
COPY crates/voting/Cargo.toml crates/voting/
COPY crates/voting-core/Cargo.toml crates/voting-core/
COPY crates/voting-load/Cargo.toml crates/voting-load/
COPY crates/testkit/Cargo.toml crates/testkit/
RUN set -eu; \
    for crate in voting voting-core voting-load testkit; do \
        mkdir -p "crates/$crate/src"; \
        echo '' > "crates/$crate/src/lib.rs"; \
    done; \
    echo 'fn main() {}' > crates/voting/src/main.rs; \
    cargo fetch --locked; \
    cargo build --release --locked --package voting --bin voting; \
    rm -rf crates/*/src
# The sources. COPY keeps their (older) modification times, which cargo would take for
# "unchanged since the empty crates were built": touch them.
COPY crates crates
RUN set -eu; \
    find crates -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --package voting --bin voting; \
    install -D -m 0755 target/release/voting /out/voting

# -- prebuilt: a binary built outside (CI) ----------------------------------------------------
FROM ${RUST_IMAGE} AS prebuilt
COPY target/release/voting /out/voting

# -- the runtime's files ----------------------------------------------------------------------
FROM ${VOTING_BINARY} AS rootfs
RUN set -eu; \
    root=/rootfs; \
    install -D -m 0755 /out/voting "$root/usr/local/bin/voting"; \
    # Every shared object the binary needs, and the dynamic loader, at the paths it asks for.
    for lib in $(ldd /out/voting | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do \
        cp -L --parents "$lib" "$root/"; \
    done; \
    "$root/usr/local/bin/voting" --version >/dev/null; \
    mkdir -p "$root/etc" "$root/tmp" "$root/data"; \
    # The public certificate authorities, for the certificate manager's HTTPS to Let's Encrypt.
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"; \
    chmod 1777 "$root/tmp"; \
    echo 'voting:x:10001:10001:voting:/data:/sbin/nologin' > "$root/etc/passwd"; \
    echo 'voting:x:10001:' > "$root/etc/group"; \
    # Host names from /etc/hosts first, then DNS (Docker's resolver names the services).
    echo 'hosts: files dns' > "$root/etc/nsswitch.conf"; \
    chown 10001:10001 "$root/data"

# -- runtime --------------------------------------------------------------------------------
FROM ${RUNTIME_BASE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="voting" \
      org.opencontainers.image.description="Vote, worker, result and migrate of the voting platform, and its all-in-one mode" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=rootfs /rootfs/ /
USER 10001:10001
WORKDIR /data
# vote, result, worker health, certificate manager
EXPOSE 8080 8081 8082 8084
# The vote service's /healthz by default; result and worker set HEALTHCHECK_URL (the stack does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/voting", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/voting"]
# Without a command: the all-in-one mode, reachable from outside the container, data in /data
# (mount a volume there to keep votes across containers).
CMD ["up", "--vote-addr", "0.0.0.0:8080", "--result-addr", "0.0.0.0:8081", "--data-dir", "/data"]
