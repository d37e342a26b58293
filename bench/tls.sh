#!/usr/bin/env bash
# What TLS costs: the same 3-node meshkv cluster on loopback, first plain,
# then with TLS on both listeners, mTLS between peers and a client token,
# driven by the same `meshkv bench` load in one run. Prints writes/s, reads/s
# and p99 of both, and their ratios.
#
# Environment: DURATION (seconds per run, default 10), ROUNDS (alternating
# plain/TLS pairs, default 2; the table shows each and their median ratio).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

say "building meshkv (release)"
cargo build --release --locked -q
BIN=$PWD/target/release/meshkv
"$BIN" certs --dir "$WORK/certs" --node node1 --node node2 --node node3 \
  --tokens "$WORK/certs/tokens.toml" >/dev/null
TOKEN=$(python3 -c '
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
print(next(t["token"] for t in d["tokens"] if t["role"] == "write"))' "$WORK/certs/tokens.toml")

start_cluster() { # plain|tls RUN
  local mode=$1 run=$2 i j peers args
  for i in 1 2 3; do
    peers=()
    args=(--node-id "node$i" --listen "127.0.0.1:5305$i" --data-dir "$WORK/$run-$i" --fsync always)
    for j in 1 2 3; do
      [ "$j" = "$i" ] && continue
      if [ "$mode" = tls ]; then
        peers+=(--peer "node$j=https://127.0.0.1:5306$j")
      else
        peers+=(--peer "node$j=http://127.0.0.1:5305$j")
      fi
    done
    if [ "$mode" = tls ]; then
      args+=(--peer-listen "127.0.0.1:5306$i" --tls-cert "$WORK/certs/node$i.pem"
        --tls-key "$WORK/certs/node$i.key" --tls-ca "$WORK/certs/ca.pem"
        --tokens-file "$WORK/certs/tokens.toml")
    fi
    "$BIN" serve "${args[@]}" "${peers[@]}" >"$WORK/$run-$i.log" 2>&1 &
    PIDS+=($!)
  done
}
endpoints() { # plain|tls
  local scheme=http i
  [ "$1" = tls ] && scheme=https
  for i in 1 2 3; do printf -- '--endpoint %s://127.0.0.1:5305%s ' "$scheme" "$i"; done
  [ "$1" = tls ] && printf -- '--cacert %s --token %s' "$WORK/certs/ca.pem" "$TOKEN"
  return 0
}
stop_cluster() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
wait_up() { # plain|tls
  local deadline=$((SECONDS + 60)) ep
  # shellcheck disable=SC2046
  for ep in $(endpoints "$1" | tr ' ' '\n' | grep '://'); do
    # shellcheck disable=SC2046
    until "$BIN" health --endpoint "$ep" $( [ "$1" = tls ] && echo --cacert "$WORK/certs/ca.pem") >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { say "cluster ($1) not up"; exit 1; }
      sleep 0.2
    done
  done
}
measure() { # plain|tls RUN -> "writes/s reads/s p99w_ms p99r_ms"
  local mode=$1 run=$2 w r
  start_cluster "$mode" "$run"
  wait_up "$mode"
  # shellcheck disable=SC2046
  "$BIN" bench --quiet --json $(endpoints "$mode") --concurrency 64 --keyspace 100000 \
    --value-size 100 --duration "$DURATION" --lag-interval 0 >"$WORK/$run-w.json"
  # shellcheck disable=SC2046
  "$BIN" bench --quiet --json $(endpoints "$mode") --concurrency 64 --keyspace 100000 \
    --value-size 100 --duration "$DURATION" --read-ratio 1 --lag-interval 0 >"$WORK/$run-r.json"
  stop_cluster
  python3 - "$WORK/$run-w.json" "$WORK/$run-r.json" <<'PY'
import json, sys
w, r = (json.load(open(p)) for p in sys.argv[1:3])
bad = {k: v for d in (w, r) for k, v in d["errors"].items()}
if bad or not w["requests"] or not r["requests"]:
    sys.exit(f"bench errors: {bad}")
print(f'{w["writes_per_sec"]:.0f} {r["reads_per_sec"]:.0f} {w["latency_ms"]["p99"]:.2f} {r["latency_ms"]["p99"]:.2f}')
PY
}

rows=()
for round in $(seq 1 "$ROUNDS"); do
  for mode in plain tls; do
    say "round $round: $mode"
    rows+=("$round $mode $(measure "$mode" "r$round-$mode")")
  done
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
print("round  mode    writes/s   reads/s  p99 write  p99 read")
for rnd, mode, w, r, pw, pr in rows:
    print(f"{rnd:>5}  {mode:<5} {float(w):>10.0f} {float(r):>9.0f} {float(pw):>8.2f}ms {float(pr):>7.2f}ms")
ratios_w, ratios_r = [], []
for rnd in sorted({x[0] for x in rows}):
    p = next(x for x in rows if x[0] == rnd and x[1] == "plain")
    t = next(x for x in rows if x[0] == rnd and x[1] == "tls")
    ratios_w.append(float(t[2]) / float(p[2])); ratios_r.append(float(t[3]) / float(p[3]))
print(f"TLS/plain, median of {len(ratios_w)} rounds: writes {statistics.median(ratios_w):.2f}x, reads {statistics.median(ratios_r):.2f}x")
'
