#!/usr/bin/env bash
# The monitoring profile against the docker-compose cluster: Prometheus
# scrapes all three nodes, and with one node paused the peer-disconnected
# alert fires within its `for` duration plus a scrape interval, then clears
# once the node resumes. The rule's `for` and the scrape interval are
# shortened for the test (10 s and 2 s) by mounting edited copies of
# deploy/prometheus/*.yml over the image's.
#
# Needs: docker with compose, python3, and the meshkv:latest image
# (scripts/image.sh); the Prometheus image is built from deploy/prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${PROJECT:-meshkvmon}
if docker compose version >/dev/null 2>&1; then
  DC=(docker compose -p "$PROJECT")
else
  DC=(docker-compose -p "$PROJECT")
fi
WORK=$(mktemp -d)
chmod 755 "$WORK"
FOR_S=10
SCRAPE_S=2
PROM=http://127.0.0.1:9091

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- FAILED (exit $rc); last logs:"
    "${DC[@]}" -f docker-compose.yml -f "$WORK/override.yml" --profile monitoring logs --tail 20 2>/dev/null || true
  fi
  "${DC[@]}" -f docker-compose.yml -f "$WORK/override.yml" --profile monitoring down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT INT TERM

say() { printf '[%s] monitoring: %s\n' "$(date +%T)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

# The shipped files, with the test's shorter intervals.
sed -e "s/scrape_interval: 15s/scrape_interval: ${SCRAPE_S}s/" \
    -e "s/evaluation_interval: 15s/evaluation_interval: ${SCRAPE_S}s/" \
    deploy/prometheus/prometheus.yml > "$WORK/prometheus.yml"
python3 - "$FOR_S" deploy/prometheus/alerts.yml > "$WORK/alerts.yml" <<'EOF'
import sys
seconds, path = sys.argv[1], sys.argv[2]
out, in_rule = [], False
for line in open(path):
    if line.strip().startswith("- alert:"):
        in_rule = line.strip() == "- alert: MeshkvPeerDisconnected"
    if in_rule and line.strip().startswith("for:"):
        line = line[: line.index("for:")] + f"for: {seconds}s\n"
    out.append(line)
sys.stdout.write("".join(out))
EOF
grep -q "for: ${FOR_S}s" "$WORK/alerts.yml" || fail "could not shorten the rule's for"
cat > "$WORK/override.yml" <<EOF
services:
  prometheus:
    volumes:
      - $WORK/prometheus.yml:/etc/prometheus/prometheus.yml:ro
      - $WORK/alerts.yml:/etc/prometheus/alerts.yml:ro
EOF
DCM=("${DC[@]}" -f docker-compose.yml -f "$WORK/override.yml" --profile monitoring)

say "building the Prometheus image and starting the cluster with it"
DOCKER_BUILDKIT=0 "${DCM[@]}" build --quiet prometheus >/dev/null
"${DCM[@]}" up -d --no-build node1 node2 node3 prometheus >/dev/null

# prom PATH PYTHON-EXPR: the expression over the API's JSON answer `d`.
prom() {
  python3 - "$PROM$1" "$2" <<'EOF'
import json, sys, urllib.request
try:
    d = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["data"]
except Exception:
    print("")
    sys.exit(0)
print(eval(sys.argv[2]))
EOF
}
targets_up() { prom /api/v1/targets 'sum(t["health"] == "up" for t in d["activeTargets"])'; }
alert_state() {
  prom /api/v1/alerts "next((a['state'] for a in d['alerts'] if a['labels']['alertname'] == 'MeshkvPeerDisconnected' and a['labels'].get('peer') == '$1'), 'none')"
}
node3_disconnected() {
  prom "/api/v1/query?query=meshkv_peer_connected%7Bpeer%3D%22node3%22%7D" \
    'sum(1 for r in d["result"] if r["value"][1] == "0")'
}

for _ in $(seq 120); do
  [ "$(targets_up)" = "3" ] && break
  sleep 1
done
[ "$(targets_up)" = "3" ] || fail "Prometheus does not report all three targets up: $(targets_up)"
say "Prometheus reports all 3 targets up"
[ "$(alert_state node3)" = "none" ] || fail "the alert fires before anything happened"

say "pausing node3"
"${DCM[@]}" pause node3 >/dev/null
# The peers notice within their keepalive timeout (about 10 s); the alert's
# clock starts when a scrape first shows the link down.
for _ in $(seq 60); do
  [ "$(node3_disconnected)" -ge 1 ] 2>/dev/null && break
  sleep 1
done
[ "$(node3_disconnected)" -ge 1 ] 2>/dev/null || fail "no node reports node3 disconnected"
seen=$(date +%s)
say "a scrape shows node3 disconnected; waiting for the alert"
budget=$((FOR_S + 2 * SCRAPE_S + 2))
while [ "$(alert_state node3)" != "firing" ]; do
  [ $(($(date +%s) - seen)) -le $budget ] || fail "MeshkvPeerDisconnected not firing within ${budget}s (state $(alert_state node3))"
  sleep 0.5
done
say "MeshkvPeerDisconnected fires $(($(date +%s) - seen))s after the first scrape that showed it (for ${FOR_S}s, scrape ${SCRAPE_S}s)"

"${DCM[@]}" unpause node3 >/dev/null
for _ in $(seq 90); do
  [ "$(alert_state node3)" = "none" ] && break
  sleep 1
done
[ "$(alert_state node3)" = "none" ] || fail "the alert did not clear after node3 resumed"
say "the alert cleared after node3 resumed"
say "PASS"
