#!/usr/bin/env bash
# Runs Jaeger (all-in-one, in-memory storage) on loopback only, in the foreground (exec'd, so the
# caller's pid is Jaeger's). scripts/install.sh --tests builds and places it.
#   scripts/jaeger.sh OTLP_PORT UI_PORT [DIR]
# OTLP_PORT takes OTLP over HTTP (services send to http://127.0.0.1:OTLP_PORT/v1/traces),
# UI_PORT serves the UI and the query API (GET /api/services, /api/traces?service=…), and
# UI_PORT-1 the query API's gRPC (as Jaeger's own 16686 and 16685). Nothing else listens: no
# collector metrics, no other receivers. The configuration is written to DIR (a new temporary
# directory when not given).
# The web UI is jaeger-ui's built assets (index.html and static/), which the `go install`ed binary
# lacks: served from VERDICT_JAEGER_UI when set (exit 3 if it holds no index.html; `none` for no
# UI), else from where scripts/install.sh --tests puts them. Without them Jaeger serves its
# placeholder page, and only the query API is of use.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: scripts/jaeger.sh OTLP_PORT UI_PORT [DIR]"
port=${1:?$usage}
ui=${2:?$usage}
dir=${3:-$(mktemp -d)}
version=$(sed -n 's/^JAEGER_VERSION=//p' "$root/scripts/install.sh")
ui_version=$(sed -n 's/^JAEGER_UI_VERSION=//p' "$root/scripts/install.sh")
share=$HOME/.local/share/verdict
bin=${VERDICT_JAEGER_DIR:-$share/jaeger-$version}/bin/jaeger
[ -x "$bin" ] || { echo "jaeger.sh: $bin is missing: run scripts/install.sh --tests" >&2; exit 2; }
if [ "${VERDICT_JAEGER_UI:-}" = none ]; then
  assets=""
elif [ -n "${VERDICT_JAEGER_UI:-}" ]; then
  assets=$VERDICT_JAEGER_UI
  [ -f "$assets/index.html" ] || {
    echo "jaeger.sh: VERDICT_JAEGER_UI=$assets holds no index.html (give the build/ directory of jaeger-ui)" >&2
    exit 3
  }
else
  assets=$share/jaeger-ui-$ui_version
fi
if [ -n "$assets" ] && [ -f "$assets/index.html" ]; then
  echo "jaeger.sh: web UI from $assets" >&2
  ui_assets="    ui:
      assets_path: '$assets'"
else
  echo "jaeger.sh: no web UI (${assets:-VERDICT_JAEGER_UI=none}${assets:+/index.html is missing}): the query API only" >&2
  ui_assets=""
fi
mkdir -p "$dir"
cat > "$dir/jaeger.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$ui
    grpc:
      endpoint: 127.0.0.1:$((ui - 1))
$ui_assets
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$port
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
# Jaeger traces its own query service through the OpenTelemetry SDK, to localhost:4317 unless
# told otherwise: it samples none of its own.
export OTEL_TRACES_SAMPLER=always_off
exec "$bin" --config "$dir/jaeger.yaml"
