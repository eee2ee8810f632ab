# syntax=docker/dockerfile:1
# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p msgbus \
 && cp target/release/msgbus /usr/local/bin/msgbus

# Runtime stage: a small image with a non-root user and a data volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin msgbus \
 && mkdir -p /data && chown msgbus:msgbus /data
COPY --from=build /usr/local/bin/msgbus /usr/local/bin/msgbus
USER msgbus
# Listening on every interface of the container, msgbus refuses to start
# open (`--auth auto`): pass MSGBUS_ADMIN_TOKEN (32+ characters, e.g.
# `openssl rand -hex 32`) at run time, or create tokens in the volume with
# `msgbus token create --data-dir /data ...`. Never bake a secret into the image.
ENV MSGBUS_ADDR=0.0.0.0:8080 \
    MSGBUS_DATA_DIR=/data \
    MSGBUS_LOG_FORMAT=json \
    MSGBUS_AUTH=auto
VOLUME ["/data"]
EXPOSE 8080
# Ready means: store open, writer alive and not poisoned. The health probes
# need no token.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health/ready || exit 1
# SIGTERM drains requests, commits, releases the lock and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/msgbus"]
CMD ["serve"]
