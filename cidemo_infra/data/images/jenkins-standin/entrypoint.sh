#!/bin/bash
# cidemo Jenkins STAND-IN: serves :8080 and registers /services/jenkins/<host>:<container>:8080 in etcd.
set -euo pipefail

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

# shellcheck disable=SC2034
LOG_COMPONENT=jenkins-standin
# shellcheck source=/dev/null
. /usr/local/lib/cidemo/etcd.sh

service_identity || exit 1
BIND_ADDRESS=${BIND_ADDRESS:-0.0.0.0}
export BIND_ADDRESS
HEALTH_HOST=127.0.0.1
[ "$BIND_ADDRESS" = 0.0.0.0 ] || HEALTH_HOST=$BIND_ADDRESS

log "STAND-IN (not Jenkins) $CONTAINER_NAME address $NODE_ADDRESS, etcd $ETCD_URL prefix '${ETCD_PREFIX}' ttl $TTL s"
exec /usr/local/lib/cidemo/announce.sh --component jenkins-standin \
  --health "curl -fsS --max-time 2 -o /dev/null http://${HEALTH_HOST}:8080/login" \
  --key "/services/jenkins/$HOST_ID:$CONTAINER_NAME:8080=$NODE_ADDRESS:8080" \
  -- python3 -u /usr/local/lib/cidemo/standin.py
