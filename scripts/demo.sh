#!/usr/bin/env bash
# The main job on a fresh machine: install, build, start the whole pipeline (broker,
# schema registry, topology, fraud-detector) and send sample transactions through it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install.sh
echo; echo "==> build (release)"
cargo build --release --bins --locked
verdict=target/release/verdict

echo; echo "==> stack up: broker, schema registry, topology, fraud-detector"
$verdict stack up
echo; echo "==> sample transactions: produce, read back, show the decisions"
$verdict demo --count "${DEMO_EVENTS:-10}"

echo
echo "The stack keeps running: '$verdict stack status' shows it, '$verdict stack down' stops it."
