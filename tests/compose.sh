#!/usr/bin/env bash
# The Compose deployment end to end (deploy/compose/compose.yaml):
#
#   1. builds the image with deploy/image.sh under a name of its own;
#   2. writes an .env in a temporary directory (random cookie and root
#      token, free host ports) and brings the three nodes up under a unique
#      project name, then waits until Docker reports all three healthy
#      (their health check is `kairos probe .../readyz` inside the image);
#   3. checks that a container resolves its peers' service names (a
#      one-off container of the image probes kairos-1..3 by name on the
#      project's network) and that the root token from .env is the cluster's
#      root, bootstrapped once (one `Bootstrap` entry in the audit log);
#   4. creates jobs through the CLI on the published ports, waits for
#      succeeded runs, finds the leader (`kairos cluster status`) and
#      `docker kill`s its container;
#   5. checks that a new leader is elected and that runs continue: runs of
#      nominal times after the kill succeed, on the surviving nodes, with
#      one run per nominal time;
#   6. starts the killed container again and waits until it is healthy, a
#      member of `kairos cluster status` again and caught up (its applied
#      index reaches the leader's commit index as read after its restart),
#      and `kairos audit verify` (run from the image on the project's
#      network, where the members' advertised names resolve) passes on all
#      three; the logs show worker-network sessions between the nodes and
#      none refused as a connection to itself.
#
# Every wait has a deadline; `down -v` (containers, network, volumes) and
# the image's removal run on every exit (trap). Names and ports are unique,
# so it runs beside other tests. Skipped (exit 0, with a message) when no
# Docker daemon answers or no Compose is installed.
#
# Usage: tests/compose.sh
# Environment: KAIROS_BIN (default target/release/kairos), COMPOSE
# (default `docker-compose`, else `docker compose`).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${KAIROS_BIN:-target/release/kairos}
COMPOSE_FILE=deploy/compose/compose.yaml
[ -x "$BIN" ] || { echo "compose.sh: $BIN not found (cargo build --release --bin kairos)" >&2; exit 1; }
if ! docker info >/dev/null 2>&1; then
  echo "compose test: no Docker daemon answers; skipped"
  exit 0
fi
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose_cmd <<<"$COMPOSE"
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  echo "compose test: neither docker-compose nor docker compose is installed; skipped"
  exit 0
fi

started=$(date +%s)
project="kairos-ci-$(date +%s)-$$-$RANDOM"
tmp=$(mktemp -d)
image=""

compose() { "${compose_cmd[@]}" -f "$COMPOSE_FILE" --env-file "$tmp/.env" -p "$project" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ -f "$tmp/.env" ]; then
    echo "compose test: FAILED (exit $rc); the nodes' last log lines:" >&2
    compose logs --no-color --tail=60 >&2 || true
  fi
  if [ -f "$tmp/.env" ]; then
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || echo "compose.sh: down -v failed for $project" >&2
  fi
  if [ -n "$image" ]; then
    docker rmi "$image" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { echo "compose test: $*" >&2; exit 1; }

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every half second until it
# succeeds; fails naming WHAT after SECONDS.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    [ ! -s "$tmp/violation" ] || fail "$(cat "$tmp/violation")"
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.5
  done
}

echo "== image"
image=$(deploy/image.sh --binary "$BIN" --tag "$project" | tail -1)

echo "== up ($project)"
read -r p1 p2 p3 h1 h2 h3 < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
EOF
)
cookie=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
token=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
umask 077
cat >"$tmp/.env" <<EOF
KAIROS_IMAGE=$image
KAIROS_CLUSTER_COOKIE=$cookie
KAIROS_BOOTSTRAP_TOKEN=$token
KAIROS_1_GRPC_PORT=$p1
KAIROS_2_GRPC_PORT=$p2
KAIROS_3_GRPC_PORT=$p3
KAIROS_1_HTTP_PORT=$h1
KAIROS_2_HTTP_PORT=$h2
KAIROS_3_HTTP_PORT=$h3
EOF
compose up -d

container() { compose ps -q "kairos-$1"; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$1")")" = healthy ]; }
all_healthy() { healthy 1 && healthy 2 && healthy 3; }
wait_for 120 "all three nodes healthy" all_healthy
echo "all three healthy after $(($(date +%s) - started))s"

export KAIROS_ENDPOINTS="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
export KAIROS_TOKEN=$token
kairos() { "$BIN" "$@"; }

echo "== peer host names resolve inside the image"
network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$(container 1)")
for n in 1 2 3; do
  docker run --rm --network "$network" "$image" probe "http://kairos-$n:7201/readyz" \
    || fail "kairos-$n:7201 did not answer by name from inside the image"
done

echo "== the root token from .env is the cluster's root, bootstrapped once"
# The first leader bootstraps within a second of its election.
wait_for 30 "the root token to work" kairos acl whoami
kairos acl whoami | grep -qw root || fail "the token from .env is not root: $(kairos acl whoami)"

# bootstraps: how many Bootstrap calls the audit log records as applied (code 0).
bootstraps() {
  kairos audit list --method Bootstrap -o json | python3 -c '
import json, sys
entries = json.load(sys.stdin).get("entries", [])
print(sum(1 for e in entries if int(e.get("code", 0)) == 0))'
}
[ "$(bootstraps)" = 1 ] || fail "expected one Bootstrap audit entry, got $(bootstraps)"

echo "== jobs through the CLI"
kairos job create tick --type noop --owner ci --schedule '* * * * * *'
kairos job create tock --type sleep --owner ci --schedule '*/2 * * * * *' --payload '{"ms": 100}'

