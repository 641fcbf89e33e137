#!/usr/bin/env bash
# See the kedit TUI as a new user would: run the real `kedit tui` on the default model inside
# tmux, type a fact (Eiffel Tower → London), ask the model, commit with Ctrl+S, wait for the
# edited answer, and capture the screen to a text file (printed at the end).
#
#   bash scripts/tui-demo.sh            # 120x36, then 80x24
#   SIZES="100x30" bash scripts/tui-demo.sh
#
# Screens go to $OUT (default: /tmp/kedit-tui-demo/). Sessions live in a temp folder that is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq tmux >/dev/null
  else
    echo "tui-demo: tmux is needed (apt-get install tmux)" >&2
    exit 1
  fi
fi

OUT=${OUT:-${TMPDIR:-/tmp}/kedit-tui-demo}
SIZES=${SIZES:-"120x36 80x24"}
mkdir -p "$OUT"
WORK=$(mktemp -d)
SESSIONS=()
cleanup() {
  for s in "${SESSIONS[@]}"; do tmux kill-session -t "$s" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for TMUX_SESSION PATTERN SECONDS: until the screen shows PATTERN (grep -E)
wait_for() {
  local end=$((SECONDS + $3))
  until tmux capture-pane -p -t "$1" | grep -qE "$2"; do
    if [ $SECONDS -ge $end ]; then
      echo "tui-demo: gave up after $3 s waiting for /$2/; the screen was:" >&2
      tmux capture-pane -p -t "$1" >&2
      return 1
    fi
    sleep 0.5
  done
}

# keys TMUX_SESSION KEY...: one key (or literal text) at a time, as a person types
keys() {
  local t=$1; shift
  for k in "$@"; do
    tmux send-keys -t "$t" "$k"
    sleep 0.4
  done
}

demo() {
  local cols=${1%x*} rows=${1#*x}
  local t="kedit-demo-$$-$1"
  SESSIONS+=("$t")
  echo "== kedit tui at ${cols}x${rows} (session $WORK/demo-$1)"
  tmux new-session -d -s "$t" -x "$cols" -y "$rows" \
    "TERM=xterm-256color KEDIT_SESSIONS_DIR='$WORK' .venv/bin/kedit tui demo-$1 --model default; echo 'kedit exited'; sleep 600"
  wait_for "$t" "● ready" 600
  keys "$t" "Eiffel Tower" Enter "The Eiffel Tower is located in the city of" Enter "London" Enter
  wait_for "$t" "1 queued" 30
  keys "$t" F3 "The Eiffel Tower is located in the city of" Enter
  wait_for "$t" "next +p" 300  # the top-k table of the answer
  tmux capture-pane -p -t "$t" > "$OUT/before-$1.txt"
  keys "$t" C-s
  wait_for "$t" " 1 edit " 900
  wait_for "$t" "before " 300  # the query pane re-ran the prompt: now and before, side by side
  sleep 1
  tmux capture-pane -p -t "$t" > "$OUT/after-$1.txt"
  keys "$t" C-q
  echo "-- before the commit:"
  cat "$OUT/before-$1.txt"
  echo "-- after the commit:"
  cat "$OUT/after-$1.txt"
  if ! grep -q "London" "$OUT/after-$1.txt"; then
    echo "tui-demo: the edited answer does not show London" >&2
    return 1
  fi
}

for size in $SIZES; do
  demo "$size"
done
echo "== screens saved in $OUT/"
