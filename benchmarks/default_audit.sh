#!/usr/bin/env bash
# Wall time of the embedded default audit, with a cold and a warm task-model cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(mktemp -d); out=$(mktemp -d)
export SPLITAUDIT_CACHE="$cache"
/usr/bin/time -f "cold: %e s wall, %M KB max RSS" .venv/bin/splitaudit run --out "$out/cold" --quiet
/usr/bin/time -f "warm: %e s wall, %M KB max RSS" .venv/bin/splitaudit run --out "$out/warm" --quiet
rm -rf "$cache" "$out"
