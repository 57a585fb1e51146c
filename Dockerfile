# One image for the whole project: tributary-broker (the server), tributary
# (the CLI) and tributary-operator (the Kubernetes controller). The Helm chart
# runs the operator from it, and the StatefulSets the operator generates run
# the broker from it (both name their command explicitly).
#
#   docker build -t tributary/tributary:0.1.0 .

# ---- build ----
FROM rust:1.95-bookworm AS builder
# RocksDB's bindings are generated with bindgen (libclang) and its C++ is
# compiled with the system toolchain.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev clang g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tributary-broker -p tributary-client -p tributary-operator \
 && mkdir -p /out \
 && cp target/release/tributary-broker target/release/tributary target/release/tributary-operator /out/

# ---- runtime ----
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tributary --shell /usr/sbin/nologin tributary \
 && install -d -o 10001 -g 10001 /var/lib/tributary
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/tributary
# gRPC, then HTTP (/metrics, /healthz, /readyz).
EXPOSE 7070 7071
ENV TRIBUTARY_DATA_DIR=/var/lib/tributary \
    TRIBUTARY_LISTEN=0.0.0.0:7070 \
    TRIBUTARY_HTTP_LISTEN=0.0.0.0:7071
CMD ["tributary-broker"]
