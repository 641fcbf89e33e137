#!/usr/bin/env bash
# Install everything needed (scripts/setup.sh) and open the kedit TUI on the embedded default
# model, in the session sessions/demo (created on first use). Extra arguments go to `kedit tui`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kedit tui sessions/demo --model default "$@"
