#!/usr/bin/env bash
# How long a node takes from `meshkv serve` to SERVING with its data on disk:
# for each size in KEYS (default "1000000 5000000"), one node with no peers
# is loaded with that many 100-byte values (batches of 1000, sequential
# keys), then stopped cleanly and restarted, then killed with SIGKILL in the
# middle of more writes and restarted. Each restart is timed until
# `meshkv health` passes. Prints one line per size and saves JSON in $OUT.
#
# Environment: KEYS, OUT (default bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${KEYS:-"1000000 5000000"}
OUT=${OUT:-bench/results}
WORK=$(mktemp -d)
mkdir -p "$OUT"
PID=
cleanup() {
  [ -z "$PID" ] || kill -9 "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

say "building meshkv (release)"
cargo build --release --locked -q
BIN=$PWD/target/release/meshkv
URL=http://127.0.0.1:52061

start() { # DIR; sets PID
  "$BIN" serve --node-id node1 --listen 127.0.0.1:52061 --data-dir "$1" --fsync always \
    >>"$1.log" 2>&1 &
  PID=$!
}
# Sets SECS to the seconds from start until health passes (not in a
# subshell: PID must survive).
timed_start() { # DIR
  local t0 t1
  t0=$(date +%s.%N)
  start "$1"
  until "$BIN" health --endpoint $URL >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || { say "node exited; see $1.log"; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  SECS=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$t0" "$t1")
}

results=()
for n in $KEYS; do
  dir=$WORK/node-$n
  start "$dir"
  until "$BIN" health --endpoint $URL >/dev/null 2>&1; do sleep 0.05; done
  say "loading $n keys"
  "$BIN" bench --endpoint $URL --requests $((n / 1000)) --batch 1000 --concurrency 8 \
    --keys sequential --keyspace "$n" --value-size 100 --quiet >/dev/null
  kill "$PID"; wait "$PID" 2>/dev/null || true
  timed_start "$dir"
  clean=$SECS
  say "$n keys: SERVING $clean s after a clean stop"
  # More writes, then SIGKILL while they run: the journal holds them.
  "$BIN" bench --endpoint $URL --duration 5 --batch 1000 --concurrency 8 \
    --keys sequential --keyspace "$n" --value-size 100 --quiet >/dev/null &
  load=$!
  sleep 3
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  timed_start "$dir"
  killed=$SECS
  say "$n keys: SERVING $killed s after kill -9"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  PID=
  rm -rf "$dir"
  results+=("{\"keys\": $n, \"clean_stop_seconds\": $clean, \"kill9_seconds\": $killed}")
done

stamp=$(date -u +%Y%m%dT%H%M%S)
json=$(IFS=,; echo "[${results[*]}]")
echo "$json" >"$OUT/restart-$stamp.json"
python3 - "$json" <<'PY'
import json, sys
rows = json.loads(sys.argv[1])
print(f"{'keys':>10} {'clean stop':>12} {'kill -9':>10}")
for r in rows:
    print(f"{r['keys']:>10} {r['clean_stop_seconds']:>11.2f}s {r['kill9_seconds']:>9.2f}s")
if len(rows) > 1:
    print(f"kill -9 restart at {rows[-1]['keys']} keys / at {rows[0]['keys']}: "
          f"{rows[-1]['kill9_seconds'] / rows[0]['kill9_seconds']:.2f}x")
PY
echo "saved $OUT/restart-$stamp.json" >&2
