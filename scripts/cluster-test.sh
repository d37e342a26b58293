#!/usr/bin/env bash
# Fault-injection suite against the docker-compose cluster: replication, a
# network partition, a crash, a rolling restart and a wiped volume. Writes
# and reads go through the real grpcurl. Each scenario prints what it checked
# and its numbers. Containers, networks and volumes are removed on any exit.
#
# It runs twice: against the plain cluster (docker-compose.yml) and against
# the TLS cluster (plus docker-compose.tls.yml: TLS, mutually authenticated
# peers, tokens), where it also checks that plain text and a missing token
# are refused. CLUSTER_VARIANT=plain or =tls runs one of them.
#
# Needs: docker with compose (v2 plugin or docker-compose v1), python3 with
# pip (for grpcurl, installed if missing), and the meshkv:latest image
# (scripts/image.sh builds it offline).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/grpcurl.sh
. scripts/grpcurl.sh

if [ -z "${CLUSTER_VARIANT:-}" ]; then
  CLUSTER_VARIANT=plain "$0"
  CLUSTER_VARIANT=tls "$0"
  exit 0
fi
VARIANT=$CLUSTER_VARIANT
PROJECT=${PROJECT:-meshkvtest}
if docker compose version >/dev/null 2>&1; then
  DC=(docker compose -p "$PROJECT")
else
  DC=(docker-compose -p "$PROJECT")
fi
case $VARIANT in
  plain) DC+=(-f docker-compose.yml) ;;
  tls) DC+=(-f docker-compose.yml -f docker-compose.tls.yml) ;;
  *) echo "CLUSTER_VARIANT is plain or tls, not $VARIANT" >&2; exit 2 ;;
esac
# With TLS: the cluster's CA and a token, read from the cluster once it is up.
TOKEN=
EXEC_ENV=()
WORK=$(mktemp -d)
declare -A PORT=([node1]=50051 [node2]=50052 [node3]=50053)
NODES=(node1 node2 node3)

cleanup() {
  local rc=$?
  touch "$WORK/stop"
  wait 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "--- FAILED (exit $rc); last node logs:"
    "${DC[@]}" logs --tail 30 2>/dev/null || true
  fi
  "${DC[@]}" --profile demo down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT INT TERM

say() { printf '[%s] %s: %s\n' "$(date +%T)" "$VARIANT" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
cid() { "${DC[@]}" ps -q "$1"; }
gc() {
  if [ "$VARIANT" = tls ]; then
    grpcurl -cacert "$WORK/ca.pem" -H "authorization: Bearer $TOKEN" -max-time 5 "$@"
  else
    grpcurl -plaintext -max-time 5 "$@"
  fi
}

# write PORT KEY VALUE: succeeds only if the node acknowledged the write.
write() {
  gc -d "{\"key\":\"$2\",\"value\":\"$(printf %s "$3" | base64 -w0)\"}" \
    "127.0.0.1:$1" meshkv.v1.KV/Write >/dev/null 2>&1
}

# read PORT KEY: prints the value, or nothing if not found.
read_key() {
  gc -d "{\"key\":\"$2\"}" "127.0.0.1:$1" meshkv.v1.KV/Read 2>/dev/null | python3 -c '
import sys, json, base64
d = json.load(sys.stdin)
print(base64.b64decode(d.get("value", "")).decode() if d.get("found") else "")'
}

# status PORT: "fingerprint total-backlog" from Admin/ClusterStatus.
status() {
  gc "127.0.0.1:$1" meshkv.v1.Admin/ClusterStatus 2>/dev/null | python3 -c '
import sys, json
d = json.load(sys.stdin)
print(d.get("fingerprint", "0"), sum(int(p.get("backlogEntries", 0)) for p in d.get("peers", [])))'
}

# dump PORT FILE: every key and its version, one "key hlc node tombstone" per line, sorted.
dump() {
  gc "127.0.0.1:$1" meshkv.v1.Admin/Dump | python3 -c '
import sys, json
text, dec, i, rows = sys.stdin.read(), json.JSONDecoder(), 0, []
while True:
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    m, i = dec.raw_decode(text, i)
    v = m.get("version", {})
    rows.append("%s %s %s %d" % (m["key"], v.get("hlc", "0"), v.get("nodeId", ""), "value" not in m))
print("\n".join(sorted(rows)))' >"$2"
}

wait_healthy() {
  local deadline=$((SECONDS + 120)) n
  for n in "$@"; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$n")" 2>/dev/null)" = healthy ]; do
      [ $SECONDS -lt $deadline ] || fail "$n not healthy after 120 s"
      sleep 0.5
    done
  done
}

# converge: waits until all nodes share a fingerprint with no backlog, then
# compares full dumps. Sets CONVERGE_SECS.
converge() {
  local start=$SECONDS deadline=$((SECONDS + 180)) a b c
  while :; do
    a=$(status 50051 || true); b=$(status 50052 || true); c=$(status 50053 || true)
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "${a#* }" = 0 ]; then
      break
    fi
    [ $SECONDS -lt $deadline ] || fail "no convergence after 180 s: [$a] [$b] [$c]"
    sleep 0.5
  done
  CONVERGE_SECS=$((SECONDS - start))
  for n in "${NODES[@]}"; do dump "${PORT[$n]}" "$WORK/$n.dump"; done
  cmp -s "$WORK/node1.dump" "$WORK/node2.dump" || fail "node1 and node2 dumps differ"
  cmp -s "$WORK/node1.dump" "$WORK/node3.dump" || fail "node1 and node3 dumps differ"
}

