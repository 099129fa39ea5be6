#!/usr/bin/env bash
# Kairos and etcd side by side, in one run, with the same client harness
# (`kairos-bench create`; `--etcd` turns its writes into etcd puts of the same
# value size).
#
#   benches/etcd-compare.sh [seconds per measurement, default 10] [payload bytes, default 256]
#
# Installs etcd from Debian (etcd-server) if missing, starts a 3-member etcd
# on 127.0.0.1 (free ports, data in a temp dir), measures 1 and 64 clients
# against it, then 1 and 64 clients against a 3-node Kairos cluster the tool
# starts itself, and prints throughput and p50/p99 of both with the ratios
# Kairos/etcd. Everything it starts, it stops (trap on exit).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
PAYLOAD="${2:-256}"

if ! command -v etcd >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
fi

DIR="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

CLUSTER=""
CLIENTS=()
declare -A PEER CLIENT
for i in 1 2 3; do
  PEER[$i]=$(free_port); CLIENT[$i]=$(free_port)
  CLUSTER+="${CLUSTER:+,}etcd$i=http://127.0.0.1:${PEER[$i]}"
  CLIENTS+=("127.0.0.1:${CLIENT[$i]}")
done
for i in 1 2 3; do
  etcd --name "etcd$i" --data-dir "$DIR/etcd$i" \
    --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token kairos-compare \
    >"$DIR/etcd$i.log" 2>&1 &
  PIDS+=($!)
done
ETCD_ENDPOINTS="$(IFS=,; echo "${CLIENTS[*]}")"
# Wait (bounded) until the etcd cluster has a leader.
for _ in $(seq 1 100); do
  if curl -fsS "http://${CLIENTS[0]}/health" 2>/dev/null | grep -q '"health":"true"'; then break; fi
  sleep 0.2
done
curl -fsS "http://${CLIENTS[0]}/health" | grep -q '"health":"true"' || { echo "etcd did not become healthy"; tail "$DIR"/etcd1.log; exit 1; }

cargo bench --bench kairos-bench --no-run >/dev/null 2>&1
run() { cargo bench -q --bench kairos-bench -- create --duration "${SECONDS_PER_RUN}s" --payload "$PAYLOAD" "$@" 2>/dev/null | sed -n 1p; }

RESULTS="$DIR/results.jsonl"
for clients in 1 64; do
  # etcd's leader is where writes end up; every client talks to all members round-robin.
  run --clients "$clients" --etcd "$ETCD_ENDPOINTS" >>"$RESULTS"
  run --clients "$clients" >>"$RESULTS"
done

echo "payload ${PAYLOAD} B, ${SECONDS_PER_RUN} s per measurement, $(date -u +%Y-%m-%d)"
echo "| clients | etcd /s | kairos /s | ratio | etcd p50 | kairos p50 | ratio | etcd p99 | kairos p99 | ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -rs '
  group_by(.clients)[] |
  (map(select(.target=="etcd"))[0]) as $e | (map(select(.target=="kairos"))[0]) as $k |
  "| \($k.clients) | \($e.throughput_per_s|floor) | \($k.throughput_per_s|floor) | \(($k.throughput_per_s/$e.throughput_per_s*100|floor)/100) | \($e.p50_ms*100|floor/100) ms | \($k.p50_ms*100|floor/100) ms | \(($k.p50_ms/$e.p50_ms*100|floor)/100) | \($e.p99_ms*100|floor/100) ms | \($k.p99_ms*100|floor/100) ms | \(($k.p99_ms/$e.p99_ms*100|floor)/100) |"
' "$RESULTS"
