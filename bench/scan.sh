#!/usr/bin/env bash
# A Scan over a large data set streams in bounded memory (issue 13): one
# node is loaded with KEYS values of VALUE bytes (batches of 1000), left to
# settle, and its RSS sampled idle; then `meshkv scan` reads every key while
# the node's RSS is sampled every 50 ms. Checks that the scan returned every
# key exactly once and in order, and prints the idle and peak RSS (target:
# peak within 20 MiB of idle). Saves JSON in $OUT. Needs about
# KEYS * VALUE * 2 of disk, deleted at the end.
#
# Environment: KEYS (1000000), VALUE (100), OUT (bench/results).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

KEYS=${KEYS:-1000000}
VALUE=${VALUE:-100}
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
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }

say "building meshkv (release)"
cargo build --release --locked -q
BIN=$PWD/target/release/meshkv
URL=http://127.0.0.1:52071

"$BIN" serve --node-id node1 --listen 127.0.0.1:52071 --data-dir "$WORK/data" \
  >"$WORK/node.log" 2>&1 &
PID=$!
until "$BIN" health --endpoint $URL >/dev/null 2>&1; do sleep 0.05; done
say "loading $KEYS keys of $VALUE bytes"
"$BIN" bench --endpoint $URL --requests $((KEYS / 1000)) --batch 1000 --concurrency 8 \
  --keys sequential --keyspace "$KEYS" --value-size "$VALUE" --quiet >/dev/null
sleep 5
idle=$(rss_kib)
say "idle RSS ${idle} KiB; scanning"
peak=$idle
"$BIN" scan bench- --keys-only --endpoint $URL >"$WORK/keys" &
SCAN=$!
t0=$(date +%s.%N)
while kill -0 "$SCAN" 2>/dev/null; do
  r=$(rss_kib)
  [ "$r" -le "$peak" ] || peak=$r
  sleep 0.05
done
wait "$SCAN"
secs=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$t0" "$(date +%s.%N)")
got=$(wc -l <"$WORK/keys")
uniq=$(sort -u "$WORK/keys" | wc -l)
sorted=yes
sort -c "$WORK/keys" 2>/dev/null || sorted=no
rise=$(( (peak - idle) / 1024 ))
say "scan: $got keys ($uniq distinct, sorted: $sorted) in ${secs}s; RSS idle ${idle} KiB, peak ${peak} KiB (+${rise} MiB)"
stamp=$(date -u +%Y%m%dT%H%M%S)
printf '{"keys": %s, "value_bytes": %s, "returned": %s, "distinct": %s, "sorted": "%s", "scan_secs": %s, "idle_rss_kib": %s, "peak_rss_kib": %s}\n' \
  "$KEYS" "$VALUE" "$got" "$uniq" "$sorted" "$secs" "$idle" "$peak" >"$OUT/scan-$stamp.json"
[ "$got" -eq "$KEYS" ] && [ "$uniq" -eq "$KEYS" ] && [ "$sorted" = yes ] && [ "$rise" -le 20 ]
