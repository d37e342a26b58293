#!/usr/bin/env bash
# Runs every cargo-fuzz target for a while (default 30 s each), starting from
# the committed seed corpus (copied, so the run does not change it). Installs
# cargo-fuzz if it is missing. The targets need a nightly feature (sanitizers),
# which RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_request replicate stored_entry config peer_rpc)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing it" >&2
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
# cargo-fuzz sets its own RUSTFLAGS; the project's tokio_unstable cfg is
# only for the simulation and is not needed here.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  cp -r "fuzz/corpus/$t" "$work/$t"
  echo "fuzz $t for ${secs}s"
  if ! (cd fuzz && cargo fuzz run -O "$t" "$work/$t" -- -max_total_time="$secs" \
        -print_final_stats=1) >"$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log" >&2
    echo "fuzz target $t failed; its crashing input is under fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added)|^Done" "$work/$t.log" || true
done
