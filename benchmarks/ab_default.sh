#!/usr/bin/env bash
# The embedded default audit at several commits, one after the other, each with a cold cache, and
# whether their records are the same: how the speed-ups in RESULTS.md "Default audit wall time" are
# measured (ratios of runs made back to back on one machine, never against older absolute times).
#
#   benchmarks/ab_default.sh COMMIT[:WORKERS] ...      e.g.  benchmarks/ab_default.sh 7e802f8 HEAD HEAD:auto
#
# Each commit is checked out into a temporary git worktree and run with this checkout's .venv
# (PYTHONPATH = the worktree); prints wall time, max RSS and user CPU per run (GNU time), then the
# number of records whose value or CI differs from the first run's. Keep the machine otherwise idle.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python="$root/.venv/bin/python"
work=$(mktemp -d)
trap 'for w in "$work"/wt-*; do [ -d "$w" ] && git -C "$root" worktree remove --force "$w"; done; rm -rf "$work"' EXIT
first=""
i=0
for spec in "$@"; do
  i=$((i + 1))
  rev=${spec%%:*}; workers=${spec#*:}; [ "$workers" = "$spec" ] && workers=1
  sha=$(git -C "$root" rev-parse --short "$rev")
  tree="$work/wt-$sha"
  [ -d "$tree" ] || git -C "$root" worktree add -q --detach "$tree" "$sha"
  run="$work/run-$i-$sha-w$workers"; mkdir -p "$run"  # a fresh folder per run: a repeated spec is run again, not resumed
  (cd "$tree" && SPLITAUDIT_CACHE="$run/cache" PYTHONPATH="$tree" /usr/bin/time -f "%e %M %U" -o "$run/time" \
     "$python" -m audit.cli run --out "$run/out" --workers "$workers" --quiet)
  read -r wall rss user < "$run/time"
  same=""
  if [ -n "$first" ]; then
    same=$("$python" - "$first" "$run/out/report.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["results"] for p in sys.argv[1:3])
differ = sum((x["value"], x.get("ci95")) != (y["value"], y.get("ci95")) for x, y in zip(a, b)) + abs(len(a) - len(b))
print(f"{differ} of {len(b)} records differ from the first run's")
EOF
)
  else
    first="$run/out/report.json"
  fi
  echo "$sha workers=$workers: ${wall} s wall, ${rss} KB max RSS, ${user} s user CPU  $same"
done