# found FILE-OF-KEYS: how many of those keys hold a live value in node1's last dump.
found() {
  python3 - "$1" "$WORK/node1.dump" <<'PY'
import sys
keys = set(open(sys.argv[1]).read().split())
live = {l.split()[0] for l in open(sys.argv[2]) if l.strip() and l.split()[3] == "0"}
print(len(keys & live))
PY
}

# writer PORT PREFIX: writes PREFIX-1, PREFIX-2, ... until $WORK/stop exists.
# Acknowledged keys go to $WORK/PREFIX.ok, failures are counted in $WORK/PREFIX.err.
writer() {
  local i=0
  : >"$WORK/$2.ok"; : >"$WORK/$2.err"
  while [ ! -e "$WORK/stop" ]; do
    i=$((i + 1))
    if write "$1" "$2-$i" "value $i"; then echo "$2-$i" >>"$WORK/$2.ok"; else echo "$2-$i" >>"$WORK/$2.err"; fi
  done
}

start_writers() { rm -f "$WORK/stop"; for spec in "$@"; do writer ${spec%%:*} ${spec#*:} & done; }
stop_writers() { touch "$WORK/stop"; wait; }
count() { cat "$@" 2>/dev/null | wc -l; }

check_acked() { # SCENARIO KEYFILES...
  local name=$1; shift
  cat "$@" >"$WORK/$name.acked"
  local acked found_n
  acked=$(count "$WORK/$name.acked"); found_n=$(found "$WORK/$name.acked")
  [ "$acked" -gt 0 ] || fail "$name: no write was acknowledged"
  [ "$found_n" = "$acked" ] || fail "$name: $acked writes acknowledged, only $found_n found"
  say "$name: OK: $acked writes acknowledged, $found_n found on all 3 nodes, converged in ${CONVERGE_SECS}s"
}

# ---------------------------------------------------------------------------
say "starting the cluster"
"${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
"${DC[@]}" up -d --no-build
wait_healthy "${NODES[@]}"
"${DC[@]}" ps
NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid node3)")

if [ "$VARIANT" = tls ]; then
  docker exec "$(cid node1)" cat /certs/ca.pem >"$WORK/ca.pem"
  TOKEN=$(docker exec "$(cid node1)" cat /certs/tokens.toml | python3 -c '
import sys, tomllib
print(next(t["token"] for t in tomllib.loads(sys.stdin.read())["tokens"] if t["role"] == "admin"))')
  EXEC_ENV=(-e "MESHKV_TOKEN=$TOKEN")
  # 0. Only TLS with a token gets in; the peers replicate over mTLS.
  if grpcurl -plaintext -max-time 5 127.0.0.1:50051 list >/dev/null 2>&1; then
    fail "security: a plain-text client got an answer from a TLS node"
  fi
  out=$(grpcurl -cacert "$WORK/ca.pem" -max-time 5 -d '{"key":"k"}' 127.0.0.1:50051 meshkv.v1.KV/Read 2>&1 || true)
  grep -q "Unauthenticated" <<<"$out" || fail "security: a read without a token was not refused: $out"
  say "security: OK: plain text refused, a request without a token is Unauthenticated"
  # A node holds its own key and no other: not the CA's, not a peer's.
  for f in ca.key node2.key node3.key; do
    if docker exec "$(cid node1)" test -e "/certs/$f"; then
      fail "security: node1's container can read /certs/$f"
    fi
  done
  docker exec "$(cid node1)" test -r /certs/node1.key || fail "security: node1 lacks its own key"
  say "security: OK: node1 holds its own key only"
fi

# 1. A write to node1 is readable on node2 and node3.
start=$SECONDS
write 50051 hello "from node1" || fail "write to node1"
for n in node2 node3; do
  deadline=$((SECONDS + 30))
  until [ "$(read_key "${PORT[$n]}" hello)" = "from node1" ]; do
    [ $SECONDS -lt $deadline ] || fail "hello not visible on $n"
    sleep 0.2
  done
done
say "replicate: OK: a write to node1 was read back from node2 and node3 within $((SECONDS - start))s"

# 2. Partition: node3 is cut off; both sides keep taking writes, then converge.
docker network disconnect "$NET" "$(cid node3)"
start_writers 50051:part-n1 50052:part-n2
( i=0; : >"$WORK/part-n3.ok"
  while [ ! -e "$WORK/stop" ]; do
    i=$((i + 1))
    docker exec "${EXEC_ENV[@]}" "$(cid node3)" meshkv put "part-n3-$i" "value $i" >/dev/null 2>&1 && echo "part-n3-$i" >>"$WORK/part-n3.ok"
  done ) &
sleep 10
stop_writers
for side in part-n1 part-n2 part-n3; do
  [ "$(count "$WORK/$side.ok")" -gt 0 ] || fail "partition: no write succeeded on ${side#part-}"
done
say "partition: writes during the cut: node1 $(count "$WORK/part-n1.ok"), node2 $(count "$WORK/part-n2.ok"), node3 (isolated) $(count "$WORK/part-n3.ok")"
docker network connect --alias node3 "$NET" "$(cid node3)"
converge
check_acked partition "$WORK"/part-n1.ok "$WORK"/part-n2.ok "$WORK"/part-n3.ok

# 3. Crash: kill -9 node2 mid-load, restart it; nothing acknowledged is lost.
start_writers 50051:crash-n1 50052:crash-n2 50053:crash-n3
sleep 4
docker kill -s KILL "$(cid node2)" >/dev/null
sleep 3
docker start "$(cid node2)" >/dev/null
wait_healthy node2
sleep 3
stop_writers
converge
say "crash: $(count "$WORK/crash-n2.err") writes to node2 failed while it was down (expected)"
check_acked crash "$WORK"/crash-n1.ok "$WORK"/crash-n2.ok "$WORK"/crash-n3.ok

# 4. Rolling restart under load: writes to the live nodes keep succeeding.
for n in "${NODES[@]}"; do
  others=()
  for o in "${NODES[@]}"; do [ "$o" = "$n" ] || others+=("${PORT[$o]}:roll-$n-to-$o"); done
  start_writers "${others[@]}"
  sleep 2
  clean_before=$(docker logs "$(cid "$n")" 2>&1 | grep -c "stopped cleanly" || true)
  t0=$(date +%s.%N)
  # The compose files' stop_grace_period (15 s): past it Docker would SIGKILL.
  docker restart -t 15 "$(cid "$n")" >/dev/null
  stop_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
  wait_healthy "$n"
  logs=$(docker logs "$(cid "$n")" 2>&1)
  clean_after=$(grep -c "stopped cleanly" <<<"$logs" || true)
  [ "$clean_after" -gt "$clean_before" ] || fail "rolling restart: $n did not log a clean stop"
  if grep -q "did not drain" <<<"$logs"; then fail "rolling restart: $n's connections did not drain"; fi
  sleep 2
  stop_writers
  for o in "${NODES[@]}"; do
    [ "$o" = "$n" ] && continue
    errs=$(count "$WORK/roll-$n-to-$o.err")
    [ "$errs" = 0 ] || fail "rolling restart: $errs writes to live $o failed while $n restarted"
  done
  say "rolling restart: $n stopped cleanly and restarted in ${stop_s}s; $(cat "$WORK"/roll-"$n"-to-*.ok | wc -l) writes to the other two, none failed"
done
converge
check_acked rolling "$WORK"/roll-*.ok

# 5. Fresh volume: node3 loses its data and rebuilds from its peers.
"${DC[@]}" stop node3 >/dev/null 2>&1
"${DC[@]}" rm -f node3 >/dev/null 2>&1
docker volume rm "${PROJECT}_node3-data" >/dev/null
"${DC[@]}" up -d --no-build node3 2>/dev/null
start=$SECONDS
wait_healthy node3
healthy_after=$((SECONDS - start))
converge
keys=$(grep -c . "$WORK/node3.dump")
check_acked fresh-volume "$WORK"/part-*.ok "$WORK"/crash-*.ok "$WORK"/roll-*.ok
say "fresh volume: node3 rebuilt $keys keys from its peers; healthy ${healthy_after}s after start"

say "all cluster scenarios passed"
