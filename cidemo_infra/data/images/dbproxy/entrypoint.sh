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

service_identity || exit 1

log "proxy $CONTAINER_NAME (node ${NODE_NAME:-$HOST_ID}) address $NODE_ADDRESS, etcd $ETCD_URL prefix '${ETCD_PREFIX}' ttl $TTL s"
exec /usr/local/lib/cidemo/announce.sh --component dbproxy \
  --health 'echo "show info" | socat -t2 - UNIX-CONNECT:/run/haproxy/admin.sock | grep -q "^Pid:"' \
  --key "/services/lb_rw/$HOST_ID:$CONTAINER_NAME:4006=$NODE_ADDRESS:4006" \
  --key "/services/lb_read/$HOST_ID:$CONTAINER_NAME:4008=$NODE_ADDRESS:4008" \
  -- /usr/local/bin/run-proxy
