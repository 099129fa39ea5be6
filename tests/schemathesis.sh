#!/usr/bin/env bash
# Fuzzes the REST API of one real node with schemathesis, against the
# node's own /openapi.json: every answer must be no server error (5xx) and
# must validate against the document's schema for its status code.
#
# Starts `kairos agent` alone (a one-node cluster) on free loopback ports
# in a temporary directory, bootstraps its ACL over REST (POST
# /v1/acl:bootstrap) and gives schemathesis the root token. The node is
# stopped on every exit (trap), and the directory removed unless the run
# failed (its path and the node's log are printed then).
#
# Left out of the fuzzing, each for a reason a fuzzer cannot respect:
#   - the Server-Sent Events streams (`:watch`), which never end;
#   - AddNode and RemoveNode, which would change the one-node cluster's
#     membership under the run;
#   - RevokeToken, which revokes the run's own token once the fuzzer has
#     read its accessor id from ListTokens (every call after is 401);
#   - CreateSink, whose body names a URL the node then sends events to:
#     no fuzzer picks where this machine sends traffic.
# The node runs with `--http-allow=loopback`, so an `http` job a fuzzer
# manages to create cannot call anything but this machine either.
#
# Environment: KAIROS_BIN (default target/debug/kairos), EXAMPLES (per
# operation, default 20), TIME_LIMIT (seconds for the whole fuzzing,
# default 170), SEED (schemathesis's, default random).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${KAIROS_BIN:-target/debug/kairos}
EXAMPLES=${EXAMPLES:-20}
TIME_LIMIT=${TIME_LIMIT:-170}
[ -x "$BIN" ] || { echo "schemathesis.sh: $BIN not found (cargo build --bin kairos)" >&2; exit 1; }
if ! command -v schemathesis >/dev/null 2>&1; then
  pip install -q -r tests/schemathesis-requirements.txt
fi

dir=$(mktemp -d)
pid=""
status=1
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$status" -eq 0 ]; then
    rm -rf "$dir"
  else
    echo "schemathesis.sh: failed; node log and data kept in $dir" >&2
    tail -n 40 "$dir/agent.log" >&2 2>/dev/null || true
  fi
}
trap cleanup EXIT

# Four free loopback ports, held together while chosen so they differ.
read -r grpc peer http cluster < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)

KAIROS_CLUSTER_COOKIE="schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(16))')" \
  "$BIN" agent --node-id=1 --data-dir="$dir/node" \
  --grpc-addr="127.0.0.1:$grpc" --peer-addr="127.0.0.1:$peer" \
  --http-addr="127.0.0.1:$http" --cluster-addr="127.0.0.1:$cluster" \
  --initial-cluster="1=127.0.0.1:$peer" --http-allow=loopback \
  >"$dir/agent.log" 2>&1 &
pid=$!

base="http://127.0.0.1:$http"
ready=""
for _ in $(seq 600); do
  if curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || { echo "schemathesis.sh: the node exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "schemathesis.sh: the node was not ready in 60 s" >&2; exit 1; }

token=$(curl -fsS -X POST "$base/v1/acl:bootstrap" | python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')

args=(
  run "$base/openapi.json"
  --checks not_a_server_error,response_schema_conformance
  --phases examples,coverage,fuzzing
  --max-examples "$EXAMPLES"
  --header "Authorization: Bearer $token"
  --exclude-path-regex ':watch$'
  --exclude-operation-id ClusterService.AddNode
  --exclude-operation-id ClusterService.RemoveNode
  --exclude-operation-id EventService.CreateSink
  --exclude-operation-id AclService.RevokeToken
  --request-timeout 20
  --workers 1
  --no-color
)
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
started=$(date +%s)
set +e
# From the temporary directory: schemathesis keeps a cache in its working
# directory (.schemathesis/), which belongs to no checkout.
(cd "$dir" && timeout --signal=INT "$TIME_LIMIT" schemathesis "${args[@]}")
status=$?
set -e
echo "schemathesis.sh: exit $status after $(( $(date +%s) - started )) s (max $EXAMPLES examples per operation)"
if [ "$status" -eq 124 ]; then
  echo "schemathesis.sh: the run did not finish within ${TIME_LIMIT} s" >&2
fi
exit "$status"
