# syntax=docker/dockerfile:1
# Multi-stage build of the `sagaflow` binary (crate sagaflow-api). The database
# migrations are embedded in the binary (sqlx::migrate!), so only the binary ships.

FROM rust:1-bookworm AS builder
# rdkafka is built from source (cmake-build feature).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Every workspace member is needed to resolve the workspace (no `COPY . .`: keeps target/ out).
COPY Cargo.toml Cargo.lock ./
# Build settings (SQLite syncs with fdatasync).
COPY .cargo .cargo
COPY event-store event-store
COPY engine engine
COPY sagas sagas
COPY api api
COPY tests tests
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sagaflow-api \
 && cp target/release/sagaflow /usr/local/bin/sagaflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sagaflow
COPY --from=builder /usr/local/bin/sagaflow /usr/local/bin/sagaflow
USER sagaflow:sagaflow
ENV SAGAFLOW_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["sagaflow"]
CMD ["serve"]
