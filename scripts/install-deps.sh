#!/usr/bin/env bash
# Install the Debian packages vpnca and its tests need (as root on Debian 12). Quick when present, safe to
# re-run. The list lives in scripts/debian-packages.txt (tests/integration/test_install_manifest.py checks
# it against what the code and tests really run). Python packages are not installed here: `make venv` does.
set -euo pipefail
manifest="$(dirname "$0")/debian-packages.txt"
packages=()
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%%#*}"
  for p in $line; do packages+=("$p"); done
done <"$manifest"
if [ "${#packages[@]}" -eq 0 ]; then
  echo "no packages in $manifest" >&2
  exit 1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# the Debian services are not wanted running: tests and `make run` start their own instances
for svc in postgresql nginx strongswan-starter strongswan; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
