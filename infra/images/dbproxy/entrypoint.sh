#!/bin/bash
# cidemo MySQL proxy: HAProxy following the Galera members in etcd, registered as lb_rw and lb_read.
set -euo pipefail

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

# shellcheck disable=SC2034
LOG_COMPONENT=dbproxy
# shellcheck source=../common/etcd.sh
. /usr/local/lib/cidemo/etcd.sh

first_ipv4() {
  hostname -i 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n1 || true
}

[ -n "${ETCD_URL:-}" ] || { log "FATAL: ETCD_URL is not set (e.g. http://etcd:2379)"; exit 1; }
HOST_ID=$(hostname)
CONTAINER_NAME=${CONTAINER_NAME:-$HOST_ID}
NODE_ADDRESS=${NODE_ADDRESS:-$(first_ipv4)}
[ -n "$NODE_ADDRESS" ] || { log "FATAL: NODE_ADDRESS is not set and 'hostname -i' gave no IPv4 address"; exit 1; }
export TTL=${TTL:-10}

log "proxy $CONTAINER_NAME (node ${NODE_NAME:-$HOST_ID}) address $NODE_ADDRESS, etcd $ETCD_URL prefix '${ETCD_PREFIX}' ttl $TTL s"
exec /usr/local/lib/cidemo/announce.sh --component dbproxy \
  --health 'echo "show info" | socat -t2 - UNIX-CONNECT:/run/haproxy/admin.sock | grep -q "^Pid:"' \
  --key "/services/lb_rw/$HOST_ID:$CONTAINER_NAME:4006=$NODE_ADDRESS:4006" \
  --key "/services/lb_read/$HOST_ID:$CONTAINER_NAME:4008=$NODE_ADDRESS:4008" \
  -- /usr/local/bin/run-proxy
