#!/usr/bin/env bash
# Runs verdict's fuzz targets (tests/fuzz, cargo fuzz on the nightly toolchain), each for a
# bounded time, and prints executions and findings per target.
#
#   scripts/fuzz.sh [TARGET...]          record_decode pii_redaction topology_parse registry_schema
#   FUZZ_SECONDS=600 scripts/fuzz.sh     the 10-minute run (default: 60 s per target)
#
# Seeds are committed in tests/fuzz/seeds/<target>; the growing corpus stays in
# tests/fuzz/corpus/<target> and crashers in tests/fuzz/artifacts/<target> (both ignored by
# git). A crasher becomes a regression test next to the code it broke. No sanitizer: the code
# under test has no `unsafe`, so the findings are panics (and librdkafka's C build, which the
# targets link, does not configure under the address sanitizer's flags).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
((${#targets[@]})) || targets=(record_decode pii_redaction topology_parse registry_schema)

rustup toolchain list | grep -q '^nightly' \
  || { echo "fuzz.sh: cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2; exit 2; }
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

echo "==> build (nightly, instrumented; the first build takes several minutes)"
cargo +nightly fuzz build --fuzz-dir tests/fuzz --sanitizer none 2>&1 | tail -n 2

status=0
for t in "${targets[@]}"; do
  corpus=tests/fuzz/corpus/$t
  mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
  cp -n tests/fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  log=$(mktemp)
  echo; echo "==> $t: ${seconds} s"
  if cargo +nightly fuzz run --fuzz-dir tests/fuzz --sanitizer none "$t" "$corpus" -- \
       -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    echo "    $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)   corpus: $(ls "$corpus" | wc -l) inputs   findings: none"
  else
    status=1
    echo "    FINDING: $(grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -n 3 | tr '\n' ' ')"
    echo "    crasher: $(ls -t tests/fuzz/artifacts/"$t"/* 2>/dev/null | head -n 1)   log: $log"
    continue
  fi
  rm -f "$log"
done
exit $status
