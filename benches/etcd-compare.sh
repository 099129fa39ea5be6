#!/usr/bin/env bash
# Kairos and etcd side by side: writes per second and write latency with 1
# and 64 clients, each system driven to its Raft leader by its own client, in
# one run on this machine.
#
#   etcd:   benches/etcd-load (Go, etcd's own client clientv3 from Debian's
#           golang-etcd-server-dev, built here offline); it connects to the
#           leader, found with the Status API, and puts values of the given
#           size to distinct keys.
#   Kairos: `kairos-bench create` (Rust, tonic); it starts a 3-node cluster of
#           release binaries and sends its creates (a job with a payload of
#           the given size) to the leader.
#
# Both sides use the same connections: one client on one connection; 64
# clients on 64 connections (as 64 separate processes would); 64 clients
# sharing one connection (as one process shares a clientv3 client or a tonic
# channel; each system did 1.1-1.95 x the writes per second that way here).
#
#   benches/etcd-compare.sh [seconds per measurement, default 10] [payload bytes, default 256]
#
# Each measurement runs on a fresh 3-member cluster on 127.0.0.1 (free
# ports), etcd with Debian's etcd-server and its default settings (fsync on,
# 100-ms heartbeat); the data directories of both systems are under one
# temporary directory (same disk). Both tools send sequential writes per
# client for the duration and report acknowledged writes per second and
# p50/p99 with the same rule. Prints a markdown table with the ratios
# Kairos/etcd. Everything it starts, it stops (trap on exit).
#
# Needs etcd-server, golang-go and golang-etcd-server-dev (Debian; installed
# with apt-get when missing and running as root), jq, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
PAYLOAD="${2:-256}"
# clients:connections of each measurement.
SHAPES=(1:1 64:64 64:1)

if ! command -v etcd >/dev/null || ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "needs: apt-get install etcd-server golang-go golang-etcd-server-dev" >&2
    exit 1
  fi
  apt-get update -qq && apt-get install -y -qq etcd-server golang-go golang-etcd-server-dev >/dev/null
fi

# The Go load tool, built offline against the Debian sources.
TOOL_DIR=target/etcd-load
mkdir -p "$TOOL_DIR/gopath"
GO111MODULE=off GOPATH="$PWD/$TOOL_DIR/gopath:/usr/share/gocode" \
  go build -o "$TOOL_DIR/etcd-load" ./benches/etcd-load
cargo bench -q --bench kairos-bench --no-run

DIR="$(mktemp -d)"
ETCD_PIDS=()
ETCD_DATA=""
# Stops the etcd cluster and removes its data (each WAL preallocates 64 MB).
stop_etcd() {
  for pid in "${ETCD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${ETCD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  ETCD_PIDS=()
  if [ -n "$ETCD_DATA" ]; then rm -rf "$ETCD_DATA"; fi
}
cleanup() {
  stop_etcd
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts a new 3-member etcd cluster with its data in $DIR/$1 and sets
# ETCD_ENDPOINTS (host:port,...) once it has a leader.
start_etcd() {
  local data="$DIR/$1" cluster="" endpoints=() i pid
  local -A peer_port client_port
  ETCD_DATA="$data"
  mkdir -p "$data"
  for i in 1 2 3; do
    peer_port[$i]=$(free_port); client_port[$i]=$(free_port)
    cluster+="${cluster:+,}etcd$i=http://127.0.0.1:${peer_port[$i]}"
    endpoints+=("127.0.0.1:${client_port[$i]}")
  done
  for i in 1 2 3; do
    etcd --name "etcd$i" --data-dir "$data/etcd$i" \
      --listen-peer-urls "http://127.0.0.1:${peer_port[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer_port[$i]}" \
      --listen-client-urls "http://127.0.0.1:${client_port[$i]}" --advertise-client-urls "http://127.0.0.1:${client_port[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token kairos-compare \
      >"$data/etcd$i.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  ETCD_ENDPOINTS="$(IFS=,; echo "${endpoints[*]}")"
  # Wait (bounded) until the cluster has a leader: /health is true only then.
  for _ in $(seq 1 100); do
    if curl -fsS "http://${endpoints[0]}/health" 2>/dev/null | grep -q '"health":"true"'; then return; fi
    for pid in "${ETCD_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
    sleep 0.2
  done
  echo "etcd did not become healthy" >&2; tail -n 5 "$data"/etcd*.log >&2; exit 1
}

# Runs one load tool ("$@"), appends its JSON line tagged with
# $CONNECTIONS to $RESULTS, and shows its stderr if it fails. (`sed -n 1p`,
# not `head -1`: see regenerate.sh.)
measure() {
  if ! "$@" 2>"$DIR/tool.log" | sed -n 1p | jq -c --argjson c "$CONNECTIONS" '. + {connections: $c}' >>"$RESULTS"; then
    echo "failed: $*" >&2; tail -20 "$DIR/tool.log" >&2; exit 1
  fi
}

RESULTS="$DIR/results.jsonl"
mkdir -p "$DIR/kairos"
for shape in "${SHAPES[@]}"; do
  clients="${shape%:*}" CONNECTIONS="${shape#*:}"
  start_etcd "etcd-$clients-$CONNECTIONS"
  measure "$TOOL_DIR/etcd-load" -endpoints "$ETCD_ENDPOINTS" -clients "$clients" -conns "$CONNECTIONS" \
    -payload "$PAYLOAD" -duration "${SECONDS_PER_RUN}s"
  stop_etcd
  # kairos-bench keeps its cluster's data in a temporary directory: put it beside etcd's.
  TMPDIR="$DIR/kairos" measure cargo bench -q --bench kairos-bench -- create --clients "$clients" \
    --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --payload "$PAYLOAD"
done

echo "payload ${PAYLOAD} B, ${SECONDS_PER_RUN} s per measurement, $(date -u +%Y-%m-%d); etcd $(etcd --version | sed -n 's/^etcd Version: //p') driven by clientv3, Kairos by \`kairos-bench create\`, both to the leader"
echo
echo "| clients | connections | etcd /s | kairos /s | ratio | etcd p50 | kairos p50 | ratio | etcd p99 | kairos p99 | ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
jq -rs '
  group_by([.clients, -.connections])[] |
  (map(select(.target=="etcd"))[0]) as $e | (map(select(.target=="kairos"))[0]) as $k |
  "| \($k.clients) | \($k.connections) | \($e.throughput_per_s|floor) | \($k.throughput_per_s|floor) | \(($k.throughput_per_s/$e.throughput_per_s*100|floor)/100) | \($e.p50_ms*100|floor/100) ms | \($k.p50_ms*100|floor/100) ms | \(($k.p50_ms/$e.p50_ms*100|floor)/100) | \($e.p99_ms*100|floor/100) ms | \($k.p99_ms*100|floor/100) ms | \(($k.p99_ms/$e.p99_ms*100|floor)/100) |"
' "$RESULTS"
jq -rs '[.[] | select(.errors > 0) | "\(.target) \(.clients) clients on \(.connections) connections: \(.errors) failed writes"] | if length > 0 then "\n" + join("; ") else empty end' "$RESULTS"
