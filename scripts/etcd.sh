#!/usr/bin/env bash
# Runs a single-member etcd for local development, in the foreground (Ctrl-C stops it).
# Loopback only; data persists in .data/etcd (gitignored). Point the API server's etcd store
# at http://127.0.0.1:${VESSEL_ETCD_PORT:-2379}.
# (Tests don't use this: they start their own etcd via packages/store/testing/etcd-server.ts.)
set -euo pipefail

ETCD_BIN=${VESSEL_ETCD_BIN:-/usr/bin/etcd}
if [[ ! -x "$ETCD_BIN" ]]; then
  echo "etcd not found at $ETCD_BIN: install it with 'apt-get install etcd-server'" >&2
  exit 1
fi

root=$(cd "$(dirname "$0")/.." && pwd)
client_port=${VESSEL_ETCD_PORT:-2379}
peer_port=${VESSEL_ETCD_PEER_PORT:-2380}
data_dir=${VESSEL_ETCD_DATA:-$root/.data/etcd}
mkdir -p "$data_dir"

# etcd treats every ETCD_* environment variable as a flag, so only flags are used here.
exec "$ETCD_BIN" \
  --name=vessel-dev \
  --data-dir="$data_dir" \
  --listen-client-urls="http://127.0.0.1:$client_port" \
  --advertise-client-urls="http://127.0.0.1:$client_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="vessel-dev=http://127.0.0.1:$peer_port" \
  --initial-cluster-token=vessel-dev \
  --initial-cluster-state=new \
  --logger=zap
