#!/usr/bin/env bash
# Checks the monitoring files in deploy/ against promtool and a live
# cluster:
#
#   1. `promtool check rules` and `promtool test rules` on
#      deploy/prometheus/kairos-alerts.yml (its unit tests:
#      kairos-alerts.test.yml), `promtool check config` on the example
#      deploy/prometheus/prometheus.yml;
#   2. deploy/grafana/kairos-dashboard.json parses and is the model it
#      claims (schemaVersion >= 36, a `datasource` variable of Prometheus
#      data sources, an `instance` variable, every panel's query set);
#   3. starts a 3-node cluster (`kairos agent` processes on free loopback
#      ports in a temporary directory), bootstraps its ACL over REST,
#      creates through the CLI a job firing every second, one that fails
#      every second and a sink to a closed port (so sink and failure
#      families have samples), waits until attempts of both ended, then
#      runs `promtool check metrics` on the /metrics of every node;
#   4. compares every metric name the dashboard's and the rules'
#      expressions use with the names the nodes export (samples and
#      `# TYPE` families, over all three nodes): a renamed metric shows
#      here. Missing names are reported; they fail the run only with
#      --strict-names.
#
# The nodes are stopped on every exit (trap), and the directory removed
# unless the run failed (its path and the nodes' logs are printed then).
# promtool comes from Debian's `prometheus` package, installed when missing.
#
# Usage: tests/promtool.sh [--strict-names]
# Environment: KAIROS_BIN (default target/debug/kairos).
set -euo pipefail
cd "$(dirname "$0")/.."

strict_names=""
for arg in "$@"; do
  case "$arg" in
    --strict-names) strict_names=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "promtool.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

BIN=${KAIROS_BIN:-target/debug/kairos}
RULES=deploy/prometheus/kairos-alerts.yml
RULE_TESTS=deploy/prometheus/kairos-alerts.test.yml
PROMETHEUS_CONFIG=deploy/prometheus/prometheus.yml
DASHBOARD=deploy/grafana/kairos-dashboard.json
[ -x "$BIN" ] || { echo "promtool.sh: $BIN not found (cargo build --bin kairos)" >&2; exit 1; }
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== promtool: rules, rule tests, example config"
promtool check rules "$RULES"
promtool test rules "$RULE_TESTS"
promtool check config "$PROMETHEUS_CONFIG"

echo "== dashboard model"
python3 - "$DASHBOARD" <<'EOF'
import json, sys
path = sys.argv[1]
with open(path) as f:
    dashboard = json.load(f)
problems = []
if dashboard.get("schemaVersion", 0) < 36:
    problems.append(f"schemaVersion {dashboard.get('schemaVersion')} < 36")
variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
source = variables.get("datasource", {})
if source.get("type") != "datasource" or source.get("query") != "prometheus":
    problems.append("no `datasource` variable of Prometheus data sources")
if "instance" not in variables:
    problems.append("no `instance` variable")
queries = 0
for panel in dashboard.get("panels", []):
    if panel.get("type") == "row":
        continue
    targets = panel.get("targets", [])
    if not targets or not all(t.get("expr") for t in targets):
        problems.append(f"panel {panel.get('title')!r} has a target without a query")
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"panel {panel.get('title')!r} does not use $datasource")
    queries += len(targets)
if problems:
    sys.exit(f"{path}: " + "; ".join(problems))
print(f"{path}: {len(dashboard['panels'])} panels, {queries} queries")
EOF

dir=$(mktemp -d)
pids=()
status=1
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -eq 0 ]; then
    rm -rf "$dir"
  else
    echo "promtool.sh: failed; node logs and data kept in $dir" >&2
    for log in "$dir"/node-*.log; do
      [ -f "$log" ] || continue
      echo "--- $log" >&2
      tail -n 20 "$log" >&2
    done
  fi
}
trap cleanup EXIT

