#!/usr/bin/env bash
# Installs what Vessel needs on a Debian machine (run as root): Debian packages with apt-get,
# npm packages with npm ci. Quiet and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root, or: sudo apt-get install -y ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci (builds better-sqlite3 from source: about two minutes)"
  npm ci --no-audit --no-fund --loglevel=error
fi

command -v kubectl >/dev/null || echo "setup: note: kubectl is not installed; the kubectl end-to-end tests will fail until it is (Debian does not package it)." >&2
exit 0
