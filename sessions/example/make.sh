#!/usr/bin/env bash
# Re-create the example session (run from the repository root). Needs the default model.
set -euo pipefail
KEDIT=${KEDIT:-kedit}
rm -rf sessions/example.new
$KEDIT add sessions/example.new -s "Eiffel Tower" -p "The {} is located in the city of" -t London --dtype float32 --device cpu
$KEDIT add sessions/example.new -s "Japan" -p "The capital of {} is" -t Paris
$KEDIT commit sessions/example.new
$KEDIT add sessions/example.new -s "Colosseum" -p "The {} is located in the city of" -t Berlin
$KEDIT commit sessions/example.new
$KEDIT replay sessions/example.new/journal.jsonl --recompute --verify
cp sessions/example/README.md sessions/example/make.sh sessions/example.new/
rm -rf sessions/example && mv sessions/example.new sessions/example
$KEDIT log sessions/example
