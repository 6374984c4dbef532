#!/bin/bash
# cidemo Jenkins: the jenkins/jenkins entrypoint, registered as /services/jenkins/<host>:<container>:8080.
set -euo pipefail

# shellcheck disable=SC2034
LOG_COMPONENT=jenkins
# shellcheck source=/dev/null
. /usr/local/lib/cidemo/etcd.sh

secret=/etc/cidemo/secrets/jenkins_admin_password
[ -r "$secret" ] || { log "FATAL: $secret is missing or not readable by uid $(id -u) (copy it with owner 1000, mode 0400)"; exit 1; }
service_identity || exit 1

log "jenkins $CONTAINER_NAME address $NODE_ADDRESS, etcd $ETCD_URL prefix '${ETCD_PREFIX}' ttl $TTL s"
exec /usr/local/lib/cidemo/announce.sh --component jenkins \
  --health 'curl -fsS --max-time 3 -o /dev/null http://127.0.0.1:8080/login' \
  --key "/services/jenkins/$HOST_ID:$CONTAINER_NAME:8080=$NODE_ADDRESS:8080" \
  -- /usr/local/bin/jenkins.sh "$@"
