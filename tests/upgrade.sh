#!/usr/bin/env bash
# The rolling upgrade test: builds the previous release (the git tag in
# KAIROS_UPGRADE_FROM, default v0.1.0) and this tree, then runs
# `kairos-chaos upgrade` (chaos/src/upgrade.rs): three nodes on the old
# build under the chaos suite's live workload are upgraded one at a time,
# the leader last, one is downgraded and upgraded again while the cluster
# version is the old one, the cluster version must then move to the new
# one, and every checker judges the whole history (0 violations or exit 1).
#
#   tests/upgrade.sh            # 120 s workload, release builds
#   tests/upgrade.sh --short    # 45 s workload (what .ci/run runs)
#   tests/upgrade.sh --debug    # debug builds (no release dependencies needed)
#
# The old release is exported with `git archive` into
# target/upgrade/src-<tag> and built into this tree's target directory, so
# the dependencies already compiled there for the same profile are reused
# and only the kairos crate is compiled again. KAIROS_CHAOS names a built
# kairos-chaos to use (else it is built). Its binary is copied to
# target/upgrade/kairos-<tag>; the new build is then made (again) by cargo,
# which leaves target/<profile>/kairos as this tree's. Output of the round:
# target/upgrade/out (report, history, timeline, node logs).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${KAIROS_UPGRADE_FROM:-v0.1.0}
duration=120s
profile=release
for arg in "$@"; do
  case "$arg" in
    --short) duration=45s ;;
    --debug) profile=debug ;;
    *) echo "usage: tests/upgrade.sh [--short] [--debug]" >&2; exit 2 ;;
  esac
done
profile_flag=()
[ "$profile" = release ] && profile_flag=(--release)

# The previous release by commit as well as by name: a clone that did not
# bring the tag along (tags are not always carried) still finds v0.1.0.
case "$tag" in
  v0.1.0) rev=3ad6105a3888aa5073ede39352ff08765ec10333 ;;
  *) rev=$tag ;;
esac
if ! git rev-parse -q --verify "$rev^{commit}" >/dev/null; then
  echo "tests/upgrade.sh: $tag (the previous release, $rev) is not in this clone;" \
    "fetch it (git fetch --tags; a shallow clone needs git fetch --unshallow --tags)" >&2
  exit 2
fi

target=$(pwd)/target
work=$target/upgrade
src=$work/src-$tag
old_bin=$work/kairos-$tag
commit=$(git rev-parse "$rev^{commit}")
mkdir -p "$work"
# Exported once per commit: a tree exported again would be compiled again.
if [ "$(cat "$src/.exported-commit" 2>/dev/null)" != "$commit" ]; then
  rm -rf "$src"
  mkdir -p "$src"
  git archive "$commit" | tar -x -C "$src"
  echo "$commit" > "$src/.exported-commit"
fi

started=$(date +%s)
echo "upgrade: building $tag ($profile) in $src"
(cd "$src" && CARGO_TARGET_DIR=$target cargo build "${profile_flag[@]}" --locked --bin kairos)
cp "$target/$profile/kairos" "$old_bin"
built_old=$(date +%s)
echo "upgrade: $tag built in $((built_old - started)) s"

cargo build "${profile_flag[@]}" --bin kairos
new_bin=$target/$profile/kairos
# The harness: KAIROS_CHAOS when given (.ci/run passes the one
# `cargo test --workspace` built), else built here.
chaos=${KAIROS_CHAOS:-}
if [ -z "$chaos" ]; then
  cargo build -p kairos-chaos
  chaos=$target/debug/kairos-chaos
fi
echo "upgrade: old $("$old_bin" --version), new $("$new_bin" --version)"

"$chaos" upgrade --old-bin "$old_bin" --new-bin "$new_bin" \
  --duration "$duration" --out "$work/out"
echo "upgrade: passed in $(($(date +%s) - started)) s"
