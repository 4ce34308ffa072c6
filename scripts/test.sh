#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the binaries the tests start,
# then unit and integration tests (each integration test starts its own broker).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install.sh
echo; echo "==> build"
cargo build --workspace --bins --tests --locked
echo; echo "==> lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo; echo "==> tests"
cargo nextest run --workspace --locked --no-fail-fast
