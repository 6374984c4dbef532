# shellcheck shell=bash
# Sourced by galera-entrypoint: automatic recovery after every member crashed (no live Primary).
#
# Each member that finds no live member recovers its position, publishes it under
#   <prefix>/cidemo/galera/<cluster>/positions/<NODE_NAME> = {"uuid","seqno","generation","state"}
# with a TTL, and waits until every expected member (EXPECTED_MEMBERS, from the site file) has
# reported, or after RECOVERY_WAIT s a majority has. The member with the highest seqno for the
# majority's UUID moves the bootstrap guard to itself by compare-and-swap with generation + 1 and
# bootstraps; the others join it once it is registered. Keys of any other name are ignored.
#
# Uses from the entrypoint: NODE_NAME, NODE_ADDRESS, TTL, CLUSTER_NAME, GUARD_KEY, GUARD_RAW,
# GUARD_GEN, read_guard, log, die.

POS_DIR=/cidemo/galera/$CLUSTER_NAME/positions
POS_TTL=$((TTL * 3))
ZERO_UUID=00000000-0000-0000-0000-000000000000
MY_UUID=""
MY_SEQNO=-1
POS_VALUE=""
POS_WRITTEN=-100000
ELECTION_START=-1
ELECTION_GEN=-1
declare -A IGNORED_KEYS=()
LAST_NOTE=""

IFS=, read -r -a EXPECTED <<<"${EXPECTED_MEMBERS:-}"

is_expected() {
  local m
  for m in "${EXPECTED[@]}"; do [ "$m" = "$1" ] && return 0; done
  return 1
}

# note MESSAGE: log a line of the election once, not every second
note() {
  [ "$*" = "$LAST_NOTE" ] && return 0
  LAST_NOTE=$*
  log "$*"
}

# recover_position: MY_UUID and MY_SEQNO from the datadir (galera-position runs --wsrep-recover
# when grastate.dat says -1); once per start.
recover_position() {
  [ -n "$MY_UUID" ] && return 0
  local json
  json=$(galera-position) || return 1
  MY_UUID=$(jq -r .uuid <<<"$json")
  MY_SEQNO=$(jq -r .seqno <<<"$json")
  log "recovered position $MY_UUID:$MY_SEQNO"
}

# publish_position STATE GENERATION: write (or refresh every TTL/2) our position key.
publish_position() {
  local value
  value=$(jq -cn --arg u "$MY_UUID" --argjson s "$MY_SEQNO" --argjson g "$2" --arg st "$1" \
    --arg a "$NODE_ADDRESS" '{uuid: $u, seqno: $s, generation: $g, state: $st, address: $a}')
  if [ "$value" != "$POS_VALUE" ] || [ $((SECONDS - POS_WRITTEN)) -ge $((TTL / 2)) ]; then
    if etcd_set "$POS_DIR/$NODE_NAME" "$value" "$POS_TTL"; then
      POS_VALUE=$value
      POS_WRITTEN=$SECONDS
    else
      note "could not write the position key ${ETCD_PREFIX}$POS_DIR/$NODE_NAME; retrying"
    fi
  fi
}

withdraw_position() {
  [ -n "$POS_VALUE" ] || return 0
  etcd_delete_if "$POS_DIR/$NODE_NAME" "$POS_VALUE" || true
  POS_VALUE=""
}

