#!/bin/bash
# Register service keys in etcd (v2) with a TTL while a health command succeeds, and delete them on exit.
#
# As a wrapper (the service runs as our child; signals are forwarded, its exit code is ours):
#   announce.sh --component NAME --health 'CMD' --key KEY=VALUE [--key KEY=VALUE ...] -- COMMAND [ARGS...]
# KEY is under ETCD_PREFIX (e.g. /services/lb_rw/host:name:4006). Keys are refreshed every TTL/2 s while
# CMD exits 0 (checked every second until the first success); when CMD fails they are no longer refreshed
# and expire. On SIGTERM/SIGINT or when COMMAND exits, only keys still holding our value are deleted.
#
# Sourced (after common/etcd.sh): announce_add KEY VALUE, announce_refresh, announce_withdraw.
#
# Environment: ETCD_URL (required), ETCD_PREFIX, TTL (default 10).

ANNOUNCE_KEYS=()
ANNOUNCE_VALUES=()
ANNOUNCE_STATE=none

announce_add() {
  ANNOUNCE_KEYS+=("$1")
  ANNOUNCE_VALUES+=("$2")
}

# announce_refresh: write/refresh every key with TTL (one curl for all, etcd_refresh_all); logs the
# first success and the first failure.
announce_refresh() {
  local i failed=0 pairs=()
  for i in "${!ANNOUNCE_KEYS[@]}"; do
    pairs+=("${ANNOUNCE_KEYS[$i]}" "${ANNOUNCE_VALUES[$i]}")
  done
  etcd_refresh_all "${TTL:-10}" "${pairs[@]}" || failed=1
  if [ "$failed" -eq 0 ]; then
    if [ "$ANNOUNCE_STATE" != registered ]; then
      log "registered ${#ANNOUNCE_KEYS[@]} keys with ttl ${TTL:-10} s: $(announce_describe)"
    fi
    ANNOUNCE_STATE=registered
    return 0
  fi
  if [ "$ANNOUNCE_STATE" != failing ]; then
    log "could not write the registration keys to etcd at $ETCD_URL; retrying"
  fi
  ANNOUNCE_STATE=failing
  return 1
}

# announce_pause REASON: stop refreshing (the keys expire after TTL); logs only on the transition.
announce_pause() {
  if [ "$ANNOUNCE_STATE" = registered ]; then
    log "$1: no longer refreshing the registration; the keys expire within ${TTL:-10} s"
  fi
  ANNOUNCE_STATE=paused
}

# announce_withdraw: delete the keys that still hold our values (removes nothing it did not write).
announce_withdraw() {
  local i
  [ ${#ANNOUNCE_KEYS[@]} -gt 0 ] || return 0
  for i in "${!ANNOUNCE_KEYS[@]}"; do
    etcd_delete_if "${ANNOUNCE_KEYS[$i]}" "${ANNOUNCE_VALUES[$i]}" ||
      log "could not delete ${ETCD_PREFIX}${ANNOUNCE_KEYS[$i]} (gone, changed by someone else or etcd down)"
  done
  [ "$ANNOUNCE_STATE" = none ] || log "deleted the registration keys"
  ANNOUNCE_STATE=none
}

announce_describe() {
  local i out=()
  for i in "${!ANNOUNCE_KEYS[@]}"; do
    out+=("${ETCD_PREFIX}${ANNOUNCE_KEYS[$i]}=${ANNOUNCE_VALUES[$i]}")
  done
  printf '%s' "${out[*]}"
}

# shellcheck disable=SC2034
announce_main() {
  set -euo pipefail
  local health="" child rc term_signal="" last=-100000 half
  LOG_COMPONENT=announce
  while [ $# -gt 0 ]; do
    case "$1" in
      --component) LOG_COMPONENT=$2; shift 2 ;;
      --health) health=$2; shift 2 ;;
      --key)
        [[ "$2" == /*=* ]] || { log "bad --key '$2' (want /path/to/key=value)"; return 2; }
        announce_add "${2%%=*}" "${2#*=}"
        shift 2
        ;;
      --) shift; break ;;
      *) log "unknown argument '$1' (valid: --component, --health, --key, --)"; return 2 ;;
    esac
  done
  [ $# -gt 0 ] || { log "no command given after --"; return 2; }
  [ -n "${ETCD_URL:-}" ] || { log "ETCD_URL is not set"; return 2; }
  TTL=${TTL:-10}
  if ! [[ "$TTL" =~ ^[0-9]+$ ]] || [ "$TTL" -lt 2 ]; then
    log "TTL must be an integer >= 2, got '$TTL'"
    return 2
  fi
  half=$((TTL / 2))

  "$@" &
  child=$!
  trap 'term_signal=TERM' TERM
  trap 'term_signal=INT' INT
  trap 'term_signal=HUP' HUP

  while [ -z "$term_signal" ] && kill -0 "$child" 2>/dev/null; do
    if [ "$ANNOUNCE_STATE" != registered ] || [ $((SECONDS - last)) -ge "$half" ]; then
      if [ -z "$health" ] || timeout "$half" bash -c "$health" >/dev/null 2>&1; then
        if announce_refresh; then last=$SECONDS; fi
      else
        announce_pause "health check failed"
      fi
    fi
    sleep 1 &
    wait $! 2>/dev/null || true
  done

  announce_withdraw || true
  if [ -n "$term_signal" ]; then
    log "got SIG$term_signal, stopping the service"
    kill -s "$term_signal" "$child" 2>/dev/null || true
  fi
  while :; do
    rc=0
    wait "$child" 2>/dev/null || rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  log "service exited with code $rc"
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # shellcheck source=/dev/null
  . "${CIDEMO_LIB:-/usr/local/lib/cidemo}/etcd.sh"
  announce_main "$@"
  exit $?
fi
