#!/usr/bin/env bash
# Runs Toxiproxy's server with its HTTP API on 127.0.0.1:PORT, in the foreground (exec'd, so
# the caller's pid is the server's). scripts/install.sh --tests builds and places it.
#   scripts/toxiproxy.sh PORT
# GET /version answers once it listens; proxies and toxics are created through the API.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${1:?usage: scripts/toxiproxy.sh PORT}
version=$(sed -n 's/^TOXIPROXY_VERSION=//p' "$root/scripts/install.sh")
dir=${VERDICT_TOXIPROXY_DIR:-$HOME/.local/share/verdict/toxiproxy-$version}
[ -x "$dir/bin/toxiproxy-server" ] || { echo "toxiproxy.sh: $dir/bin/toxiproxy-server is missing: run scripts/install.sh --tests" >&2; exit 2; }
exec "$dir/bin/toxiproxy-server" -host 127.0.0.1 -port "$port"
