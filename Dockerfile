# The Aegis gateway image: one `aegis` binary that serves a config (`aegis run`) and
# also plays the fake upstream services (`aegis upstream`) in docker-compose.yml.
#
#   docker build -t aegis .
#   docker run --rm -p 8000:8000 -e JWT_SECRET=change-me \
#     -v "$PWD/config/aegis.compose.toml:/etc/aegis/aegis.toml:ro" aegis

# ---- build ----------------------------------------------------------------------------------
# Dependencies are compiled in their own layer with cargo-chef: `prepare` reduces the workspace
# to a recipe (manifests, lock file, stub targets), `cook` builds only the dependencies from it,
# so that layer is reused until Cargo.toml/Cargo.lock change, also from a registry cache such
# as the GitHub Actions cache (which BuildKit cache mounts would not be exported to).
FROM rust:1-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --locked -p aegis-tokio --bin aegis --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p aegis-tokio --bin aegis \
    && install -D -m 0755 target/release/aegis /out/aegis

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# curl is here only for the HEALTHCHECK: it speaks HTTP properly (status line, --fail on 503,
# --max-time), costs a few MB, and keeps the check a one-liner. A bash /dev/tcp probe would
# need no package but hand-parses HTTP; the contract has no `aegis` health subcommand.
# Not version-pinned (DL3008): bookworm's security updates replace the pinned version and the
# build would break; the base image tag is what pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 aegis \
    && useradd --system --uid 10001 --gid aegis --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin aegis \
    && mkdir -p /etc/aegis
COPY --from=build /out/aegis /usr/local/bin/aegis
# The compose config, so the image runs as is; mount your own at /etc/aegis/aegis.toml.
COPY config/aegis.compose.toml /etc/aegis/aegis.toml

# Numeric, so that runtimes checking runAsNonRoot can tell without /etc/passwd.
USER 10001:10001
ENV RUST_LOG=info
EXPOSE 8000
# Checks the proxy listener on $PORT (the env override of server.listen's port), default 8000.
# /gateway/health answers 503 when the Redis store is down and on_store_error = "deny".
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["sh", "-c", "curl -fsS --max-time 2 http://127.0.0.1:${PORT:-8000}/gateway/health >/dev/null || exit 1"]

# SIGTERM (docker stop) drains in-flight requests within server.drain_timeout, then exits 0;
# give `docker stop -t` / stop_grace_period at least that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aegis"]
CMD ["run", "--config", "/etc/aegis/aegis.toml"]
