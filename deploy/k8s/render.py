#!/usr/bin/env python3
"""Renders a kustomization the way `kubectl kustomize` does, for exactly the
kustomize features deploy/k8s/ uses, and refuses every other one.

There is no kubectl or kustomize binary where CI runs (and no Python package
that renders kustomizations), so tests/k8s-validate.sh renders the base and
the overlays with this script and validates what it prints. With kubectl,
`kubectl kustomize DIR` (or `kubectl apply -k DIR`) is the real thing and
gives the same objects.

Supported in kustomization.yaml:
  apiVersion, kind      (kustomize.config.k8s.io/v1beta1, Kustomization)
  resources             files (one or more YAML documents) and directories
                        holding a kustomization.yaml, rendered first, in order
  replicas              [{name, count}]: spec.replicas of the Deployment,
                        StatefulSet, ReplicaSet or ReplicationController of
                        that name (one must match)
  patches               [{path | patch, target: {group, version, kind, name}}]
                        JSON 6902 patches (a YAML list of operations: add,
                        remove, replace, test); at least one object must match
Any other key, a strategic-merge patch or an unknown operation is an error
naming it, so a manifest change this script cannot render fails loudly
instead of rendering something kustomize would not.

Usage: deploy/k8s/render.py DIR   (prints the objects as YAML documents)
"""

import copy
import os
import sys

import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "replicas", "patches"}
SCALABLE_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


class RenderError(Exception):
    """A kustomization this renderer cannot (or kustomize would not) render."""


def render(directory):
    """The objects the kustomization in `directory` stands for, in order."""
    path = os.path.join(directory, KUSTOMIZATION)
    if not os.path.isfile(path):
        raise RenderError(f"{directory}: no {KUSTOMIZATION}")
    with open(path) as f:
        kustomization = yaml.safe_load(f) or {}
    unsupported = sorted(set(kustomization) - SUPPORTED_KEYS)
    if unsupported:
        raise RenderError(f"{path}: not supported by this renderer: {', '.join(unsupported)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind is {kustomization.get('kind')!r}, not Kustomization")

    objects = []
    for resource in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(target):
            objects.extend(render(target))
        elif os.path.isfile(target):
            with open(target) as f:
                objects.extend(doc for doc in yaml.safe_load_all(f) if doc is not None)
        else:
            raise RenderError(f"{path}: resource {resource!r} not found")

    for entry in kustomization.get("replicas", []):
        name, count = entry.get("name"), entry.get("count")
        if not isinstance(count, int) or count < 0:
            raise RenderError(f"{path}: replicas of {name!r}: count {count!r} is not a whole number")
        matched = [o for o in objects if o.get("kind") in SCALABLE_KINDS and o["metadata"]["name"] == name]
        if not matched:
            raise RenderError(f"{path}: replicas: no workload named {name!r}")
        for obj in matched:
            obj.setdefault("spec", {})["replicas"] = count

    for entry in kustomization.get("patches", []):
        operations = patch_operations(directory, path, entry)
        target = entry.get("target") or {}
        matched = [o for o in objects if matches(o, target)]
        if not matched:
            raise RenderError(f"{path}: patch {entry.get('path', '(inline)')}: no object matches {target}")
        for obj in matched:
            try:
                apply_json6902(obj, operations)
            except RenderError as e:
                raise RenderError(f"{path}: patch {entry.get('path', '(inline)')}: {e}") from None
    return objects


def patch_operations(directory, path, entry):
    """The JSON 6902 operations of a `patches` entry (from `path` or inline `patch`)."""
    if "path" in entry:
        with open(os.path.join(directory, entry["path"])) as f:
            operations = yaml.safe_load(f)
    elif "patch" in entry:
        operations = yaml.safe_load(entry["patch"])
    else:
        raise RenderError(f"{path}: a patch needs `path` or `patch`")
    if not isinstance(operations, list):
        raise RenderError(
            f"{path}: patch {entry.get('path', '(inline)')}: only JSON 6902 patches (a list of "
            "operations) are supported by this renderer, not strategic-merge patches"
        )
    return operations


def matches(obj, target):
    """Whether `obj` is what a patch's `target` selects."""
    api_version = obj.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    checks = {
        "group": group,
        "version": version,
        "kind": obj.get("kind"),
        "name": obj.get("metadata", {}).get("name"),
    }
    unsupported = sorted(set(target) - set(checks))
    if unsupported:
        raise RenderError(f"patch target keys not supported by this renderer: {', '.join(unsupported)}")
    return all(checks[key] == value for key, value in target.items())


def pointer(path):
    """The tokens of a JSON pointer (RFC 6901)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"{path!r} is not a JSON pointer")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def parent_of(doc, tokens, path):
    """The container holding the last token of `tokens`, and that token (an int for a list)."""
    node = doc
    for token in tokens[:-1]:
        node = child(node, token, path)
    last = tokens[-1]
    if isinstance(node, list):
        if last == "-":
            return node, len(node)
        if not last.isdigit():
            raise RenderError(f"{path}: {last!r} is not a list index")
        return node, int(last)
    if not isinstance(node, dict):
        raise RenderError(f"{path}: does not point into an object or a list")
    return node, last


def child(node, token, path):
    """One step down a JSON pointer."""
    if isinstance(node, list):
        if not token.isdigit() or int(token) >= len(node):
            raise RenderError(f"{path}: no list item {token!r}")
        return node[int(token)]
    if isinstance(node, dict) and token in node:
        return node[token]
    raise RenderError(f"{path}: no member {token!r}")


def apply_json6902(doc, operations):
    """Applies JSON 6902 `operations` (add, remove, replace, test) to `doc` in place."""
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        tokens = pointer(path)
        if not tokens:
            raise RenderError(f"{op} of the whole document is not supported")
        if op == "test":
            node = doc
            for token in tokens:
                node = child(node, token, path)
            if node != operation.get("value"):
                raise RenderError(f"test {path}: found {node!r}, expected {operation.get('value')!r}")
            continue
        container, key = parent_of(doc, tokens, path)
        value = copy.deepcopy(operation.get("value"))
        if op == "add":
            if isinstance(container, list):
                if key > len(container):
                    raise RenderError(f"add {path}: index out of range")
                container.insert(key, value)
            else:
                container[key] = value
        elif op in ("remove", "replace"):
            present = key < len(container) if isinstance(container, list) else key in container
            if not present:
                raise RenderError(f"{op} {path}: nothing there")
            if op == "remove":
                del container[key]
            else:
                container[key] = value
        else:
            raise RenderError(f"operation {op!r} is not supported by this renderer")


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objects = render(argv[1])
    except RenderError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
