#!/bin/bash
# Build the cidemo base image (Debian bookworm, minbase, trimmed like debian:bookworm-slim) with
# debootstrap from a Debian mirror, and `docker import` it. No registry needed.
#
#   mkbase.sh [--force] [IMAGE]          IMAGE defaults to cidemo/debian:bookworm-slim
#
# Environment: MIRROR, SECURITY_MIRROR (default: from the host's apt sources, else deb.debian.org),
# SUITE (bookworm), DEBOOTSTRAP_TIMEOUT (seconds, 900), TMPDIR.
set -euo pipefail

log() { printf '[mkbase %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=0
image=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (valid: --force, --help)" ;;
    *) [ -z "$image" ] || die "only one IMAGE argument is allowed"; image=$1 ;;
  esac
  shift
done
image=${image:-cidemo/debian:bookworm-slim}
suite=${SUITE:-bookworm}

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs it)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap)"
command -v docker >/dev/null || die "the docker CLI is not installed"
docker version >/dev/null 2>&1 || die "the Docker engine does not answer"

if [ "$force" -eq 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  log "image $image exists; nothing to do (use --force to rebuild)"
  exit 0
fi

# First http(s) URI of the host's apt sources whose path ends in the given component (debian, debian-security).
host_mirror() {
  local want=$1 files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  grep -hoE '^[[:space:]]*(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)https?://[^[:space:]]+' "${files[@]}" 2>/dev/null \
    | grep -oE 'https?://[^[:space:]]+' | sed 's:/*$::' | grep -E "/${want}\$" | head -n1 || true
}
mirror=${MIRROR:-$(host_mirror debian)}
mirror=${mirror:-http://deb.debian.org/debian}
security_mirror=${SECURITY_MIRROR:-$(host_mirror debian-security)}
security_mirror=${security_mirror:-http://deb.debian.org/debian-security}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/cidemo-mkbase.XXXXXX")
cleanup() {
  local m
  set +e
  # a failed debootstrap can leave proc/sys mounted inside the chroot: unmount before removing
  findmnt -rn -o TARGET 2>/dev/null | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
root=$work/rootfs

t0=$SECONDS
log "debootstrap --variant=minbase $suite from $mirror (log: $work/debootstrap.log)"
if ! timeout "${DEBOOTSTRAP_TIMEOUT:-900}" debootstrap --variant=minbase "$suite" "$root" "$mirror" \
      >"$work/debootstrap.log" 2>&1; then
  tail -n 25 "$work/debootstrap.log" >&2 || true
  die "debootstrap failed or timed out after ${DEBOOTSTRAP_TIMEOUT:-900} s (mirror $mirror); see the lines above"
fi
log "debootstrap done in $((SECONDS - t0)) s"

log "trimming the rootfs like debian:$suite-slim"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/archives/partial/* "$root"/var/cache/apt/*.bin \
       "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
       "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# host-specific files copied by debootstrap; docker provides its own at run time
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"

cat >"$root/etc/dpkg/dpkg.cfg.d/01-docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
cat >"$root/etc/apt/apt.conf.d/01-docker-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
CFG
cat >"$root/etc/apt/sources.list" <<SRC
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
SRC

log "importing as $image"
tar --numeric-owner -C "$root" -c . | docker import \
  -c 'CMD ["/bin/bash"]' \
  -c 'ENV LANG=C.UTF-8' \
  -c "LABEL org.opencontainers.image.title=cidemo-debian-$suite-slim" \
  -c "LABEL org.opencontainers.image.description=\"debootstrap --variant=minbase $suite from $mirror, trimmed\"" \
  -c "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  - "$image" >/dev/null
log "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')) in $((SECONDS - t0)) s"
