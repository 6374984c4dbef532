#!/bin/bash
# cidemo MariaDB Galera member: etcd (v2) discovery, a bootstrap guard, TTL registration.
# Contract and environment: cidemo_infra/data/images/README.md. Secrets are read from files and never logged.
set -euo pipefail

# One-off commands (galera-position, mariadb, bash) run as given, without starting a member.
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

# shellcheck disable=SC2034
LOG_COMPONENT=galera
# shellcheck source=../common/etcd.sh
. /usr/local/lib/cidemo/etcd.sh
# shellcheck source=../common/announce.sh
. /usr/local/lib/cidemo/announce.sh

SECRETS_DIR=/etc/cidemo/secrets
DATADIR=/var/lib/mysql
RUNDIR=/run/cidemo
GENERATION_FILE=$DATADIR/cidemo-bootstrap-generation
SYNCED_GENERATION_FILE=$DATADIR/cidemo-synced-generation
SST_CNF=$RUNDIR/wsrep-sst.cnf
INIT_SQL=$RUNDIR/init.sql

die() {
  log "FATAL: $*"
  exit 1
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

[ -n "${ETCD_URL:-}" ] || die "ETCD_URL is not set (e.g. http://etcd:2379)"
TTL=${TTL:-10}
if ! is_uint "$TTL" || [ "$TTL" -lt 2 ]; then die "TTL must be an integer >= 2, got '$TTL'"; fi
ETCD_WAIT=${ETCD_WAIT:-60}
is_uint "$ETCD_WAIT" || die "ETCD_WAIT must be a number of seconds, got '$ETCD_WAIT'"
JOIN_TIMEOUT=${JOIN_TIMEOUT:-300}
is_uint "$JOIN_TIMEOUT" || die "JOIN_TIMEOUT must be a number of seconds, got '$JOIN_TIMEOUT'"
AUTO_RECOVERY=${AUTO_RECOVERY:-on}
case "$AUTO_RECOVERY" in
  on | off) ;;
  *) die "AUTO_RECOVERY must be on or off, got '$AUTO_RECOVERY'" ;;
