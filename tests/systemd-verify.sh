#!/usr/bin/env bash
# `systemd-analyze verify` on deploy/systemd/kairos.service, with its
# ExecStart pointed at the built binary (the unit names the installed path,
# /usr/local/bin/kairos, which does not exist here). Any message fails.
# Skipped (exit 0, with a message) when systemd-analyze is not installed.
#
# Usage: tests/systemd-verify.sh
# Environment: KAIROS_BIN (default target/release/kairos).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${KAIROS_BIN:-target/release/kairos}
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-verify: systemd-analyze is not installed; skipped"
  exit 0
fi
[ -x "$BIN" ] || { echo "systemd-verify: $BIN not found (cargo build --release --bin kairos)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/local/bin/kairos |ExecStart=$(realpath "$BIN") |" deploy/systemd/kairos.service >"$tmp/kairos.service"
grep -q "^ExecStart=$(realpath "$BIN") agent --config /etc/kairos/kairos.toml$" "$tmp/kairos.service" \
  || { echo "systemd-verify: ExecStart is not the expected command line" >&2; exit 1; }
out=$(systemd-analyze verify "$tmp/kairos.service" 2>&1) || true
if [ -n "$out" ]; then
  echo "systemd-verify: deploy/systemd/kairos.service:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd-verify: deploy/systemd/kairos.service passed systemd-analyze verify"
