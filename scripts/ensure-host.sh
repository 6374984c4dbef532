#!/usr/bin/env bash
# Make this machine able to run the site and the tests: Debian packages (as root) and a running
# Docker engine. Idempotent; prints what it does; exits non-zero with one line when it cannot.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have dockerd || need_pkgs+=(docker.io)
have etcd || need_pkgs+=(etcd-server)
have etcdctl || need_pkgs+=(etcd-client)
have debootstrap || need_pkgs+=(debootstrap)
have docker-compose || need_pkgs+=(docker-compose)
have socat || need_pkgs+=(socat)
have mkfs.xfs || need_pkgs+=(xfsprogs) # the branch store (cidemo_infra/databases/store.py)

if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! have apt-get; then
    echo "ensure-host: missing ${need_pkgs[*]}; install them (Debian: apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
  echo "ensure-host: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "ensure-host: no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}; start one" >&2
  exit 1
fi
echo "ensure-host: starting dockerd (log: /var/log/cidemo-dockerd.log)" >&2
if have systemctl && systemctl start docker 2>/dev/null; then
  :
else
  setsid nohup dockerd >/var/log/cidemo-dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "ensure-host: dockerd did not answer within 30 s; see /var/log/cidemo-dockerd.log" >&2
exit 1
