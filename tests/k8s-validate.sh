#!/usr/bin/env bash
# Checks the Kubernetes manifests in deploy/k8s/:
#
#   1. renders the base and every overlay with deploy/k8s/render.py (the
#      subset of kustomize they use; there is no kubectl or kustomize here)
#      and validates every file of the base and each rendered overlay with
#      kubernetes-validate --strict (unknown fields fail) against
#      Kubernetes $K8S_VERSIONS;
#   2. checks what the schemas cannot: each StatefulSet's initial cluster
#      lists exactly its replicas, node N at kairos-(N-1) under the
#      headless Service's DNS name and the peer port; that Service is
#      headless and publishes not-ready pods; every Service, the
#      PodDisruptionBudget (maxUnavailable 1) and the StatefulSet select
#      the pods' labels; the probes are /readyz, /livez and a startup
#      probe; the Secrets and the ConfigMap the pods use exist with the
#      keys they read, and the config file parses as TOML;
#   3. checks that the checks can fail: an unknown field fails --strict,
#      the renderer refuses a key it does not support and a failing `test`.
#
# Usage: tests/k8s-validate.sh
# Environment: K8S_VERSIONS (default "1.31.0 1.37.0").
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=${K8S_VERSIONS:-"1.31.0 1.37.0"}
PIP_ROOT_USER_ACTION=ignore pip install -q --disable-pip-version-check -r tests/k8s-requirements.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

validate() {
  local version
  for version in $K8S_VERSIONS; do
    kubernetes-validate --strict --quiet -k "$version" "$@"
  done
}

echo "== schemas (Kubernetes $K8S_VERSIONS, strict)"
manifests=()
for file in deploy/k8s/base/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
validate "${manifests[@]}"
echo "deploy/k8s/base: ${#manifests[@]} files valid"
rendered=()
for dir in deploy/k8s/base deploy/k8s/overlays/*; do
  name=$(basename "$dir")
  python3 deploy/k8s/render.py "$dir" >"$tmp/$name.yaml"
  validate "$tmp/$name.yaml"
  rendered+=("$tmp/$name.yaml")
  echo "$dir rendered: $(grep -c '^kind:' "$tmp/$name.yaml") objects valid"
done

echo "== consistency"
python3 - "${rendered[@]}" <<'PY'
import re
import sys
import tomllib

import yaml

for path in sys.argv[1:]:
    objects = list(yaml.safe_load_all(open(path)))
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    problems = []

    def check(ok, what):
        if not ok:
            problems.append(what)

    (sts,) = [o for o in objects if o["kind"] == "StatefulSet"]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    selects = lambda selector: all(labels.get(k) == v for k, v in selector.items())
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    replicas, name, service = spec["replicas"], sts["metadata"]["name"], spec["serviceName"]

    check(spec["podManagementPolicy"] == "Parallel", "podManagementPolicy is not Parallel")
    check(selects(spec["selector"]["matchLabels"]), "the StatefulSet does not select its pods")
    members = env["KAIROS_INITIAL_CLUSTER"]["value"].split(",")
    check(len(members) == replicas, f"{len(members)} initial members for {replicas} replicas")
    for i, member in enumerate(members):
        want = f"{i + 1}={name}-{i}.{service}.$(POD_NAMESPACE).svc.cluster.local:{ports['peer']}"
        check(member == want, f"initial member {member!r}, expected {want!r}")
    check(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace",
          "POD_NAMESPACE is not the pod's namespace")
    check(list(env).index("POD_NAMESPACE") < list(env).index("KAIROS_INITIAL_CLUSTER"),
          "POD_NAMESPACE must come before the variable that expands it")

    peers = by.get(("Service", service))
    check(peers is not None, f"no Service {service}")
    if peers:
        check(peers["spec"].get("clusterIP") == "None", f"{service} is not headless")
        check(peers["spec"].get("publishNotReadyAddresses") is True, f"{service} hides not-ready pods")
    for o in objects:
        if o["kind"] == "Service":
            check(selects(o["spec"]["selector"]), f"Service {o['metadata']['name']} selects no pod")
            for p in o["spec"]["ports"]:
                check(p["targetPort"] in ports, f"Service {o['metadata']['name']}: no container port {p['targetPort']}")
        if o["kind"] == "PodDisruptionBudget":
            check(o["spec"].get("maxUnavailable") == 1, "PodDisruptionBudget maxUnavailable is not 1")
            check(selects(o["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects no pod")
    check(any(o["kind"] == "PodDisruptionBudget" for o in objects), "no PodDisruptionBudget")

    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")
    check(container["livenessProbe"]["httpGet"]["path"] == "/livez", "liveness is not /livez")
    startup = container["startupProbe"]
    check(startup["periodSeconds"] * startup["failureThreshold"] >= 300,
          "the startup probe allows less than 5 minutes")
    security = container["securityContext"]
    check(security["readOnlyRootFilesystem"] and security["runAsNonRoot"], "not read-only and non-root")
    check(pod["securityContext"]["runAsUser"] != 0, "runs as root")

    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = by.get(("Secret", ref["name"]))
            check(secret is not None and ref["key"] in secret.get("stringData", {}) | secret.get("data", {}),
                  f"{e['name']}: Secret {ref['name']} has no key {ref['key']}")
    for volume in pod["volumes"]:
        if "configMap" in volume:
            config = by.get(("ConfigMap", volume["configMap"]["name"]))
            check(config is not None, f"no ConfigMap {volume['configMap']['name']}")
            if config:
                settings = tomllib.loads(config["data"]["kairos.toml"])
                check(settings.get("node_id_from_hostname") is True, "node_id_from_hostname is not on")
                check("initial_cluster" not in settings, "initial_cluster belongs in the StatefulSet's env")
    arg = container["args"][container["args"].index("--config") + 1]
    check(any(arg.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]),
          f"--config {arg} is not on a mounted volume")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    check({"/var/lib/kairos", "/tmp"} <= mounts, "the data dir or /tmp is not a volume (read-only root)")

    if problems:
        sys.exit(f"{path}:\n  " + "\n  ".join(problems))
    print(f"{path.rsplit('/', 1)[-1]}: {replicas} replicas, {len(members)} initial members, consistent")
PY

echo "== the checks can fail"
cat >"$tmp/unknown-field.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: x
spec:
  clusterIp: None
YAML
if kubernetes-validate --strict --quiet -k 1.31.0 "$tmp/unknown-field.yaml" >/dev/null 2>&1; then
  echo "k8s-validate: --strict accepted an unknown field" >&2
  exit 1
fi
mkdir -p "$tmp/bad-key" "$tmp/bad-test"
printf 'resources: []\nnamePrefix: x-\n' >"$tmp/bad-key/kustomization.yaml"
if python3 deploy/k8s/render.py "$tmp/bad-key" >/dev/null 2>&1; then
  echo "k8s-validate: the renderer accepted namePrefix, which it does not implement" >&2
  exit 1
fi
cp deploy/k8s/overlays/five-nodes/initial-cluster.yaml "$tmp/bad-test/"
sed -i 's|env/1/name|env/0/name|' "$tmp/bad-test/initial-cluster.yaml"
sed "s|\.\./\.\./base|$PWD/deploy/k8s/base|" deploy/k8s/overlays/five-nodes/kustomization.yaml \
  >"$tmp/bad-test/kustomization.yaml"
if python3 deploy/k8s/render.py "$tmp/bad-test" >/dev/null 2>&1; then
  echo "k8s-validate: the renderer applied a patch whose test fails" >&2
  exit 1
fi
echo "k8s-validate: passed"