esac
RECOVERY_WAIT=${RECOVERY_WAIT:-120}
is_uint "$RECOVERY_WAIT" || die "RECOVERY_WAIT must be a number of seconds, got '$RECOVERY_WAIT'"
CLUSTER_NAME=${CLUSTER_NAME:-cidemo}
[[ "$CLUSTER_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "CLUSTER_NAME must match [A-Za-z0-9_.-]+, got '$CLUSTER_NAME'"
HOST_ID=$(hostname)
NODE_NAME=${NODE_NAME:-$HOST_ID}
[[ "$NODE_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NODE_NAME must match [A-Za-z0-9_.-]+, got '$NODE_NAME'"
EXPECTED_MEMBERS=${EXPECTED_MEMBERS:-}
if [ "$AUTO_RECOVERY" = on ] && [ -z "$EXPECTED_MEMBERS" ]; then
  log "EXPECTED_MEMBERS is not set: automatic recovery is off (it counts only the members named there)"
  AUTO_RECOVERY=off
fi
if [ "$AUTO_RECOVERY" = on ]; then
  [[ "$EXPECTED_MEMBERS" =~ ^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$ ]] ||
    die "EXPECTED_MEMBERS must list the members' node names (a,b,c), got '$EXPECTED_MEMBERS'"
  [[ ",$EXPECTED_MEMBERS," == *",$NODE_NAME,"* ]] ||
    die "NODE_NAME '$NODE_NAME' is not in EXPECTED_MEMBERS '$EXPECTED_MEMBERS'"
fi
CONTAINER_NAME=${CONTAINER_NAME:-$HOST_ID}
NODE_ADDRESS=${NODE_ADDRESS:-$(first_ipv4)}
# On a cloud node the member shares the host's network and listens on the private address only.
BIND_ADDRESS=${BIND_ADDRESS:-0.0.0.0}
[ -n "$NODE_ADDRESS" ] || die "NODE_ADDRESS is not set and 'hostname -i' gave no IPv4 address"
SST_METHOD=${SST_METHOD:-rsync}
case "$SST_METHOD" in
  rsync | mariabackup) ;;
  *) die "SST_METHOD must be rsync or mariabackup, got '$SST_METHOD'" ;;
esac

GUARD_KEY=/cidemo/galera/$CLUSTER_NAME/bootstrap
MON_DIR=/services/database_mon

cleanup_files() {
  rm -f "$INIT_SQL" "$SST_CNF"
}

trap 'log "stopped by SIGTERM before mariadbd started"; cleanup_files; exit 143' TERM
trap 'log "stopped by SIGINT before mariadbd started"; cleanup_files; exit 130' INT

log "member $NODE_NAME (container $CONTAINER_NAME, host $HOST_ID) address $NODE_ADDRESS," \
  "cluster $CLUSTER_NAME, sst $SST_METHOD, etcd $ETCD_URL prefix '${ETCD_PREFIX}' ttl $TTL s"

read_secret() {
  local file=$SECRETS_DIR/$1
  [ -r "$file" ] || die "secret file $file is missing or unreadable"
  local value
  value=$(<"$file")
  [ -n "$value" ] || die "secret file $file is empty"
  printf '%s' "$value"
}

sql_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\'/\\\'}
  printf "'%s'" "$s"
}

cnf_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

grastate_field() {
  sed -n "s/^$1:[[:space:]]*//p" "$DATADIR/grastate.dat" 2>/dev/null | head -n1
}

# has_cluster_state: the datadir has been part of a cluster (grastate.dat with a real uuid).
has_cluster_state() {
  local uuid
  uuid=$(grastate_field uuid)
  [ -n "$uuid" ] && [ "$uuid" != 00000000-0000-0000-0000-000000000000 ]
}

stored_generation() {
  local g=0 file=${1:-$GENERATION_FILE}
  [ -f "$file" ] && g=$(<"$file")
  is_uint "$g" || g=0
  printf '%s' "$g"
}

# shellcheck source=recovery.sh
. /usr/local/lib/cidemo/galera-recovery.sh

# 1. etcd
etcd_wait_ready "$ETCD_WAIT" || die "etcd is not reachable at $ETCD_URL after $ETCD_WAIT s (ETCD_WAIT); giving up"

# 2. datadir and runtime dirs
install -d -o mysql -g mysql -m 0755 /run/mysqld
install -d -o mysql -g mysql -m 0700 "$RUNDIR"
[ "$(stat -c %U "$DATADIR")" = mysql ] || chown mysql:mysql "$DATADIR"
if [ ! -d "$DATADIR/mysql" ]; then
  log "initialising an empty datadir"
  # wsrep off: the system tables are local, and the SST method would refuse to start without a cluster address
  mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=socket \
    --skip-test-db --wsrep-on=OFF >/tmp/install-db.log 2>&1 || {
    grep -E '\[(ERROR|Warning)\]' /tmp/install-db.log | head -n 20 >&2 || true
    rm -rf "${DATADIR:?}/mysql"
    die "mariadb-install-db failed"
  }
fi

# 3. bootstrap guard: bootstrap only if we create it, or if it names us with a newer generation
# read_guard: 0 present (sets GUARD_NODE, GUARD_GEN), 1 absent, 2 etcd did not answer
STORED_GEN=$(stored_generation)
MODE="join"
GEN=0
GUARD_NODE=""
GUARD_GEN=0
GUARD_RAW=""
GUARD_UUID=""
GUARD_SEQNO=""

# read_guard also sets GUARD_RAW (for compare-and-swap) and, after an automatic recovery,
# GUARD_UUID and GUARD_SEQNO: the position the cluster was bootstrapped from.
read_guard() {
  local value rc=0
  value=$(etcd_get "$GUARD_KEY") || rc=$?
  case "$rc" in
    0) ;;
    1) GUARD_NODE=""; GUARD_GEN=0; GUARD_RAW=""; GUARD_UUID=""; GUARD_SEQNO=""; return 1 ;;
    *) return 2 ;;
  esac
  GUARD_RAW=$value
  GUARD_NODE=$(jq -r '.node // empty' <<<"$value" 2>/dev/null) || GUARD_NODE=""
  GUARD_GEN=$(jq -r '.generation // empty' <<<"$value" 2>/dev/null) || GUARD_GEN=""
  GUARD_UUID=$(jq -r '.uuid // empty' <<<"$value" 2>/dev/null) || GUARD_UUID=""
  GUARD_SEQNO=$(jq -r '.seqno // empty' <<<"$value" 2>/dev/null) || GUARD_SEQNO=""
  if [ -z "$GUARD_NODE" ] || ! is_uint "$GUARD_GEN"; then
    die "the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} holds '$value', not {\"node\":..,\"generation\":N}"
  fi
  return 0
}

