#!/usr/bin/env bash
# meshkv next to Redis and etcd, on this machine, in one run, on loopback.
#
#   meshkv  3 nodes, fsync=always, group commit       (driven by meshkv bench)
#   Redis   primary + 2 replicas, AOF everysec         (driven by redis-benchmark)
#   etcd    3 members                                  (driven by meshkv bench --target etcd)
#
# Same load shape for all: 100-byte values, 64 concurrent clients, 100000 keys.
# Also measures meshkv's transport ceiling, batched writes, replication lag at
# half load, catch-up after an outage and memory after 1,000,000 keys, and,
# for each system, the CPU time of all its server processes per write
# acknowledged during its write run (core-microseconds per replicated write:
# far less noisy than throughput on a shared machine).
# Prints one table and saves everything as JSON in $OUT (default bench/results).
#
# Environment: DURATION (seconds per run, default 10), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
OUT=${OUT:-bench/results}
CONC=64
KEYS=100000
VALUE=100
WORK=$(mktemp -d)
mkdir -p "$OUT"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# --- what it needs -----------------------------------------------------------
missing=()
for pkg in redis-server redis-tools etcd-server etcd-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  # Do not start the packaged services: this script runs its own on other ports.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
say "building meshkv (release)"
cargo build --release --locked -q
BIN=$PWD/target/release/meshkv

# The shared load shape; each run adds its own target, duration and mix.
bench() { "$BIN" bench --quiet --json --value-size $VALUE "$@"; }
SHAPE=(--concurrency $CONC --keyspace $KEYS)
# CPU ticks (user + system) used so far by the processes PIDS...; the servers'
# names (meshkv, redis-server, etcd) hold no spaces, so fields 14 and 15 are
# utime and stime.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
TICK=$(getconf CLK_TCK)
# core_us FILE TICKS_BEFORE TICKS_AFTER WRITES: core-microseconds per write.
core_us() {
  python3 -c 'import json,sys; t=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]); w=float(sys.argv[5]); json.dump({"cpu_seconds": t, "writes": w, "core_us_per_write": t*1e6/w}, open(sys.argv[1],"w"))' \
    "$1" "$2" "$3" "$TICK" "$4"
}
wait_for() { # DESCRIPTION COMMAND...
  local what=$1 deadline=$((SECONDS + 60)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { say "timed out waiting for $what"; exit 1; }
    sleep 0.2
  done
}

# --- meshkv: 3 nodes ------------------------------------------------------------
MK=(http://127.0.0.1:52051 http://127.0.0.1:52052 http://127.0.0.1:52053)
start_node() { # I
  local i=$1 peers=() j
  for j in 1 2 3; do [ "$j" = "$i" ] || peers+=(--peer "node$j=http://127.0.0.1:5205$j"); done
  "$BIN" serve --node-id "node$i" --listen "127.0.0.1:5205$i" --data-dir "$WORK/mk$i" \
    --fsync always "${peers[@]}" >"$WORK/mk$i.log" 2>&1 &
  MKPID[$i]=$!
  PIDS+=($!)
}
declare -A MKPID
for i in 1 2 3; do start_node $i; done
for i in 1 2 3; do wait_for "meshkv node$i" "$BIN" health --endpoint "${MK[$((i - 1))]}"; done
ALL=(--endpoint "${MK[0]}" --endpoint "${MK[1]}" --endpoint "${MK[2]}")

say "meshkv: writes at consistency ONE (3 endpoints)"
c0=$(cpu_ticks "${MKPID[@]}")
bench "${SHAPE[@]}" "${ALL[@]}" --duration "$DURATION" --lag-interval 0 >"$WORK/mk_write.json"
c1=$(cpu_ticks "${MKPID[@]}")
core_us "$WORK/mk_cpu.json" "$c0" "$c1" \
  "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["writes_per_sec"]*r["seconds"])' "$WORK/mk_write.json")"
say "meshkv: reads"
bench "${SHAPE[@]}" "${ALL[@]}" --duration "$DURATION" --read-ratio 1 >"$WORK/mk_read.json"
say "meshkv: writes vs. the health check on one node (transport overhead)"
bench "${SHAPE[@]}" --endpoint "${MK[0]}" --duration "$DURATION" >"$WORK/mk_write1.json"
bench "${SHAPE[@]}" --endpoint "${MK[0]}" --duration "$DURATION" --target health >"$WORK/mk_health1.json"
# Until every node reports no backlog to any peer: replication has caught up.
level() {
  local url
  for url in "${MK[@]}"; do
    # The peer rows follow the PEER header; column 6 is BACKLOG.
    "$BIN" status --endpoint "$url" | awk '$1 == "security:" { peers = 0 } peers && $6 != 0 { bad = 1 } $1 == "PEER" { peers = 1 } END { exit bad }' || return 1
  done
}
wait_level() { # SECONDS-ALLOWED
  local deadline=$((SECONDS + $1))
  until level; do
    [ $SECONDS -lt $deadline ] || { say "replication did not catch up within $1 s"; exit 1; }
    sleep 0.05
  done
}

say "meshkv: batched writes into one node (1000 keys per WriteBatch), until replicated to both peers"
t0=$(date +%s.%N)
bench --keyspace $KEYS --endpoint "${MK[0]}" --duration "$DURATION" --batch 1000 --concurrency 8 >"$WORK/mk_batch.json"
wait_level 300
t1=$(date +%s.%N)
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); keys=r["writes_per_sec"]*r["seconds"]; s=float(sys.argv[3])-float(sys.argv[2]); json.dump({"keys": keys, "seconds": s, "keys_per_sec": keys/s}, open(sys.argv[4],"w"))' \
  "$WORK/mk_batch.json" "$t0" "$t1" "$WORK/mk_batch_replicated.json"
half=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["writes_per_sec"] / 2)' "$WORK/mk_write.json")
say "meshkv: replication lag at half of the maximum write rate ($half writes/s)"
wait_level 300
bench "${SHAPE[@]}" "${ALL[@]}" --duration "$DURATION" --rate "$half" --lag-interval 5ms >"$WORK/mk_lag.json"

