#!/usr/bin/env bash
# Builds the fraud-detector of an earlier git revision, for `verdict-loadtest fraud --baseline`
# and `verdict-loadtest profile --binary`, and prints the binary's path:
#
#   bash loadtest/baseline.sh e146487    # -> target/baseline/fraud-detector-e146487
#
# The revision's tree is exported (git archive) and built in release with its own lock file
# into target/baseline/target, so this checkout's target/release is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rev=$(git rev-parse --short "${1:?usage: loadtest/baseline.sh REV}^{commit}")
out=target/baseline/fraud-detector-$rev
if [ ! -x "$out" ]; then
  src=target/baseline/src-$rev
  rm -rf "$src" && mkdir -p "$src"
  git archive "$rev" | tar -x -C "$src"
  CARGO_TARGET_DIR=$PWD/target/baseline/target \
    cargo build --release --locked -p fraud-detector --manifest-path "$src/Cargo.toml" >&2
  cp target/baseline/target/release/fraud-detector "$out"
  rm -rf "$src"
fi
echo "$out"
