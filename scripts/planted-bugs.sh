#!/usr/bin/env bash
# Proves that the simulation catches bugs: for each bug planted behind the
# `planted-bugs` feature (src/planted.rs), runs the CI's seeds until the
# first failing one and reports how many seeds that took. A bug the seeds do
# not catch fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${MESHKV_SIM_SEEDS:-500}"
status=0
for bug in purge-without-acks merge-ignores-versions catch-up-forgets-when-away; do
  out=$(MESHKV_PLANTED_BUG=$bug MESHKV_SIM_SEEDS=$seeds MESHKV_SIM_STOP_EARLY=1 \
    cargo test --locked --features planted-bugs --test sim seeds -- --nocapture 2>&1 || true)
  first=$(printf '%s\n' "$out" | sed -n 's/^seed \([0-9]*\) FAILED.*/\1/p' | sort -n | head -n 1)
  if [ -n "$first" ]; then
    why=$(printf '%s\n' "$out" | grep -m1 "^seed $first FAILED" | cut -c1-160)
    echo "planted bug $bug: caught; first failing seed $first of $seeds ($why)"
  else
    echo "planted bug $bug: NOT caught in $seeds seeds"
    status=1
  fi
done
exit $status