# succeeded_after JOB TIME [NOT_NODE]: how many runs of JOB with a nominal
# time after TIME (RFC 3339) succeeded. Two runs of one nominal time, or a
# run among them on node NOT_NODE, is a violation: written to
# $tmp/violation, which fails the next wait at once.
succeeded_after() {
  local runs count rc=0
  runs=$(kairos run list --job "$1" --after "$2" -o json) || return 1
  count=$(python3 -c '
import json, sys
runs = json.loads(sys.argv[1]).get("runs", [])
nominal = [r.get("nominalTime", r.get("nominal_time")) for r in runs]
if len(nominal) != len(set(nominal)):
    print("two runs of %s share a nominal time: %s" % (sys.argv[2], sorted(nominal)))
    sys.exit(2)
done = [r for r in runs if r.get("status") in ("RUN_STATUS_SUCCEEDED", "SUCCEEDED")]
on_dead = [r["id"] for r in done if sys.argv[3] and str(r.get("nodeId", r.get("node_id", ""))) == sys.argv[3]]
if on_dead:
    print("runs %s of %s after the kill ran on the killed node %s" % (on_dead, sys.argv[2], sys.argv[3]))
    sys.exit(2)
print(len(done))' "$runs" "$1" "${3:-}") || rc=$?
  if [ "$rc" -eq 2 ]; then
    echo "$count" >"$tmp/violation"
    return 1
  fi
  [ "$rc" -eq 0 ] && echo "$count"
}
at_least() { local want=$1; shift; [ "$("$@")" -ge "$want" ]; }
since_start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
wait_for 30 "3 succeeded runs of tick" at_least 3 succeeded_after tick "$since_start"

echo "== kill the leader"
# leader_id [NOT]: the leader's id as a node answers, when there is one (and it is not NOT).
leader_id() {
  kairos cluster status -o json | python3 -c '
import json, sys
status = json.load(sys.stdin)
leader = str(status.get("leaderId", status.get("leader_id", "0")))
if leader in ("0", sys.argv[1]):
    sys.exit(1)
print(leader)' "${1:-}"
}
leader=$(leader_id) || fail "no leader in: $(kairos cluster status)"
victim=$(container "$leader")
kill_time=$(date -u +%Y-%m-%dT%H:%M:%SZ)
docker kill "$victim" >/dev/null
echo "killed kairos-$leader (the leader) at $kill_time"

wait_for 30 "a new leader" leader_id "$leader"
echo "new leader: kairos-$(leader_id "$leader")"
# Nominal times from two seconds after the kill on: fired and run by the new leader.
after=$(python3 -c 'import datetime, sys; t = datetime.datetime.strptime(sys.argv[1], "%Y-%m-%dT%H:%M:%SZ"); print((t + datetime.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))' "$kill_time")
wait_for 45 "runs of tick after the kill to succeed" at_least 3 succeeded_after tick "$after" "$leader"
wait_for 45 "runs of tock after the kill to succeed" at_least 2 succeeded_after tock "$after" "$leader"
echo "runs continue: $(succeeded_after tick "$after" "$leader") of tick and $(succeeded_after tock "$after" "$leader") of tock after the kill"

echo "== the killed node comes back"
docker start "$victim" >/dev/null
wait_for 90 "kairos-$leader healthy again" healthy "$leader"
# caught_up ID INDEX: node ID is a voter in the status and has applied INDEX.
caught_up() {
  kairos cluster status -o json | python3 -c '
import json, sys
node, index = sys.argv[1], int(sys.argv[2])
for n in json.load(sys.stdin).get("nodes", []):
    if str(n.get("id")) == node:
        role = str(n.get("role", ""))
        applied = int(n.get("appliedIndex", n.get("applied_index", 0)))
        voter = n.get("voter", False)
        sys.exit(0 if voter and "UNREACHABLE" not in role and applied >= index else 1)
sys.exit(1)' "$1" "$2"
}
commit=$(kairos cluster status -o json | python3 -c '
import json, sys
status = json.load(sys.stdin)
leader = str(status.get("leaderId", status.get("leader_id")))
print(max(int(n.get("commitIndex", n.get("commit_index", 0))) for n in status["nodes"] if str(n.get("id")) == leader))')
wait_for 60 "kairos-$leader to apply index $commit" caught_up "$leader" "$commit"
kairos cluster status
# audit verify asks every member at its advertised client address
# (kairos-N:7101), which resolves on the project's network only: run the
# CLI there, from the image.
in_network() {
  docker run --rm --network "$network" -e KAIROS_TOKEN \
    -e KAIROS_ENDPOINTS=kairos-1:7101,kairos-2:7101,kairos-3:7101 "$image" "$@"
}
in_network audit verify >/dev/null || fail "kairos audit verify failed: $(in_network audit verify 2>&1)"
[ "$(bootstraps)" = 1 ] || fail "the restart bootstrapped again: $(bootstraps) Bootstrap entries"

# Nodes that all listen on 0.0.0.0:7301 name themselves by their advertised
# host in the worker network; under one name they took each other for
# themselves and every session was dropped.
compose logs --no-color >"$tmp/logs" 2>&1
if grep -q "Cannot establish a connection to self" "$tmp/logs"; then
  fail "the worker network took a peer for this node (ractor_cluster self-connection)"
fi
grep -q "worker network: dialed peer" "$tmp/logs" || fail "no node logged a worker-network session to a peer"

echo "compose test: passed in $(($(date +%s) - started))s"