guard_names_us() {
  [ "$GUARD_NODE" = "$NODE_NAME" ] && [ "$GUARD_GEN" -gt "$STORED_GEN" ]
}

guard_rc=0
read_guard || guard_rc=$?
[ "$guard_rc" -ne 2 ] || die "cannot read the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} from $ETCD_URL"
if [ "$guard_rc" -eq 1 ]; then
  if has_cluster_state; then
    log "the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} is absent, but this datadir belongs to cluster" \
      "$(grastate_field uuid): not starting a new cluster over existing data; joining instead"
  else
    create_rc=0
    etcd_create "$GUARD_KEY" "$(jq -cn --arg n "$NODE_NAME" '{node: $n, generation: 1}')" || create_rc=$?
    case "$create_rc" in
      0) read_guard || die "cannot read the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} it created"; STORED_GEN=0 ;;
      1) read_guard || die "cannot read the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} after losing the race" ;;
      *) die "cannot create the bootstrap guard ${ETCD_PREFIX}${GUARD_KEY} on $ETCD_URL" ;;
    esac
  fi
fi
if [ -n "$GUARD_NODE" ] && guard_names_us; then
  MODE=bootstrap
  GEN=$GUARD_GEN
fi

# 4. a joiner needs a live member: a key under database_mon whose address is not ours
live_members() {
  local values
  values=$(etcd_ls "$MON_DIR") || return 2
  awk -F: -v me="$NODE_ADDRESS" 'NF == 2 && $1 != me && $2 ~ /^[0-9]+$/ { print }' <<<"$values" |
    LC_ALL=C sort -u | paste -sd, -
}

# fresh_members: like live_members, but only keys a running member refreshed since this start:
# keys that appeared after the first look, or whose expiration moved. A crashed member's keys
# linger until their TTL runs out, and must not pass for a live Primary component. Sets PEERS
# (not run in a subshell: it remembers what it saw).
declare -A SEEN_EXPIRATION=()
FIRST_LOOK=1
fresh_members() {
  local lines name value exp out=()
  PEERS=""
  lines=$(etcd_ls_keys "$MON_DIR") || return 2
  while IFS=$'\t' read -r name value exp; do
    [ -n "$name" ] || continue
    [[ "$value" =~ ^[0-9.]+:[0-9]+$ ]] || continue
    [ "${value%%:*}" = "$NODE_ADDRESS" ] && continue
    if [ "$FIRST_LOOK" -eq 0 ] && { [ -z "${SEEN_EXPIRATION[$name]+x}" ] ||
      [ "${SEEN_EXPIRATION[$name]}" != "$exp" ]; }; then
      out+=("$value")
    fi
    SEEN_EXPIRATION[$name]=$exp
  done <<<"$lines"
  FIRST_LOOK=0
  [ "${#out[@]}" -gt 0 ] || return 0
  PEERS=$(printf '%s\n' "${out[@]}" | LC_ALL=C sort -u | paste -sd, -)
}