# Catch-up: node3 down while 200,000 writes flow, then the time until it is level.
backlog() { # of node3, as node1 sees it
  "$BIN" status --endpoint "${MK[0]}" | awk '$1 == "node3" { print $6 }'
}
say "meshkv: catch-up after node3 misses 200,000 writes"
kill "${MKPID[3]}"; wait "${MKPID[3]}" 2>/dev/null || true
bench --endpoint "${MK[0]}" --requests 200 --batch 1000 --concurrency 8 --keys sequential \
  --keyspace 200000 >"$WORK/mk_outage_load.json"
b=$(backlog)
start_node 3
t0=$(date +%s.%N)
deadline=$((SECONDS + 300))
until [ "$(backlog)" = 0 ]; do
  [ $SECONDS -lt $deadline ] || { say "node3 did not catch up"; exit 1; }
  sleep 0.05
done
t1=$(date +%s.%N)
python3 -c 'import json,sys; b,t0,t1=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); json.dump({"entries": b, "seconds": t1-t0, "entries_per_sec": b/(t1-t0)}, open(sys.argv[4],"w"))' \
  "$b" "$t0" "$t1" "$WORK/mk_catchup.json"

say "meshkv: memory after 1,000,000 keys of 100 bytes"
bench --endpoint "${MK[0]}" --requests 1000 --batch 1000 --concurrency 8 --keys sequential \
  --keyspace 1000000 >"$WORK/mk_million.json"
deadline=$((SECONDS + 300))
wait_level 300
# Memory at rest: a node hands what malloc holds free back to the OS after
# a quiet second (see DESIGN, "Bounds").
sleep 3
rss() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
printf '{"node1_kib": %s, "node2_kib": %s, "node3_kib": %s}\n' \
  "$(rss "${MKPID[1]}")" "$(rss "${MKPID[2]}")" "$(rss "${MKPID[3]}")" >"$WORK/mk_rss.json"