# election_step: one round. 0: this member moved the guard and bootstraps (MODE, GEN set);
# 1: keep waiting (for reports, for the winner to bootstrap, or for an operator).
election_step() {
  # the wait starts again with every generation: positions of an older one do not count
  if [ "$ELECTION_GEN" != "$GUARD_GEN" ]; then
    ELECTION_START=$SECONDS
    ELECTION_GEN=$GUARD_GEN
  fi
  if ! recover_position; then
    note "this member's position cannot be recovered; it takes no part in the recovery election"
    return 1
  fi
  if [ "$MY_UUID" = "$ZERO_UUID" ] || [ "$MY_SEQNO" -lt 0 ]; then
    note "this member has no committed position ($MY_UUID:$MY_SEQNO); waiting to join a live member"
    return 1
  fi
  publish_position waiting "$GUARD_GEN"

  local lines name value gen uuid seqno state
  lines=$(etcd_ls_keys "$POS_DIR") || {
    note "etcd did not answer the positions; retrying"
    return 1
  }
  local -A seq=() uid=()
  local bootstrapping=""
  while IFS=$'\t' read -r name value _; do
    [ -n "$name" ] || continue
    if ! is_expected "$name"; then
      if [ -z "${IGNORED_KEYS[$name]:-}" ]; then
        IGNORED_KEYS[$name]=1
        log "ignoring the position key ${ETCD_PREFIX}$POS_DIR/$name: '$name' is not an expected" \
          "member (${EXPECTED_MEMBERS:-none})"
      fi
      continue
    fi
    read -r gen uuid seqno state < <(jq -r '[.generation, .uuid, .seqno, .state] | map(tostring) | join(" ")' \
      <<<"$value" 2>/dev/null || echo "x x x x")
    [[ "$gen" =~ ^[0-9]+$ ]] && [ "$gen" -eq "$GUARD_GEN" ] || continue
    [[ "$seqno" =~ ^-?[0-9]+$ ]] && [[ "$uuid" =~ ^[0-9a-f-]{36}$ ]] || continue
    [ "$state" = bootstrapping ] && bootstrapping=$name
    seq[$name]=$seqno
    uid[$name]=$uuid
  done <<<"$lines"

  if [ -n "$bootstrapping" ]; then
    note "recovery: $bootstrapping is bootstrapping generation $GUARD_GEN; waiting to join it"
    return 1
  fi

  local total=${#EXPECTED[@]} quorum reported=() missing=() m
  quorum=$((total / 2 + 1))
  for m in "${EXPECTED[@]}"; do
    if [ -n "${seq[$m]:-}" ]; then reported+=("$m=${seq[$m]}"); else missing+=("$m"); fi
  done
  local waited=$((SECONDS - ELECTION_START))
  if [ "${#missing[@]}" -gt 0 ] && [ "$waited" -lt "$RECOVERY_WAIT" ]; then
    note "recovery: no live Primary component; positions reported: ${reported[*]}; waiting for" \
      "${missing[*]} (up to RECOVERY_WAIT=$RECOVERY_WAIT s, then a majority of $quorum suffices)"
    return 1
  fi
  if [ "${#reported[@]}" -lt "$quorum" ]; then
    note "recovery: only ${#reported[@]} of $total members reported a position after" \
      "$RECOVERY_WAIT s (quorum $quorum): missing ${missing[*]}; nothing bootstraps until more" \
      "return (or an operator runs cidemo recover)"
    return 1
  fi

  # the majority's UUID: the one at least a quorum of expected members holds
  local majority="" count
  for m in "${!uid[@]}"; do
    count=0
    for n in "${!uid[@]}"; do [ "${uid[$n]}" = "${uid[$m]}" ] && count=$((count + 1)); done
    [ "$count" -ge "$quorum" ] && majority=${uid[$m]}
  done
  if [ -z "$majority" ]; then
    note "recovery: the members that reported disagree on the cluster UUID and none has a" \
      "majority of $quorum; nothing bootstraps (an operator must decide)"
    return 1
  fi
  if [ "$MY_UUID" != "$majority" ]; then
    withdraw_position
    log "REFUSING to join: this member's data belongs to cluster $MY_UUID, the majority's to" \
      "$majority; it stays out (remove its volume to let it rejoin by a full state transfer)"
    while :; do
      sleep 60 &
      wait $! || true
      log "REFUSING to join: data of cluster $MY_UUID, the majority's is $majority"
    done
  fi

  local best="" best_seqno=-2
  for m in "${EXPECTED[@]}"; do
    [ "${uid[$m]:-}" = "$majority" ] || continue
    if [ "${seq[$m]}" -gt "$best_seqno" ]; then
      best=$m
      best_seqno=${seq[$m]}
    fi
  done
  if [ "$best" != "$NODE_NAME" ]; then
    note "recovery: positions ${reported[*]}${missing:+ (missing ${missing[*]})}; $best has the" \
      "highest seqno $best_seqno and bootstraps; this member ($MY_SEQNO) joins it"
    return 1
  fi

  local next=$((GUARD_GEN + 1)) value
  value=$(jq -cn --arg n "$NODE_NAME" --argjson g "$next" --arg u "$MY_UUID" --argjson s "$MY_SEQNO" \
    '{node: $n, generation: $g, uuid: $u, seqno: $s}')
  local rc=0
  if [ -n "$GUARD_RAW" ]; then
    etcd_cas "$GUARD_KEY" "$value" "$GUARD_RAW" || rc=$?
  else
    etcd_create "$GUARD_KEY" "$value" || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    note "recovery: the bootstrap guard changed under this member (or etcd failed); re-reading it"
    return 1
  fi
  log "recovery: positions ${reported[*]}${missing:+ (missing ${missing[*]})}; this member has the" \
    "highest seqno $MY_SEQNO of cluster $MY_UUID: guard moved to generation $next; bootstrapping"
  MODE=bootstrap
  GEN=$next
  GUARD_GEN=$next
  publish_position bootstrapping "$next"
  return 0
}
