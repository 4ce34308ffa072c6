#!/usr/bin/env bash
# Runs every test: installs what is missing (the main job's needs plus the test-only servers),
# builds the binaries the tests start, lints, then unit and integration tests. The integration
# tests share one Apache Kafka broker, started by the first test that needs it and stopped when
# the test run ends (tests/harness); tests that kill the broker start their own.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
began=$SECONDS

bash scripts/install.sh --tests
echo; echo "==> build"
# One build, then tests: incremental state would only fill the disk (about 2 GB of 9 from
# scratch), so it is off unless the caller sets CARGO_INCREMENTAL.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_gb=$(( $(df -Pk . | awk 'NR == 2 { print $4 }') / 1024 / 1024 ))
if [ ! -d "${CARGO_TARGET_DIR:-target}/debug" ] && [ "$free_gb" -lt 10 ]; then
  echo "scripts/test.sh: only $free_gb GB free here; a build from scratch needs about 8 GB" \
    "(target/ and tests/fuzz/target/) and stops with 'No space left on device' without it" >&2
fi
cargo build --workspace --bins --tests --locked
echo; echo "==> lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets are not workspace members (nightly, instrumented, their own lock file);
# checking them on stable keeps them compiling with the code they call.
cargo check --manifest-path tests/fuzz/Cargo.toml --locked
echo; echo "==> tests"
tests_began=$SECONDS
cargo nextest run --workspace --locked --no-fail-fast
echo; echo "scripts/test.sh: tests ran in $((SECONDS - tests_began)) s, everything in $((SECONDS - began)) s"
