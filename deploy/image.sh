#!/usr/bin/env bash
# Builds the Kairos container image from a locally built `kairos` binary,
# pulling nothing (there is no base image): the root filesystem is the
# binary, the shared libraries and the loader `ldd` resolves for it (each at
# its own path), a minimal /etc (passwd and group with the non-root user
# `kairos`, uid/gid 10001; nsswitch.conf with `hosts: files dns`), /tmp and
# the data directory /var/lib/kairos owned by that user. The archive is
# written by Python's tarfile (every owner and mode set explicitly, so no
# root or chown is needed) and handed to `docker import` with the image's
# configuration as --change instructions.
#
# Host names resolve inside the image: glibc 2.34 and later has the `files`
# and `dns` name services inside libc itself, so getaddrinfo reads
# /etc/hosts and /etc/resolv.conf (which Docker and Kubernetes provide)
# with nothing loaded at run time. tests/compose.sh checks it.
#
# Usage: deploy/image.sh [--binary PATH] [--tag NAME:TAG] [--latest]
#   --binary PATH   the binary (default target/release/kairos;
#                   build it with `cargo build --release --bin kairos`)
#   --tag NAME:TAG  the image's name (default kairos:<version>, the version
#                   `kairos --version` prints)
#   --latest        also tag it NAME:latest
# Prints the image's name on its last line.
set -euo pipefail

UID_GID=10001
binary=target/release/kairos
tag=
latest=0

usage() { sed -n '/^# Usage:/,/^# Prints/p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --tag=*) tag=${1#*=}; shift ;;
    --latest) latest=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "image.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ ! -x "$binary" ]; then
  echo "image.sh: $binary is not an executable; build it with: cargo build --release --bin kairos" >&2
  exit 1
fi
command -v docker >/dev/null || { echo "image.sh: docker is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "image.sh: python3 is needed to write the archive" >&2; exit 1; }

version=$("$binary" --version 2>/dev/null | head -1 | awk '{print $2}' || true)
if ! [[ "$version" =~ ^[0-9][0-9A-Za-z.+-]*$ ]]; then
  echo "image.sh: \`$binary --version\` did not print \`kairos <version>\`" >&2
  exit 1
fi
cargo_toml="$(dirname "$0")/../Cargo.toml"
if [ -f "$cargo_toml" ]; then
  cargo_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$cargo_toml" | head -1)
  if [ -n "$cargo_version" ] && [ "$cargo_version" != "$version" ]; then
    echo "image.sh: warning: $binary is version $version, Cargo.toml says $cargo_version (rebuild?)" >&2
  fi
fi
tag=${tag:-kairos:$version}
case "$tag" in
  *:*) ;;
  *) tag="$tag:$version" ;;
esac

# The libraries and the loader: `name => /path (0x...)` and `/path (0x...)`
# lines; the vDSO has no path. A static binary gets none.
libraries=()
ldd_out=$(ldd "$binary" 2>&1 || true)
if ! grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
  if grep -q 'not found' <<<"$ldd_out"; then
    echo "image.sh: ldd cannot resolve every library of $binary:" >&2
    grep 'not found' <<<"$ldd_out" >&2
    exit 1
  fi
  while read -r path; do
    [ -n "$path" ] && libraries+=("$path")
  done < <(sed -nE 's/.*=> (\/[^ ]+) \(0x.*/\1/p; s/^[[:space:]]*(\/[^ ]+) \(0x.*/\1/p' <<<"$ldd_out" | sort -u)
  if [ ${#libraries[@]} -eq 0 ]; then
    echo "image.sh: ldd found no library for a dynamic binary:" >&2
    echo "$ldd_out" >&2
    exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs.tar"

python3 - "$rootfs" "$binary" "$UID_GID" "${libraries[@]}" <<'PY'
import io
import os
import sys
import tarfile
import time

out, binary, uid, libraries = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
now = int(time.time())

files = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\n"
    f"kairos:x:{uid}:{uid}:kairos:/var/lib/kairos:/sbin/nologin\n",
    "etc/group": f"root:x:0:\nkairos:x:{uid}:\n",
    # files and dns are built into glibc >= 2.34: nothing is dlopen'ed.
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    # Mount points the runtime binds its own files over.
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "etc/resolv.conf": "",
    "etc/hostname": "",
}
dirs = {"etc": 0o755, "tmp": 0o1777, "var": 0o755, "var/lib": 0o755}
for library in libraries:
    parent = os.path.dirname(library.lstrip("/"))
    while parent:
        dirs.setdefault(parent, 0o755)
        parent = os.path.dirname(parent)


def entry(name, kind, mode, owner=0, size=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, now
    info.uid = info.gid = owner
    info.uname = info.gname = "kairos" if owner else "root"
    return info


with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
    for name in sorted(dirs):  # parents sort before their children
        tar.addfile(entry(name, tarfile.DIRTYPE, dirs[name]))
    tar.addfile(entry("var/lib/kairos", tarfile.DIRTYPE, 0o700, owner=uid))
    for name, text in sorted(files.items()):
        data = text.encode()
        tar.addfile(entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    for source, name in [(binary, "kairos")] + [(lib, lib.lstrip("/")) for lib in libraries]:
        with open(source, "rb") as f:  # symlinks followed: the file itself
            size = os.fstat(f.fileno()).st_size
            tar.addfile(entry(name, tarfile.REGTYPE, 0o755, size=size), f)
PY

changes=(
  --change 'ENTRYPOINT ["/kairos"]'
  --change 'CMD ["agent"]'
  --change "USER $UID_GID:$UID_GID"
  --change 'WORKDIR /var/lib/kairos'
  --change 'VOLUME ["/var/lib/kairos"]'
  --change 'EXPOSE 7101 7201 7301 7401'
  --change 'ENV KAIROS_DATA_DIR=/var/lib/kairos KAIROS_GRPC_ADDR=0.0.0.0:7101 KAIROS_HTTP_ADDR=0.0.0.0:7201 KAIROS_CLUSTER_ADDR=0.0.0.0:7301 KAIROS_PEER_ADDR=0.0.0.0:7401'
  --change "LABEL org.opencontainers.image.title=kairos org.opencontainers.image.version=$version"
)
docker import "${changes[@]}" --message "kairos $version from $binary" "$rootfs" "$tag" >/dev/null
if [ "$latest" = 1 ]; then
  docker tag "$tag" "${tag%:*}:latest"
  echo "image.sh: also tagged ${tag%:*}:latest" >&2
fi
echo "image.sh: built $tag ($(du -h "$rootfs" | cut -f1) uncompressed; ${#libraries[@]} libraries)" >&2
echo "$tag"
