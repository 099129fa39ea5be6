#!/usr/bin/env bash
# Rebuilds the vendored crates in third_party/ from their crates.io copies plus
# the local changes kept in third_party/patches/<crate>/, and checks that the
# checked-in trees are exactly that result (third_party/README.md says why each
# change exists and how to make a new one).
#
# Usage (CRATE defaults to every vendored crate):
#   third_party/rebuild.sh [CRATE...]             rebuild third_party/<crate> in place
#   third_party/rebuild.sh --out DIR [CRATE...]   rebuild into DIR/<crate>
#   third_party/rebuild.sh --check [CRATE...]     rebuild into a temporary directory and
#                                                 `diff -r` it against third_party/<crate>;
#                                                 print the difference and exit 1 if any
#   third_party/rebuild.sh --diff CRATE PATH...   the registry copy's PATHs against the
#                                                 checked-in ones, as a patch body
#   third_party/rebuild.sh --refresh [CRATE...]   rewrite each patch's body from the
#                                                 checked-in tree, keeping its header
#
# A crate is rebuilt in four steps, each deterministic:
#   1. its .crate file from cargo's download cache, checked against the sha256
#      pinned in PINS below;
#   2. unpacked, and the paths listed in patches/<crate>/removed.txt deleted;
#   3. patches/<crate>/*.patch applied in name order (`patch -p1`, no fuzz);
#   4. the files under patches/<crate>/added/ copied in.
#
# Where the registry copy comes from: cargo keeps every .crate it downloads in
# $CARGO_HOME/registry/cache/<registry>/. The workspace takes these crates
# through `[patch.crates-io]` path dependencies, so building the workspace
# never downloads them. When a .crate is not in the cache, this script asks
# cargo for it: `cargo fetch` on a throwaway manifest that depends on the exact
# version (so cargo's own registry, proxy and credential settings apply), with
# the workspace's Cargo.lock copied in so that the crate's dependencies resolve
# to versions the cache already holds. With both .crate files cached, the
# script runs offline.
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) stops the script too

# crate, version, sha256 of the published .crate (the checksums Cargo.lock
# recorded for these versions before they were vendored).
PINS='
openraft 0.9.25 a97014fb78acb77be3a40ac2da305f6dd3a6b243f3a908ace87d29b3972eaafd
sled 0.34.7 7f96b4737c2ce5987354855aed3797279def4ebf734436c6aa4552cf8e169935
'

THIRD_PARTY=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$THIRD_PARTY")
PATCHES=$THIRD_PARTY/patches
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
command -v patch >/dev/null 2>&1 || {
  echo "rebuild.sh: needs patch(1) (Debian: apt-get install patch)" >&2
  exit 2
}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

die() {
  echo "rebuild.sh: $*" >&2
  exit 2
}

