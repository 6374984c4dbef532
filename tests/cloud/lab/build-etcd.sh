#!/usr/bin/env bash
# Build etcd and etcdctl for the lab nodes from their Go modules (tests/cloud/lab/etcd/go.mod), at
# the release the renderer pins: the lab's etcd-member.service runs this binary and refuses to start
# when the user-data's ETCD_IMAGE_TAG names another version.
#
#   tests/cloud/lab/build-etcd.sh [OUTDIR]
#
# OUTDIR defaults to <cache>/lab/bin, where <cache> is scripts/terraform-tools.sh's cache root.
# A second run builds nothing while both binaries there report the pinned version. stdout holds only
# OUTDIR (the last line); progress goes to stderr.
set -euo pipefail

LAB=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$LAB/../../.." && pwd)
WRAPPER=$LAB/etcd
RENDERER=$REPO/cidemo_infra/render/cloudconfig.py

cache=${CIDEMO_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cidemo/terraform-tools}
out=${1:-$cache/lab/bin}
say() { echo "build-etcd: $*" >&2; }
die() { say "$*"; exit 1; }

# NodeContext's default `etcd_image_tag: str = "v3.5.21"`; an arch suffix (-arm64) names the same release
tag=$(sed -n 's/^[[:space:]]*etcd_image_tag:[^=]*=[[:space:]]*"\(v[^"]*\)".*/\1/p' "$RENDERER" | head -n 1)
[[ -n $tag ]] || die "no etcd_image_tag default found in $RENDERER"
version=${tag%%-*}
version=${version#v}

module_version() { awk -v m="$1" '$1 == m { print $2; exit }' "$WRAPPER/go.mod"; }
for module in go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3; do
  pinned=$(module_version "$module")
  [[ $pinned == "v$version" ]] || die "$WRAPPER/go.mod requires $module ${pinned:-nothing}, the renderer pins" \
    "etcd $tag; run: cd $WRAPPER && go get go.etcd.io/etcd/server/v3@v$version" \
    "go.etcd.io/etcd/etcdctl/v3@v$version && go mod tidy"
done

# `etcd --version` -> "etcd Version: 3.5.21", `etcdctl version` -> "etcdctl version: 3.5.21"
built_version() { "$1" "$2" 2>/dev/null | sed -n '1s/^.*[Vv]ersion: *//p'; }
is_built() {
  [[ -x $out/etcd && -x $out/etcdctl ]] &&
    [[ $(built_version "$out/etcd" --version) == "$version" ]] &&
    [[ $(built_version "$out/etcdctl" version) == "$version" ]]
}

if is_built; then
  say "etcd $version already built in $out"
else
  command -v go >/dev/null 2>&1 || export PATH=$PATH:/usr/local/go/bin
  command -v go >/dev/null 2>&1 || die "go is not installed: it builds etcd; install Go >= 1.24"
  mkdir -p "$out"
  # upstream's build.sh stamps the commit; the proxy names it in the top module's Origin
  sha=$(cd "$WRAPPER" && go list -m -f '{{with .Origin}}{{.Hash}}{{end}}' "go.etcd.io/etcd/v3@v$version" 2>/dev/null |
    cut -c1-7) || sha=
  [[ -n $sha ]] || say "the commit of etcd v$version is unknown; etcd --version will say 'Not provided'"
  ldflags="-s -w${sha:+ -X go.etcd.io/etcd/api/v3/version.GitSHA=$sha}"
  say "building etcd and etcdctl $version from their Go modules into $out (about a minute, once)"
  for binary in etcd:go.etcd.io/etcd/server/v3 etcdctl:go.etcd.io/etcd/etcdctl/v3; do
    # go install would name the server "server"; -o names it and writes through a temporary file
    (cd "$WRAPPER" && GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
      go build -trimpath -ldflags "$ldflags" -o "$out/${binary%%:*}.tmp" "${binary#*:}") >&2 ||
      die "go build ${binary#*:} in $WRAPPER failed (output above)"
    mv "$out/${binary%%:*}.tmp" "$out/${binary%%:*}"
  done
  is_built || die "the binaries in $out do not report etcd $version"
  say "built: $("$out/etcd" --version | tr '\n' ' ')"
fi
echo "$out"
