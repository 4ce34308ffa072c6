#!/usr/bin/env bash
# Builds a service (default: the fraud-detector) of an earlier git revision, for
# `verdict-loadtest fraud --baseline`, `profile --binary` and `history --baseline`, and prints
# the binary's path:
#
#   bash loadtest/baseline.sh e146487            # -> target/baseline/fraud-detector-e146487
#   bash loadtest/baseline.sh d17f1a5 gateway    # -> target/baseline/gateway-d17f1a5
#
# The revision's tree is exported (git archive) and built in release with its own lock file
# into target/baseline/target, so this checkout's target/release is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
rev=$(git rev-parse --short "${1:?usage: loadtest/baseline.sh REV [PACKAGE]}^{commit}")
pkg=${2:-fraud-detector}
out=target/baseline/$pkg-$rev
if [ ! -x "$out" ]; then
  src=target/baseline/src-$rev
  rm -rf "$src" && mkdir -p "$src"
  git archive "$rev" | tar -x -C "$src"
  CARGO_TARGET_DIR=$PWD/target/baseline/target \
    cargo build --release --locked -p "$pkg" --manifest-path "$src/Cargo.toml" >&2
  cp "target/baseline/target/release/$pkg" "$out"
  rm -rf "$src"
fi
echo "$out"