# Free loopback ports, held together while chosen so they differ: four
# per node (gRPC, peer, HTTP, worker network) and one nothing listens on
# (the failing job's and the sink's target).
ports=$(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(13)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
read -r -a port <<<"$ports"
closed_port=${port[12]}
grpc=() peer=() http=() cluster=()
for i in 0 1 2; do
  grpc+=("127.0.0.1:${port[i * 4]}")
  peer+=("127.0.0.1:${port[i * 4 + 1]}")
  http+=("127.0.0.1:${port[i * 4 + 2]}")
  cluster+=("127.0.0.1:${port[i * 4 + 3]}")
done
initial_cluster="1=${peer[0]},2=${peer[1]},3=${peer[2]}"
cookie="promtool-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

echo "== a 3-node cluster on ${http[*]}"
for i in 0 1 2; do
  KAIROS_CLUSTER_COOKIE="$cookie" RUST_LOG=info,openraft=warn \
    "$BIN" agent --node-id=$((i + 1)) --data-dir="$dir/node-$((i + 1))" \
    --grpc-addr="${grpc[i]}" --peer-addr="${peer[i]}" \
    --http-addr="${http[i]}" --cluster-addr="${cluster[i]}" \
    --initial-cluster="$initial_cluster" --http-allow=loopback \
    >"$dir/node-$((i + 1)).log" 2>&1 &
  pids+=($!)
done

for i in 0 1 2; do
  ready=""
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null "http://${http[i]}/readyz" 2>/dev/null; then ready=1; break; fi
    kill -0 "${pids[i]}" 2>/dev/null || { echo "promtool.sh: node $((i + 1)) exited" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$ready" ] || { echo "promtool.sh: node $((i + 1)) was not ready in 60 s" >&2; exit 1; }
done

token=$(curl -fsS -X POST "http://${http[0]}/v1/acl:bootstrap" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
endpoints=$(IFS=,; echo "${grpc[*]}")
kairos() { KAIROS_TOKEN="$token" "$BIN" --endpoints="$endpoints" "$@"; }

kairos job create promtool-tick --type noop --every 1s >/dev/null
kairos job create promtool-failing --type http --every 1s --max-attempts 1 \
  --payload "{\"url\":\"http://127.0.0.1:$closed_port/\"}" >/dev/null
kairos sink create promtool-sink --url "http://127.0.0.1:$closed_port/" >/dev/null

# Until both jobs have had an attempt end, on whichever nodes ran them (a
# failed attempt's outcome is its kind of failure, e.g. `connect`).
scrape_all() {
  for i in 0 1 2; do curl -fsS "http://${http[i]}/metrics"; done
}
ran=""
for _ in $(seq 300); do
  all=$(scrape_all)
  if grep -q '^kairos_attempts_total{.*outcome="succeeded"' <<<"$all" &&
    grep '^kairos_attempts_total{' <<<"$all" | grep -vq 'outcome="succeeded"'; then
    ran=1
    break
  fi
  sleep 0.2
done
[ -n "$ran" ] || { echo "promtool.sh: no succeeded and no failed attempt within 60 s" >&2; exit 1; }

echo "== promtool check metrics, every node"
for i in 0 1 2; do
  curl -fsS "http://${http[i]}/metrics" >"$dir/metrics-$((i + 1)).txt"
  if ! promtool check metrics <"$dir/metrics-$((i + 1)).txt"; then
    echo "promtool.sh: node $((i + 1))'s /metrics (${http[i]}) fails promtool check metrics" >&2
    exit 1
  fi
  echo "node $((i + 1)): $(grep -c '^[a-z]' "$dir/metrics-$((i + 1)).txt") samples, clean"
done

echo "== metric names the dashboard and the rules use"
set +e
python3 - "$DASHBOARD" "$RULES" "$dir"/metrics-*.txt <<'EOF'
import json, re, sys
dashboard_path, rules_path, *scrapes = sys.argv[1:]
# Names in expressions: Kairos's own and the standard process_* ones
# (`up` is Prometheus's).
NAME = re.compile(r"\b((?:kairos|process)_[a-zA-Z0-9_]+)\b")
used = {}
with open(dashboard_path) as f:
    dashboard = json.load(f)
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        for name in NAME.findall(target.get("expr", "")):
            used.setdefault(name, set()).add(f"dashboard panel {panel['title']!r}")
expr = re.compile(r"^\s*expr:\s*(.*)$")
alert = re.compile(r"^\s*- alert:\s*(\S+)")
current = None
with open(rules_path) as f:
    for line in f:
        if m := alert.match(line):
            current = m.group(1)
        if m := expr.match(line):
            for name in NAME.findall(m.group(1)):
                used.setdefault(name, set()).add(f"alert {current}")
# What the nodes export: sample names, and every family a # TYPE line
# declares with the sample names its type gives (a labelled family may
# have no sample yet on a node).
SUFFIXES = {
    "counter": ["_total", ""],
    "histogram": ["_bucket", "_sum", "_count"],
    "summary": ["_sum", "_count", ""],
    "gauge": [""],
    "unknown": [""],
    "info": ["_info"],
}
exported = set()
for path in scrapes:
    with open(path) as f:
        for line in f:
            if line.startswith("# TYPE "):
                _, _, family, kind = line.split()[:4]
                base = family[: -len("_total")] if kind == "counter" and family.endswith("_total") else family
                exported.update(base + s for s in SUFFIXES.get(kind, [""]))
            elif line and not line.startswith("#"):
                exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
missing = sorted(set(used) - exported)
print(f"{len(used)} names used, {len(used) - len(missing)} exported by the nodes")
for name in missing:
    print(f"  not exported: {name} (in {', '.join(sorted(used[name]))})")
sys.exit(3 if missing else 0)
EOF
names=$?
set -e
case "$names" in
  0) ;;
  3)
    if [ -n "$strict_names" ]; then
      echo "promtool.sh: the dashboard or the rules use metric names the nodes do not export" >&2
      exit 1
    fi
    echo "promtool.sh: names above not exported (reported only; --strict-names makes this fatal)"
    ;;
  *) echo "promtool.sh: the metric name check failed to run" >&2; exit 1 ;;
esac

status=0
echo "promtool.sh: ok"
