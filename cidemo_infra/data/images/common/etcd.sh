# shellcheck shell=bash
# Sourced library: the etcd v2 keys API with curl and jq (no etcdctl).
#
# Every KEY/DIR argument is a path such as /services/database_port/x; ETCD_PREFIX is put in front.
# Return codes: 0 success, 1 the condition did not hold (not found, exists, compare failed),
# 2 etcd unreachable or an unexpected answer. Every request is bounded by ETCD_TIMEOUT seconds.
#
# Environment: ETCD_URL (required), ETCD_PREFIX (default empty), ETCD_TIMEOUT (default 5),
# LOG_COMPONENT (the name in log lines), ETCD_TLS_DIR (default /etc/cidemo/tls).
#
# An https ETCD_URL is verified against $ETCD_TLS_DIR/ca.pem (the site CA), and this component
# presents its own client certificate, $ETCD_TLS_DIR/etcd-client.pem and etcd-client-key.pem:
# etcd accepts no client without one. The files are copied in before start, never passed in the
# environment or on a command line.

ETCD_PREFIX=${ETCD_PREFIX:-}
ETCD_PREFIX=${ETCD_PREFIX%/}
if [ -n "$ETCD_PREFIX" ] && [ "${ETCD_PREFIX#/}" = "$ETCD_PREFIX" ]; then
  ETCD_PREFIX=/$ETCD_PREFIX
fi
ETCD_TIMEOUT=${ETCD_TIMEOUT:-5}
ETCD_TLS_DIR=${ETCD_TLS_DIR:-/etc/cidemo/tls}

log() {
  printf '[%s %s] %s\n' "${LOG_COMPONENT:-${0##*/}}" "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$*" >&2
}

first_ipv4() {
  hostname -i 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n1 || true
}

# service_identity: the registrator-style identity of a service container, from its environment:
# HOST_ID (the container's hostname), CONTAINER_NAME (default HOST_ID), NODE_ADDRESS (default the
# hostname's first IPv4 address) and TTL (default 10, exported for announce.sh). Logs the problem
# and returns 1 when ETCD_URL or an address is missing or TTL is not an integer >= 2.
service_identity() {
  if [ -z "${ETCD_URL:-}" ]; then
    log "FATAL: ETCD_URL is not set (e.g. http://etcd:2379)"
    return 1
  fi
  HOST_ID=$(hostname)
  CONTAINER_NAME=${CONTAINER_NAME:-$HOST_ID}
  NODE_ADDRESS=${NODE_ADDRESS:-$(first_ipv4)}
  if [ -z "$NODE_ADDRESS" ]; then
    log "FATAL: NODE_ADDRESS is not set and 'hostname -i' gave no IPv4 address"
    return 1
  fi
  TTL=${TTL:-10}
  if ! [[ "$TTL" =~ ^[0-9]+$ ]] || [ "$TTL" -lt 2 ]; then
    log "FATAL: TTL must be an integer >= 2, got '$TTL'"
    return 1
  fi
  export TTL
}

# _etcd_uri VALUE: percent-encoded for a query string (RFC 3986 unreserved characters kept, UTF-8
# byte by byte), in bash: a registration writes several keys, and a jq per value cost 20 ms each.
_etcd_uri() {
  local LC_ALL=C s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case "$c" in
      [a-zA-Z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

_etcd_url() {
  local key=$1
  [ "${key#/}" = "$key" ] && key=/$key
  printf '%s/v2/keys%s%s' "${ETCD_URL%/}" "$ETCD_PREFIX" "$key"
}

# _etcd_tls_args: curl's TLS options for an https ETCD_URL (none for http).
_etcd_tls_args() {
  case "${ETCD_URL:-}" in
    https://*)
      ETCD_CURL_TLS=(--cacert "$ETCD_TLS_DIR/ca.pem" --cert "$ETCD_TLS_DIR/etcd-client.pem"
        --key "$ETCD_TLS_DIR/etcd-client-key.pem")
      ;;
    *) ETCD_CURL_TLS=() ;;
  esac
}

# _etcd_request METHOD URL [curl args...]: prints the JSON body; fails (2) when etcd cannot be reached.
_etcd_request() {
  local method=$1 url=$2
  shift 2
  _etcd_tls_args
  curl -sS --connect-timeout 2 --max-time "$ETCD_TIMEOUT" "${ETCD_CURL_TLS[@]}" -X "$method" "$@" "$url" \
    2>/dev/null || return 2
}

# _etcd_result BODY ACTION...: 0 if .action is one of ACTIONs, 1 if errorCode is 100/101/105, else 2.
_etcd_result() {
  local body=$1 action code
  shift
  action=$(jq -r '.action // empty' <<<"$body" 2>/dev/null) || return 2
  for a in "$@"; do
    [ "$action" = "$a" ] && return 0
  done
  code=$(jq -r '.errorCode // empty' <<<"$body" 2>/dev/null) || return 2
  case "$code" in
    100 | 101 | 105) return 1 ;;
  esac
  return 2
}