# The n-th field (2: version, 3: sha256) of a crate's pin.
pin() {
  local field
  field=$(awk -v c="$1" -v n="$2" '$1 == c { print $n }' <<<"$PINS")
  [ -n "$field" ] || die "no pin for crate '$1' (known: $(awk 'NF { printf "%s ", $1 }' <<<"$PINS"))"
  echo "$field"
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# The cached .crate of a pinned crate whose checksum matches, or nothing.
cached_crate() {
  local name=$1 version sum file
  version=$(pin "$name" 2)
  sum=$(pin "$name" 3)
  for file in "$CARGO_HOME"/registry/cache/*/"$name-$version.crate"; do
    if [ -f "$file" ] && [ "$(sha256 "$file")" = "$sum" ]; then
      echo "$file"
      return
    fi
  done
}

# Has cargo download a pinned crate into its cache (see the header).
fetch_crate() {
  local name=$1 version dir host
  version=$(pin "$name" 2)
  dir=$WORK/fetch-$name
  mkdir -p "$dir/src"
  : >"$dir/src/lib.rs"
  cat >"$dir/Cargo.toml" <<EOF
[package]
name = "kairos-vendor-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$name = "=$version"

[workspace]
EOF
  cp "$REPO/Cargo.lock" "$dir/"
  host=$(rustc -vV | sed -n 's/^host: //p')
  echo "rebuild.sh: $name $version is not in $CARGO_HOME/registry/cache; asking cargo to fetch it" >&2
  (cd "$dir" && cargo fetch --target "$host") >&2 ||
    die "cargo could not fetch $name $version (offline and not cached?)"
}

# The verified registry copy (.crate file) of a pinned crate.
registry_copy() {
  local name=$1 file
  file=$(cached_crate "$name")
  if [ -z "$file" ]; then
    fetch_crate "$name"
    file=$(cached_crate "$name")
  fi
  [ -n "$file" ] ||
    die "no $name-$(pin "$name" 2).crate with sha256 $(pin "$name" 3) in $CARGO_HOME/registry/cache"
  echo "$file"
}

# Unpacks the registry copy of a crate, unchanged, into a fresh directory and
# prints its path.
unpack() {
  local name=$1 file dest
  file=$(registry_copy "$name")
  dest=$WORK/pristine-$name
  rm -rf "$dest"
  mkdir -p "$dest"
  tar -xzf "$file" -C "$dest" --no-same-owner
  echo "$dest/$name-$(pin "$name" 2)"
}

# Rebuilds a crate into OUT/<crate> (OUT/<crate> must not exist).
rebuild_into() {
  local name=$1 out=$2 src dest path patch
  src=$(unpack "$name")
  dest=$out/$name
  mkdir -p "$out"
  [ ! -e "$dest" ] || die "$dest already exists"
  cp -R "$src" "$dest"
  if [ -f "$PATCHES/$name/removed.txt" ]; then
    grep -v -e '^#' -e '^[[:space:]]*$' "$PATCHES/$name/removed.txt" | while read -r path; do
      [ -e "$dest/$path" ] || die "$name: removed.txt lists '$path', which the registry copy lacks"
      rm -r "${dest:?}/$path"
    done
  fi
  for patch in "$PATCHES/$name"/*.patch; do
    [ -f "$patch" ] || continue
    patch -d "$dest" -p1 --fuzz=0 --forward --batch --no-backup-if-mismatch -E --quiet <"$patch" ||
      die "$name: $(basename "$patch") does not apply to the registry copy"
  done
  if [ -d "$PATCHES/$name/added" ]; then
    cp -R "$PATCHES/$name/added/." "$dest/"
  fi
}

# Prints the registry copy -> checked-in difference of the given paths of a
# crate as a patch body (a/ and b/ prefixes, no timestamps). A path absent on
# one side is diffed against /dev/null (a file the patch creates or deletes).
diff_paths() {
  local name=$1 pristine path old new
  shift
  pristine=$(unpack "$name")
  for path in "$@"; do
    old=$pristine/$path
    new=$THIRD_PARTY/$name/$path
    [ -f "$old" ] || old=/dev/null
    [ -f "$new" ] || new=/dev/null
    [ "$old$new" != /dev/null/dev/null ] || die "$name: '$path' is in neither tree"
    diff -u --label "a/$path" --label "b/$path" "$old" "$new" || [ $? -eq 1 ]
  done
}

# Rewrites each patch of a crate from the checked-in tree: the header (every
# line before the first `--- a/`) is kept, the body re-diffed for the files the
# patch names. Each file must belong to one patch only.
refresh() {
  local name=$1 patch path files seen=" "
  for patch in "$PATCHES/$name"/*.patch; do
    [ -f "$patch" ] || continue
    files=$(sed -n 's|^+++ b/||p' "$patch")
    [ -n "$files" ] || die "$(basename "$patch") names no file (+++ b/PATH)"
    for path in $files; do
      case $seen in *" $path "*) die "$name: $path is in two patches; merge them by hand" ;; esac
      seen="$seen$path "
    done
    # shellcheck disable=SC2086 # one path per word
    {
      sed '/^--- a\//,$d' "$patch"
      diff_paths "$name" $files
    } >"$WORK/refreshed.patch"
    mv "$WORK/refreshed.patch" "$patch"
  done
}

mode=in-place
out=
case ${1:-} in
  --check) mode=check; shift ;;
  --out) [ $# -ge 2 ] || die "--out needs a directory"; mode=out; out=$2; shift 2 ;;
  --diff) [ $# -ge 3 ] || die "--diff needs a crate and paths"; shift; diff_paths "$@"; exit 0 ;;
  --refresh) mode=refresh; shift ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $1 (see --help)" ;;
esac
if [ $# -eq 0 ]; then
  read -r -a crates <<<"$(awk 'NF { printf "%s ", $1 }' <<<"$PINS")"
else
  crates=("$@")
fi

status=0
for name in "${crates[@]}"; do
  pin "$name" 2 >/dev/null
  case $mode in
    in-place)
      rebuild_into "$name" "$WORK/out"
      rm -rf "${THIRD_PARTY:?}/$name"
      mv "$WORK/out/$name" "$THIRD_PARTY/$name"
      echo "third_party/$name rebuilt from $name $(pin "$name" 2) and patches/$name"
      ;;
    out)
      rebuild_into "$name" "$out"
      echo "$out/$name rebuilt from $name $(pin "$name" 2) and patches/$name"
      ;;
    check)
      rebuild_into "$name" "$WORK/out"
      ln -s "$WORK/out/$name" "$WORK/rebuilt"
      ln -s "$THIRD_PARTY/$name" "$WORK/checked-in"
      if (cd "$WORK" && diff -ru rebuilt checked-in); then
        echo "third_party/$name: equal to $name $(pin "$name" 2) plus patches/$name"
      else
        echo "third_party/$name differs from $name $(pin "$name" 2) plus patches/$name (above:" \
          "rebuilt -> checked-in); put the change in a patch, see third_party/README.md" >&2
        status=1
      fi
      rm "$WORK/rebuilt" "$WORK/checked-in"
      ;;
    refresh)
      refresh "$name"
      echo "patches/$name/*.patch rewritten from third_party/$name"
      ;;
  esac
done
exit $status