for i in 1 2 3; do kill "${MKPID[$i]}"; done

# --- Redis: primary + 2 replicas, AOF everysec -----------------------------------
say "redis: primary + 2 replicas"
REDIS_PIDS=()
for port in 6390 6391 6392; do
  mkdir -p "$WORK/redis$port"
  extra=()
  [ $port = 6390 ] || extra=(--replicaof 127.0.0.1 6390)
  redis-server --port $port --dir "$WORK/redis$port" --appendonly yes --appendfsync everysec \
    --save "" --daemonize no --protected-mode no --logfile "$WORK/redis$port.log" "${extra[@]}" &
  PIDS+=($!)
  REDIS_PIDS+=($!)
done
for port in 6390 6391 6392; do wait_for "redis $port" redis-cli -p $port ping; done
for port in 6391 6392; do
  wait_for "redis replica $port" sh -c "redis-cli -p $port info replication | grep -q master_link_status:up"
done
n=$((DURATION * 120000))
say "redis: SET then GET, $n requests each"
c0=$(cpu_ticks "${REDIS_PIDS[@]}")
redis-benchmark -p 6390 -t set -n $n -c $CONC -d $VALUE -r $KEYS --csv >"$WORK/redis_set.csv"
c1=$(cpu_ticks "${REDIS_PIDS[@]}")
core_us "$WORK/redis_cpu.json" "$c0" "$c1" "$n"
redis-benchmark -p 6390 -t get -n $n -c $CONC -d $VALUE -r $KEYS --csv >"$WORK/redis_get.csv"

# --- etcd: 3 members -------------------------------------------------------------
say "etcd: 3 members"
ETCD_PIDS=()
cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-token meshkv-bench --initial-cluster-state new \
    >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=($!)
  ETCD_PIDS+=($!)