PEERS=""
if [ "$MODE" = join ]; then
  start=$SECONDS
  next_log=0
  ELECTING=0
  [ "$AUTO_RECOVERY" = on ] && has_cluster_state && ELECTING=1
  while :; do
    rc=0
    if [ "$ELECTING" -eq 1 ]; then
      fresh_members || rc=$?
    else
      PEERS=$(live_members) || rc=$?
    fi
    [ -n "$PEERS" ] && break
    guard_rc=0
    read_guard || guard_rc=$?
    if [ "$guard_rc" -eq 0 ] && guard_names_us; then
      MODE=bootstrap
      GEN=$GUARD_GEN
      log "the bootstrap guard now names this member (generation $GEN)"
      break
    fi
    waited=$((SECONDS - start))
    # a live member refreshes its keys every TTL/2: none refreshed for TTL + 2 s means none is live
    if [ "$ELECTING" -eq 1 ] && [ "$guard_rc" -ne 2 ] && [ "$waited" -ge $((TTL + 2)) ]; then
      if election_step; then break; fi
    elif [ "$ELECTING" -eq 0 ] && [ "$waited" -ge "$JOIN_TIMEOUT" ]; then
      log "the bootstrap guard names ${GUARD_NODE:-nobody} (generation $GUARD_GEN); this member $NODE_NAME" \
        "last bootstrapped generation $STORED_GEN"
      die "no live member registered under ${ETCD_PREFIX}${MON_DIR}/ after $JOIN_TIMEOUT s;" \
        "the cluster needs a bootstrap: run \`cidemo recover\`"
    fi
    if [ "$waited" -ge "$next_log" ] && [ "$ELECTION_START" -lt 0 ]; then
      [ "$rc" -eq 0 ] || log "etcd did not answer the member list; retrying"
      log "waiting for a live member under ${ETCD_PREFIX}${MON_DIR}/ (${waited}/${JOIN_TIMEOUT} s;" \
        "guard: ${GUARD_NODE:-none} generation $GUARD_GEN)"
      next_log=$((next_log + 10))
    fi
    sleep 1
  done
fi

# 5. recover the committed position so that a joiner gets IST, not SST: grastate.dat says -1 after a
# kill, and can hold a stale seqno (an rsync donor writes it when it pauses)
START_POS=()
if has_cluster_state; then
  if recover_position; then
    if [ "$MY_SEQNO" -ge 0 ]; then
      START_POS=(--wsrep-start-position="$MY_UUID:$MY_SEQNO")
    fi
  else
    log "could not recover the position; the member may need a full SST"
  fi
fi
if [ "$MODE" = join ]; then withdraw_position; fi

# A member that was not part of the last automatic recovery and holds write-sets beyond the
# position the cluster was bootstrapped from has a history the cluster never had: joining by
# IST would mix the two, so it discards its state and takes a full state transfer.
if [ "$MODE" = join ] && [ -n "$GUARD_UUID" ] && [[ "$GUARD_SEQNO" =~ ^[0-9]+$ ]] && has_cluster_state &&
  [ "$(stored_generation "$SYNCED_GENERATION_FILE")" -lt "$GUARD_GEN" ]; then
  recover_position || true
  if [ "$MY_UUID" = "$GUARD_UUID" ] && [ "$MY_SEQNO" -gt "$GUARD_SEQNO" ]; then
    log "this member's data reaches seqno $MY_SEQNO, beyond the seqno $GUARD_SEQNO that generation" \
      "$GUARD_GEN was bootstrapped from without it: discarding its state for a full state transfer"
    mv -f "$DATADIR/grastate.dat" "$DATADIR/grastate.dat.diverged"
    START_POS=()
  fi
fi

# 6. secrets into 0600 files owned by mysql; SQL users only when a new cluster starts
SST_PASSWORD=$(read_secret sst_password)
umask 077
{
  printf '[mysqld]\n'
  printf 'wsrep_sst_auth = %s\n' "$(cnf_string "sst:$SST_PASSWORD")"
} >"$SST_CNF"
chown mysql:mysql "$SST_CNF"
unset SST_PASSWORD

ARGS=(--defaults-extra-file="$SST_CNF" --user=mysql --datadir="$DATADIR"
  --wsrep-cluster-name="$CLUSTER_NAME" --wsrep-node-name="$NODE_NAME"
  --wsrep-node-address="$NODE_ADDRESS" --wsrep-node-incoming-address="$NODE_ADDRESS:3306"
  --wsrep-sst-method="$SST_METHOD" --bind-address="$BIND_ADDRESS")
