#!/bin/sh
# etcd reads its configuration from ETCD_* variables; this only fills in what a single-member
# setup needs when the caller did not say. The v2 API is always on (--enable-v2=true):
# do not also set ETCD_ENABLE_V2 (etcd refuses a flag shadowed by the same variable).
#
# ETCD_TLS=on: client and peer URLs are https, and every client and peer must present a certificate
# of the site CA (--client-cert-auth, --peer-client-cert-auth). The files come in as
# /etc/cidemo/tls/{ca.pem,server.pem,server-key.pem} (root-only); they are handed to the etcd user
# in /run/etcd-tls. /health is served in plain HTTP on 127.0.0.1:2381 only (the healthcheck).
# Starts as root for that, then runs etcd as the etcd user.
set -eu
log() { echo "[etcd $(date -u +%Y-%m-%dT%H:%M:%SZ)] $*" >&2; }
if [ "${ETCD_ENABLE_V2+set}" = set ]; then
  log "FATAL: unset ETCD_ENABLE_V2: the v2 API is always enabled by --enable-v2=true"
  exit 1
fi
addr=$(hostname -i 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n1 || true)
scheme=http
if [ "${ETCD_TLS:-off}" = on ]; then
  scheme=https
  src=/etc/cidemo/tls dst=/run/etcd-tls
  for f in ca.pem server.pem server-key.pem; do
    [ -s "$src/$f" ] || { log "FATAL: ETCD_TLS=on but $src/$f is missing"; exit 1; }
  done
  install -d -o etcd -g etcd -m 0700 "$dst"
  for f in ca.pem server.pem server-key.pem; do
    install -o etcd -g etcd -m 0600 "$src/$f" "$dst/$f"
  done
  export ETCD_CERT_FILE="$dst/server.pem" ETCD_KEY_FILE="$dst/server-key.pem" \
    ETCD_TRUSTED_CA_FILE="$dst/ca.pem" ETCD_CLIENT_CERT_AUTH=true \
    ETCD_PEER_CERT_FILE="$dst/server.pem" ETCD_PEER_KEY_FILE="$dst/server-key.pem" \
    ETCD_PEER_TRUSTED_CA_FILE="$dst/ca.pem" ETCD_PEER_CLIENT_CERT_AUTH=true
fi
unset ETCD_TLS
: "${ETCD_NAME:=$(hostname)}"
: "${ETCD_DATA_DIR:=/var/lib/etcd/data}"
: "${ETCD_LISTEN_CLIENT_URLS:=$scheme://0.0.0.0:2379}"
: "${ETCD_ADVERTISE_CLIENT_URLS:=$scheme://${addr:-127.0.0.1}:2379}"
: "${ETCD_LISTEN_PEER_URLS:=$scheme://0.0.0.0:2380}"
: "${ETCD_INITIAL_ADVERTISE_PEER_URLS:=$scheme://${addr:-127.0.0.1}:2380}"
: "${ETCD_INITIAL_CLUSTER:=$ETCD_NAME=$ETCD_INITIAL_ADVERTISE_PEER_URLS}"
: "${ETCD_LISTEN_METRICS_URLS:=http://127.0.0.1:2381}"
export ETCD_NAME ETCD_DATA_DIR ETCD_LISTEN_CLIENT_URLS ETCD_ADVERTISE_CLIENT_URLS ETCD_LISTEN_PEER_URLS \
  ETCD_INITIAL_ADVERTISE_PEER_URLS ETCD_INITIAL_CLUSTER ETCD_LISTEN_METRICS_URLS
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=etcd --regid=etcd --init-groups /usr/bin/etcd --enable-v2=true "$@"
fi
exec /usr/bin/etcd --enable-v2=true "$@"
