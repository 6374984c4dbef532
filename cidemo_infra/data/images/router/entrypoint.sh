#!/bin/bash
# cidemo app router: HAProxy (master-worker) following ${ETCD_PREFIX}/services/apps/, where each key
# `<env>` holds `<service>:<port>`. Polled every POLL_INTERVAL s; on a change the config is rendered,
# checked and HAProxy reloaded with SIGUSR2 (old workers finish their requests). An etcd outage keeps
# the current routes. The current routes are written to /run/cidemo/routes.
set -euo pipefail

if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

# shellcheck disable=SC2034
LOG_COMPONENT=router
# shellcheck source=../common/etcd.sh
. /usr/local/lib/cidemo/etcd.sh

CFG=/etc/haproxy/haproxy.cfg
ROUTES=/run/cidemo/routes
POLL_INTERVAL=${POLL_INTERVAL:-2}
ROUTE_DIR=/services/apps
MAINTENANCE_DIR=/services/maintenance

[ -n "${APPS_DOMAIN:-}" ] || { log "FATAL: APPS_DOMAIN is not set (e.g. cidemo.test)"; exit 1; }

# routes: `<env> <service>:<port>` a line, sorted; 2 when etcd does not answer as expected.
routes() {
  local body rc=0
  body=$(_etcd_request GET "$(_etcd_url "$ROUTE_DIR")") || return 2
  _etcd_result "$body" get || rc=$?
  [ "$rc" -eq 1 ] && return 0
  [ "$rc" -eq 0 ] || return "$rc"
  jq -r '.node.nodes // [] | .[] | select(.dir != true) | "\(.key | split("/") | last) \(.value)"' \
    <<<"$body" | grep -E '^[a-z0-9-]+ [a-z0-9][a-z0-9_.-]*:[0-9]+$' | LC_ALL=C sort -u || true
  maintenance
}

# maintenance: `@maintenance <env> <retry-after seconds>` a line, for the envs held in maintenance
maintenance() {
  local body rc=0
  body=$(_etcd_request GET "$(_etcd_url "$MAINTENANCE_DIR")") || return 2
  _etcd_result "$body" get || rc=$?
  [ "$rc" -eq 1 ] && return 0
  [ "$rc" -eq 0 ] || return "$rc"
  jq -r '.node.nodes // [] | .[] | select(.dir != true)
    | "@maintenance \(.key | split("/") | last) \(.value)"' <<<"$body" |
    grep -E '^@maintenance [a-z0-9-]+ [0-9]{1,5}$' | LC_ALL=C sort -u || true
}

render() {
  local tmp
  tmp=$(mktemp "$CFG.XXXXXX")
  printf '%s' "$1" | render-router-cfg >"$tmp"
  if ! haproxy -c -q -f "$tmp" >/tmp/haproxy-check.log 2>&1; then
    log "the rendered config is invalid; keeping the current one:"
    cat /tmp/haproxy-check.log >&2
    rm -f "$tmp"
    return 1
  fi
  chmod 0644 "$tmp"
  mv -f "$tmp" "$CFG"
  printf '%s\n' "$1" >"$ROUTES"
}

describe() {
  if [ -n "$1" ]; then cut -d' ' -f1 <<<"$1" | paste -sd' ' -; else printf 'none'; fi
}

current=""
if [ -n "${ETCD_URL:-}" ] && etcd_wait_ready "${ETCD_WAIT:-10}"; then
  current=$(routes) || current=""
fi
[ -n "${ETCD_URL:-}" ] || log "ETCD_URL is not set: serving no routes"
render "$current" || exit 1

log "starting haproxy for *.$APPS_DOMAIN with routes: $(describe "$current")"
haproxy -W -db -f "$CFG" &
HAPROXY=$!

TERM_SIGNAL=""
trap 'TERM_SIGNAL=TERM' TERM
trap 'TERM_SIGNAL=INT' INT

etcd_failing=0
while [ -z "$TERM_SIGNAL" ] && kill -0 "$HAPROXY" 2>/dev/null; do
  sleep "$POLL_INTERVAL" &
  wait $! 2>/dev/null || true
  [ -z "$TERM_SIGNAL" ] || break
  [ -n "${ETCD_URL:-}" ] || continue
  rc=0
  next=$(routes) || rc=$?
  if [ "$rc" -ne 0 ]; then
    [ "$etcd_failing" -eq 1 ] || log "etcd at $ETCD_URL does not answer; keeping routes $(describe "$current")"
    etcd_failing=1
    continue
  fi
  [ "$etcd_failing" -eq 0 ] || log "etcd answers again"
  etcd_failing=0
  [ "$next" != "$current" ] || continue
  render "$next" || continue
  log "routes changed: $(describe "$current") -> $(describe "$next"); reloading haproxy"
  current=$next
  kill -USR2 "$HAPROXY"
done

if [ -n "$TERM_SIGNAL" ]; then
  log "got SIG$TERM_SIGNAL: stopping haproxy"
  kill -TERM "$HAPROXY" 2>/dev/null || true
fi
while :; do
  rc=0
  wait "$HAPROXY" 2>/dev/null || rc=$?
  kill -0 "$HAPROXY" 2>/dev/null || break
done
log "haproxy exited with code $rc"
exit "$rc"