# etcd_get KEY: prints the value.
etcd_get() {
  local body
  body=$(_etcd_request GET "$(_etcd_url "$1")") || return 2
  _etcd_result "$body" get || return
  jq -r '.node.value // empty' <<<"$body"
}

# etcd_set KEY VALUE [TTL]: unconditional write; without TTL the key does not expire.
etcd_set() {
  local body args=(--data-urlencode "value=$2")
  [ -n "${3:-}" ] && args+=(--data-urlencode "ttl=$3")
  body=$(_etcd_request PUT "$(_etcd_url "$1")" "${args[@]}") || return 2
  _etcd_result "$body" set update create
}

# etcd_create KEY VALUE [TTL]: 0 only if this call created the key (prevExist=false).
etcd_create() {
  local body args=(--data-urlencode "value=$2")
  [ -n "${3:-}" ] && args+=(--data-urlencode "ttl=$3")
  body=$(_etcd_request PUT "$(_etcd_url "$1")?prevExist=false" "${args[@]}") || return 2
  _etcd_result "$body" create
}

# etcd_cas KEY VALUE PREVVALUE [TTL]: write only if the current value is PREVVALUE.
etcd_cas() {
  local body args=(--data-urlencode "value=$2")
  [ -n "${4:-}" ] && args+=(--data-urlencode "ttl=$4")
  body=$(_etcd_request PUT "$(_etcd_url "$1")?prevValue=$(_etcd_uri "$3")" "${args[@]}") || return 2
  _etcd_result "$body" compareAndSwap
}

# etcd_refresh KEY VALUE TTL: reset the TTL of our own key without a change event for watchers
# (refresh=true); (re)creates it when it expired or holds another value.
etcd_refresh() {
  local body rc=0
  body=$(_etcd_request PUT "$(_etcd_url "$1")?refresh=true&prevExist=true&prevValue=$(_etcd_uri "$2")" \
    --data-urlencode "ttl=$3") || return 2
  _etcd_result "$body" update compareAndSwap || rc=$?
  [ "$rc" -eq 1 ] || return "$rc"
  etcd_set "$1" "$2" "$3"
}

