#!/bin/sh
# etcd reads its configuration from ETCD_* variables; this only fills in what a single-member
# setup needs when the caller did not say. The v2 API is always on (--enable-v2=true):
# do not also set ETCD_ENABLE_V2 (etcd refuses a flag shadowed by the same variable).
set -eu
if [ "${ETCD_ENABLE_V2+set}" = set ]; then
  echo "[etcd $(date -u +%Y-%m-%dT%H:%M:%SZ)] FATAL: unset ETCD_ENABLE_V2: the v2 API is always enabled by --enable-v2=true" >&2
  exit 1
fi
addr=$(hostname -i 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n1 || true)
: "${ETCD_NAME:=$(hostname)}"
: "${ETCD_DATA_DIR:=/var/lib/etcd/data}"
: "${ETCD_LISTEN_CLIENT_URLS:=http://0.0.0.0:2379}"
: "${ETCD_ADVERTISE_CLIENT_URLS:=http://${addr:-127.0.0.1}:2379}"
: "${ETCD_LISTEN_PEER_URLS:=http://0.0.0.0:2380}"
: "${ETCD_INITIAL_ADVERTISE_PEER_URLS:=http://${addr:-127.0.0.1}:2380}"
: "${ETCD_INITIAL_CLUSTER:=$ETCD_NAME=$ETCD_INITIAL_ADVERTISE_PEER_URLS}"
export ETCD_NAME ETCD_DATA_DIR ETCD_LISTEN_CLIENT_URLS ETCD_ADVERTISE_CLIENT_URLS ETCD_LISTEN_PEER_URLS \
  ETCD_INITIAL_ADVERTISE_PEER_URLS ETCD_INITIAL_CLUSTER
exec /usr/bin/etcd --enable-v2=true "$@"