# gcache holds recent write-sets for IST: a member that restarts during a clone rejoins by IST, not
# by a full SST. The group-communication send windows (default 4 and 2 messages) and flow control
# (default 16 queued write-sets) throttle a stream of clone chunks to a crawl on a LAN.
PROVIDER_OPTIONS="gcache.size=256M;evs.send_window=512;evs.user_send_window=256;gcs.fc_limit=128"
if [ "$BIND_ADDRESS" != 0.0.0.0 ]; then
  PROVIDER_OPTIONS+=";gmcast.listen_addr=tcp://$BIND_ADDRESS:4567;ist.recv_addr=$BIND_ADDRESS:4568"
  ARGS+=(--wsrep-sst-receive-address="$BIND_ADDRESS:4444")
fi
ARGS+=(--wsrep-provider-options="$PROVIDER_OPTIONS")
# MySQL over TLS with the node's certificate of the site CA (copied in as /etc/cidemo/tls/server*.pem,
# root-only; mariadbd reads its mysql-owned copies): the tool verifies it and refuses a server without
if [ -s /etc/cidemo/tls/server.pem ] && [ -s /etc/cidemo/tls/server-key.pem ] && [ -s /etc/cidemo/tls/ca.pem ]; then
  for f in ca.pem server.pem server-key.pem; do
    install -o mysql -g mysql -m 0600 "/etc/cidemo/tls/$f" "$RUNDIR/mysql-$f"
  done
  ARGS+=(--ssl-ca="$RUNDIR/mysql-ca.pem" --ssl-cert="$RUNDIR/mysql-server.pem"
    --ssl-key="$RUNDIR/mysql-server-key.pem")
fi

