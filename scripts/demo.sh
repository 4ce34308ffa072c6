#!/usr/bin/env bash
# The main job on a fresh machine: install, build, start the local stack, apply the
# topology and send sample events through Kafka and the schema registry.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install.sh
echo; echo "==> build (release)"
cargo build --release --bins --locked
verdict=target/release/verdict

echo; echo "==> stack up"
$verdict stack up
echo; echo "==> topology apply"
$verdict topology apply
echo; echo "==> sample events: produce and read back"
$verdict demo --count "${DEMO_EVENTS:-10}"

echo
echo "The stack keeps running: '$verdict stack status' shows it, '$verdict stack down' stops it."
