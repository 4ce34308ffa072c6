#!/usr/bin/env bash
# Serves the fraud model (models/fraud, german-credit-logreg 1.0.0) with MLServer over KServe v2
# (Open Inference Protocol), on loopback only.
#
#   scripts/mlserver.sh DIR HTTP_PORT GRPC_PORT
#
# Prepares DIR as an MLServer model repository:
#   DIR/model.joblib         exported from models/fraud/model.json by models/fraud/export_sklearn.py,
#                            run with the server's own Python so the pickle matches its scikit-learn
#   DIR/features.py          copied by the export; the pickle refers to features.preprocess
#   DIR/model-settings.json  copied from models/fraud/mlserver/model-settings.json (model "fraud")
#   DIR/settings.json        written here: 127.0.0.1, the two ports, no metrics server, no workers
# then execs `mlserver start DIR` in the foreground. The caller backgrounds it and owns the pid
# (exec keeps the pid); SIGTERM/SIGINT stop it cleanly in about 1 s. MLServer always starts its
# gRPC server, so GRPC_PORT must be free too. Ready when GET /v2/health/ready answers 200.
#
# Python: $VERDICT_MLSERVER_PYTHON, else .venv-mlserver/bin/python at the repository root:
#   python3 -m venv .venv-mlserver
#   .venv-mlserver/bin/pip install -r models/mlserver-requirements.txt
set -euo pipefail

usage() { echo "usage: $0 DIR HTTP_PORT GRPC_PORT" >&2; exit 2; }
[ $# -eq 3 ] || usage
dir=$1 http_port=$2 grpc_port=$3
for p in "$http_port" "$grpc_port"; do
  [[ $p =~ ^[0-9]+$ ]] && ((p >= 1 && p <= 65535)) || { echo "mlserver.sh: bad port '$p'" >&2; exit 2; }
done
[ "$http_port" != "$grpc_port" ] || { echo "mlserver.sh: HTTP_PORT and GRPC_PORT must differ" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
py=${VERDICT_MLSERVER_PYTHON:-$root/.venv-mlserver/bin/python}
if ! "$py" -c 'import mlserver, mlserver_sklearn, sklearn' 2>/dev/null; then
  cat >&2 <<EOF
mlserver.sh: no MLServer in '$py'. Install it (about 40 s from PyPI), or set VERDICT_MLSERVER_PYTHON:
  python3 -m venv "$root/.venv-mlserver"
  "$root/.venv-mlserver/bin/pip" install -r "$root/models/mlserver-requirements.txt"
EOF
  exit 1
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# Export with the server's own scikit-learn (a pickle from another version may load with an
# InconsistentVersionWarning or not at all). Rebuilt every start: it takes well under a second.
"$py" "$root/models/fraud/export_sklearn.py" "$dir/model.joblib" >&2
cp "$root/models/fraud/mlserver/model-settings.json" "$dir/model-settings.json"

# Values in settings.json win over MLSERVER_* environment variables; fields left out here
# can still be set from the environment (or from a .env file in the working directory).
cat > "$dir/settings.json" <<EOF
{
  "debug": false,
  "host": "127.0.0.1",
  "http_port": $http_port,
  "grpc_port": $grpc_port,
  "metrics_endpoint": null,
  "parallel_workers": 0,
  "kafka_enabled": false,
  "load_models_at_startup": true
}
EOF

# The unpickler must find features.py. MLServer's CLI also puts DIR on sys.path, but
# PYTHONPATH makes that explicit. Run from DIR so no stray .env elsewhere is read.
export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
cd "$dir"
exec "$py" -c 'import sys; from mlserver.cli import main; sys.argv[0] = "mlserver"; sys.exit(main())' \
  start "$dir"