# etcd_refresh_all TTL KEY VALUE [KEY VALUE ...]: etcd_refresh of every pair in one curl (one TLS
# handshake, the connection reused) and one jq for all the answers; the keys that expired or changed
# are then set together the same way (etcd_set_all). 0 when every key holds its value with a fresh
# TTL.
etcd_refresh_all() {
  local ttl=$1 urls=() keys=() values=() outcomes=() again=() i rc=0
  shift
  while [ $# -ge 2 ]; do
    urls+=("$(_etcd_url "$1")?refresh=true&prevExist=true&prevValue=$(_etcd_uri "$2")")
    keys+=("$1")
    values+=("$2")
    shift 2
  done
  [ ${#keys[@]} -gt 0 ] || return 0
  _etcd_put_each outcomes "ttl=$ttl" "${urls[@]}" || return 2
  for i in "${!keys[@]}"; do
    case "${outcomes[$i]}" in
      update | compareAndSwap) ;;
      E100 | E101 | E105) again+=("${keys[$i]}" "${values[$i]}") ;;
      *) rc=2 ;;
    esac
  done
  [ ${#again[@]} -eq 0 ] || etcd_set_all "$ttl" "${again[@]}" || rc=2
  return "$rc"
}

# etcd_set_all TTL KEY VALUE [KEY VALUE ...]: etcd_set of every pair, in one curl and one jq.
etcd_set_all() {
  local ttl=$1 urls=() outcomes=() one rc=0
  shift
  while [ $# -ge 2 ]; do
    urls+=("$(_etcd_url "$1")?value=$(_etcd_uri "$2")")
    shift 2
  done
  [ ${#urls[@]} -gt 0 ] || return 0
  _etcd_put_each outcomes "ttl=$ttl" "${urls[@]}" || return 2
  for one in "${outcomes[@]}"; do  # _etcd_put_each gave one answer per URL
    case "$one" in
      set | update | create) ;;
      *) rc=2 ;;
    esac
  done
  return "$rc"
}

# _etcd_put_each ARRAY DATA URL...: PUT DATA to each URL in one curl; ARRAY (a name) gets each
# answer's action, or E<errorCode> (E0: neither). 2 when etcd did not answer every one.
_etcd_put_each() {
  local -n _answers=$1
  local data=$2 args=() body url
  shift 2
  _etcd_tls_args
  for url in "$@"; do
    [ ${#args[@]} -eq 0 ] || args+=(--next)
    args+=(-sS --connect-timeout 2 --max-time "$ETCD_TIMEOUT" "${ETCD_CURL_TLS[@]}" -X PUT -w '\n'
      --data-urlencode "$data" "$url")
  done
  body=$(curl "${args[@]}" 2>/dev/null) || return 2
  mapfile -t _answers < <(jq -r '.action // ("E" + ((.errorCode // 0) | tostring))' <<<"$body" 2>/dev/null)
  [ ${#_answers[@]} -eq $# ] || return 2
}

# etcd_delete_if KEY VALUE: delete only a key that still holds VALUE; 0 also when it is already gone.
etcd_delete_if() {
  local body rc=0
  body=$(_etcd_request DELETE "$(_etcd_url "$1")?prevValue=$(_etcd_uri "$2")") || return 2
  _etcd_result "$body" compareAndDelete || rc=$?
  if [ "$rc" -eq 1 ] && [ "$(jq -r '.errorCode' <<<"$body")" = 100 ]; then
    return 0
  fi
  return "$rc"
}

# etcd_ls DIR: the values of the live keys directly under DIR, one a line; nothing if DIR is absent.
etcd_ls() {
  local body rc=0
  body=$(_etcd_request GET "$(_etcd_url "${1%/}")") || return 2
  _etcd_result "$body" get || rc=$?
  [ "$rc" -eq 1 ] && return 0
  [ "$rc" -eq 0 ] || return "$rc"
  jq -r '.node.nodes // [] | .[] | select(.dir != true) | .value' <<<"$body"
}

# etcd_ls_keys DIR: the live keys directly under DIR, one a line: NAME<TAB>VALUE<TAB>EXPIRATION
# (NAME: the last path element; EXPIRATION empty for a key without TTL); nothing if DIR is absent.
etcd_ls_keys() {
  local body rc=0
  body=$(_etcd_request GET "$(_etcd_url "${1%/}")") || return 2
  _etcd_result "$body" get || rc=$?
  [ "$rc" -eq 1 ] && return 0
  [ "$rc" -eq 0 ] || return "$rc"
  jq -r '.node.nodes // [] | .[] | select(.dir != true)
    | [(.key | split("/") | last), (.value // ""), (.expiration // "")] | @tsv' <<<"$body"
}

# etcd_wait_ready SECONDS: wait until the v2 keys API answers; 1 with a log line on timeout.
etcd_wait_ready() {
  local limit=${1:-60} start=$SECONDS body next_log=0
  while :; do
    body=$(_etcd_request GET "${ETCD_URL%/}/v2/keys/") || body=""
    if [ -n "$body" ] && jq -e '.action == "get"' <<<"$body" >/dev/null 2>&1; then
      return 0
    fi
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      if [ -n "$body" ]; then
        log "etcd at $ETCD_URL answers but not the v2 API (is it started with --enable-v2=true?) after $limit s"
      else
        log "etcd at $ETCD_URL did not answer within $limit s"
      fi
      return 1
    fi
    if [ $((SECONDS - start)) -ge "$next_log" ]; then
      log "waiting for etcd at $ETCD_URL (up to $limit s)"
      next_log=$((next_log + 10))
    fi
    sleep 1
  done
}