NEW_CLUSTER=0
if [ "$MODE" = bootstrap ]; then
  if has_cluster_state; then
    log "bootstrapping cluster $CLUSTER_NAME from this member's data (guard generation $GEN," \
      "uuid $(grastate_field uuid)) with --wsrep-new-cluster"
    sed -i 's/^safe_to_bootstrap:.*/safe_to_bootstrap: 1/' "$DATADIR/grastate.dat"
  else
    NEW_CLUSTER=1
    [ "$GEN" -le 1 ] || log "WARNING: guard generation $GEN names this member but its datadir is empty"
    log "bootstrapping a NEW cluster $CLUSTER_NAME (guard generation $GEN) with --wsrep-new-cluster"
  fi
  ARGS+=(--wsrep-new-cluster --wsrep-cluster-address=gcomm://)
else
  log "joining cluster $CLUSTER_NAME via gcomm://$PEERS"
  ARGS+=(--wsrep-cluster-address="gcomm://$PEERS")
fi
ARGS+=("${START_POS[@]}")

if [ "$NEW_CLUSTER" -eq 1 ]; then
  ROOT_PASSWORD=$(read_secret root_password)
  MONITOR_PASSWORD=$(read_secret monitor_password)
  SST_PASSWORD=$(read_secret sst_password)
  {
    printf "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY %s;\n" "$(sql_string "$ROOT_PASSWORD")"
    printf "GRANT ALL PRIVILEGES ON *.* TO 'root'@'%%' WITH GRANT OPTION;\n"
    printf "CREATE USER IF NOT EXISTS 'sst'@'localhost' IDENTIFIED BY %s;\n" "$(sql_string "$SST_PASSWORD")"
    printf "GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO 'sst'@'localhost';\n"
    printf "CREATE USER IF NOT EXISTS 'cidemo_monitor'@'%%' IDENTIFIED BY %s;\n" "$(sql_string "$MONITOR_PASSWORD")"
    printf "GRANT USAGE, REPLICATION CLIENT, SLAVE MONITOR, SHOW DATABASES ON *.* TO 'cidemo_monitor'@'%%';\n"
    # MaxScale's services authenticate clients with the users of these tables
    for t in user db tables_priv columns_priv procs_priv proxies_priv roles_mapping; do
      printf "GRANT SELECT ON mysql.%s TO 'cidemo_monitor'@'%%';\n" "$t"
    done
    printf "CREATE USER IF NOT EXISTS 'haproxy_check'@'%%';\n"
    printf "GRANT USAGE ON *.* TO 'haproxy_check'@'%%';\n"
    printf "DROP USER IF EXISTS ''@'localhost';\n"
    printf "DROP USER IF EXISTS ''@%s;\n" "$(sql_string "$HOST_ID")"
  } >"$INIT_SQL"
  chown mysql:mysql "$INIT_SQL"
  unset ROOT_PASSWORD MONITOR_PASSWORD SST_PASSWORD
  ARGS+=(--init-file="$INIT_SQL")
fi
umask 022

# 7. run mariadbd; register while Synced; deregister and shut down cleanly on SIGTERM/SIGINT
announce_add "/services/database_port/$HOST_ID:$CONTAINER_NAME:3306" "$NODE_ADDRESS:3306"
announce_add "/services/database_sst/$HOST_ID:$CONTAINER_NAME:4444" "$NODE_ADDRESS:4444"
announce_add "/services/database_mon/$HOST_ID:$CONTAINER_NAME:4567" "$NODE_ADDRESS:4567"
announce_add "/services/database_ssi/$HOST_ID:$CONTAINER_NAME:4568" "$NODE_ADDRESS:4568"

wsrep_state() {
  timeout 5 mariadb --connect-timeout=2 -N -B \
    -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_ready', 'wsrep_cluster_size')" \
    2>/dev/null | awk '{ v[$1] = $2 } END { print v["wsrep_local_state_comment"], v["wsrep_ready"], v["wsrep_cluster_size"] }'
}

log "starting mariadbd ${ARGS[*]}"
mariadbd "${ARGS[@]}" &
MARIADBD=$!

TERM_SIGNAL=""
trap 'TERM_SIGNAL=TERM' TERM
trap 'TERM_SIGNAL=INT' INT

SYNCED_ONCE=0
LAST_REFRESH=-100000
HALF_TTL=$((TTL / 2))
while [ -z "$TERM_SIGNAL" ] && kill -0 "$MARIADBD" 2>/dev/null; do
  read -r state ready size <<<"$(wsrep_state)" || true
  if [ "${state:-}" = Synced ] && [ "${ready:-}" = ON ]; then
    interval=1
    if [ "$SYNCED_ONCE" -eq 0 ]; then
      SYNCED_ONCE=1
      rm -f "$INIT_SQL"
      if [ "$MODE" = bootstrap ]; then
        printf '%s\n' "$GEN" >"$GENERATION_FILE.tmp"
        chown mysql:mysql "$GENERATION_FILE.tmp"
        mv -f "$GENERATION_FILE.tmp" "$GENERATION_FILE"
        log "bootstrapped generation $GEN stored in $GENERATION_FILE"
      fi
      printf '%s\n' "$GUARD_GEN" >"$SYNCED_GENERATION_FILE.tmp"
      chown mysql:mysql "$SYNCED_GENERATION_FILE.tmp"
      mv -f "$SYNCED_GENERATION_FILE.tmp" "$SYNCED_GENERATION_FILE"
      log "Synced, wsrep_ready ON, cluster size $size"
    fi
    if [ "$ANNOUNCE_STATE" != registered ] || [ $((SECONDS - LAST_REFRESH)) -ge "$HALF_TTL" ]; then
      if announce_refresh; then LAST_REFRESH=$SECONDS; fi
    fi
  else
    # until the first Synced, asked often: the tool's placement waits for this registration
    interval=0.5
    [ "$SYNCED_ONCE" -eq 1 ] || interval=0.2
    announce_pause "wsrep state is '${state:-unknown}', wsrep_ready '${ready:-unknown}'"
    # the bootstrapping member says so until Synced, so that no other election starts meanwhile
    if [ "$MODE" = bootstrap ] && [ "$SYNCED_ONCE" -eq 0 ] && [ -n "$MY_UUID" ]; then
      publish_position bootstrapping "$GEN"
    fi
  fi
  sleep "$interval" &
  wait $! 2>/dev/null || true
done

announce_withdraw || true
if [ -n "$TERM_SIGNAL" ]; then
  log "got SIG$TERM_SIGNAL: shutting mariadbd down"
  kill -TERM "$MARIADBD" 2>/dev/null || true
fi
while :; do
  rc=0
  wait "$MARIADBD" 2>/dev/null || rc=$?
  kill -0 "$MARIADBD" 2>/dev/null || break
done
cleanup_files
log "mariadbd exited with code $rc"
exit "$rc"