done
ETCD=(--endpoint http://127.0.0.1:23791 --endpoint http://127.0.0.1:23792 --endpoint http://127.0.0.1:23793)
wait_for "etcd" env ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 endpoint health
say "etcd: puts, then serializable ranges"
c0=$(cpu_ticks "${ETCD_PIDS[@]}")
bench "${SHAPE[@]}" --target etcd "${ETCD[@]}" --duration "$DURATION" >"$WORK/etcd_put.json"
c1=$(cpu_ticks "${ETCD_PIDS[@]}")
core_us "$WORK/etcd_cpu.json" "$c0" "$c1" \
  "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["writes_per_sec"]*r["seconds"])' "$WORK/etcd_put.json")"
bench "${SHAPE[@]}" --target etcd "${ETCD[@]}" --duration "$DURATION" --read-ratio 1 >"$WORK/etcd_get.json"

# --- the table -------------------------------------------------------------------
python3 - "$WORK" "$OUT" "$DURATION" <<'PY'
import csv, json, os, platform, sys, time
work, out, duration = sys.argv[1], sys.argv[2], sys.argv[3]
j = lambda name: json.load(open(os.path.join(work, name)))
def redis(name):
    rows = list(csv.DictReader(open(os.path.join(work, name))))
    return {"rps": float(rows[0]["rps"]), "p99_ms": float(rows[0]["p99_latency_ms"])}

mk_w, mk_r = j("mk_write.json"), j("mk_read.json")
w1, h1, batch, lag = j("mk_write1.json"), j("mk_health1.json"), j("mk_batch.json"), j("mk_lag.json")
batch_rep = j("mk_batch_replicated.json")
catch, rss = j("mk_catchup.json"), j("mk_rss.json")
rs, rg = redis("redis_set.csv"), redis("redis_get.csv")
ep, eg = j("etcd_put.json"), j("etcd_get.json")
cpu = {"meshkv": j("mk_cpu.json"), "redis": j("redis_cpu.json"), "etcd": j("etcd_cpu.json")}
core = [cpu[k]["core_us_per_write"] for k in ("meshkv", "redis", "etcd")]

systems = [
    ("meshkv 3 nodes, fsync always", mk_w["writes_per_sec"], mk_r["reads_per_sec"], mk_w["latency_ms"]["p99"], mk_r["latency_ms"]["p99"]),
    ("Redis primary + 2 replicas, AOF everysec", rs["rps"], rg["rps"], rs["p99_ms"], rg["p99_ms"]),
    ("etcd 3 members", ep["writes_per_sec"], eg["reads_per_sec"], ep["latency_ms"]["p99"], eg["latency_ms"]["p99"]),
]
mk = systems[0]
lines = [f"100-byte values, {mk_w['concurrency']} concurrent clients, 100000 keys, {duration} s per run; "
         f"{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}", ""]
lines.append(f"{'system':<42} {'writes/s':>10} {'reads/s':>10} {'p99 write':>10} {'p99 read':>10} {'meshkv/x writes':>16} {'core-us/write':>14}")
for (name, w, r, pw, pr), c in zip(systems, core):
    lines.append(f"{name:<42} {w:>10.0f} {r:>10.0f} {pw:>8.2f}ms {pr:>8.2f}ms {mk[1] / w:>15.2f}x {c:>14.1f}")
checks = [
    ("writes >= 4x etcd", mk[1] / ep["writes_per_sec"], 4.0, ">="),
    ("writes >= 0.35x Redis", mk[1] / rs["rps"], 0.35, ">="),
    ("core-us per replicated write <= 3x Redis's", core[0] / core[1], 3.0, "<="),
    ("reads >= 0.6x Redis GET", mk[2] / rg["rps"], 0.6, ">="),
    ("write path >= 0.6x health check, same node", w1["requests_per_sec"] / h1["requests_per_sec"], 0.6, ">="),
    ("batched writes >= 200000 keys/s (into one node, acked)", batch["writes_per_sec"], 200000, ">="),
    ("batched writes >= 200000 keys/s (until both peers level)", batch_rep["keys_per_sec"], 200000, ">="),
    # No samples is no measurement: it must not pass.
    ("replication lag p99 < 10 ms at half load", lag["lag"]["p99_ms"] if lag["lag"]["samples"] else float("inf"), 10, "<"),
    ("catch-up >= 150000 entries/s", catch["entries_per_sec"], 150000, ">="),
    ("RSS < 150 MiB per node after 1M keys", max(rss.values()) / 1024, 150, "<"),
]
lines += ["", f"{'target':<58} {'measured':>12} {'goal':>10}  result"]
for name, got, goal, op in checks:
    ok = {">=": got >= goal, "<=": got <= goal, "<": got < goal}[op]
    lines.append(f"{name:<58} {got:>12.2f} {op + str(goal):>10}  {'met' if ok else 'NOT MET'}")
lines.append("")
lines.append(f"write path {w1['requests_per_sec']:.0f} req/s vs health check {h1['requests_per_sec']:.0f} req/s on node1; "
             f"batched {batch['writes_per_sec']:.0f} keys/s acked, {batch_rep['keys_per_sec']:.0f} keys/s until replicated; "
             f"lag ({lag['lag']['samples']} samples, {lag['lag']['missed']} missed) p50 {lag['lag']['p50_ms']:.2f} ms p99 {lag['lag']['p99_ms']:.2f} ms "
             f"max {lag['lag']['max_ms']:.2f} ms at {lag['requests_per_sec']:.0f} writes/s; catch-up {catch['entries']} entries in "
             f"{catch['seconds']:.1f} s; RSS KiB {rss}")
table = "\n".join(lines)
print(table)
stamp = time.strftime("%Y%m%dT%H%M%S")
result = {"table": table, "meshkv": {"write": mk_w, "read": mk_r, "write_node1": w1, "health_node1": h1,
          "batch": batch, "batch_replicated": batch_rep, "lag_half_load": lag, "catch_up": catch, "rss_kib": rss},
          "redis": {"set": rs, "get": rg}, "etcd": {"put": ep, "get": eg}, "cpu": cpu}
path = os.path.join(out, f"compare-{stamp}.json")
json.dump(result, open(path, "w"), indent=2)
print(f"\nsaved {path}")
PY
