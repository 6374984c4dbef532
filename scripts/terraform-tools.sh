#!/usr/bin/env bash
# Provide Terraform and the OpenStack provider without the public registry: build the provider from
# its Go module into a filesystem mirror, build OpenTofu where no terraform/tofu >= 1.5 is on the
# PATH, and write a CLI configuration that takes the provider from that mirror.
#
# stdout holds only the result, so `export $(make -s terraform-tools)` works:
#   TF_BINARY=<path>             only when the binary is not on the PATH
#   TF_CLI_CONFIG_FILE=<path>    always the last line
# Progress goes to stderr. A second run builds nothing. Operators who reach the registry need none
# of this: without TF_CLI_CONFIG_FILE, `terraform init` uses the registry as before.
#
#   --binary      only the binary: build OpenTofu if needed, print TF_BINARY when it is not on PATH
#   --site FILE   what `make provision|plan|destroy` needs for that site: nothing unless its target
#                 is openstack; then the binary (built if missing), and the mirror only where it
#                 is already built or TF_MIRROR=1 asks for it (otherwise the public registry)
set -euo pipefail

PROVIDER_MODULE=github.com/terraform-provider-openstack/terraform-provider-openstack/v3
PROVIDER_VERSION=3.4.0
# OpenTofu's version is the one tests/tools/tofu/go.mod requires (its `replace` line needs a wrapper)
TOFU_WRAPPER=$(cd "$(dirname "$0")/../tests/tools/tofu" && pwd)
TOFU_VERSION=$(awk '$1 == "github.com/opentofu/opentofu" { sub(/^v/, "", $2); print $2 }' "$TOFU_WRAPPER/go.mod")
MIN_VERSION=1.5

cache=${CIDEMO_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cidemo/terraform-tools}
mirror=$cache/mirror
config=$cache/terraform.rc
say() { echo "terraform-tools: $*" >&2; }
die() { say "$*"; exit 1; }

mode=all
case "${1:-}" in
  "") ;;
  --binary) mode=binary ;;
  --site)
    [[ -n ${2:-} ]] || die "--site needs the site file"
    # the site loader checks the file; this only decides whether Terraform is needed at all
    grep -Eq '^target:[[:space:]]*["'"'"']?openstack' "$2" 2>/dev/null || exit 0
    mode=site
    ;;
  *) die "unknown option '$1' (valid: --binary, --site FILE)" ;;
esac

goarch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "unsupported machine $(uname -m): the mirror is built for amd64 or arm64" ;;
  esac
}
platform=linux_$(goarch)

# `terraform version -json` (terraform, tofu) -> "1.11.4"; empty when the binary does not answer.
binary_version() {
  "$1" version -json 2>/dev/null |
    sed -n 's/.*"terraform_version"[[:space:]]*:[[:space:]]*"\([0-9][0-9.]*\).*/\1/p' | head -n 1
}

new_enough() {
  [[ -n $1 ]] && [[ $(printf '%s\n%s\n' "$MIN_VERSION" "$1" | sort -V | head -n 1) == "$MIN_VERSION" ]]
}

# The binary to use: TF_BINARY if set, else terraform or tofu on the PATH, else the built tofu.
# Prints "<path> <on-path:yes|no>"; empty when there is none yet.
find_binary() {
  local candidate path version
  for candidate in ${TF_BINARY:-terraform tofu}; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    version=$(binary_version "$path")
    if new_enough "$version"; then
      echo "$path yes"
      return
    fi
    say "$path is version ${version:-unknown}; need >= $MIN_VERSION"
  done
  if [[ -x $cache/bin/tofu ]] && new_enough "$(binary_version "$cache/bin/tofu")"; then
    echo "$cache/bin/tofu no"
  fi
}

need_go() {
  command -v go >/dev/null 2>&1 && return
  [[ -x /usr/local/go/bin/go ]] && export PATH=$PATH:/usr/local/go/bin && return
  die "go is not installed: it builds the provider (and OpenTofu); install Go >= 1.24"
}

build_tofu() {
  need_go
  say "building OpenTofu $TOFU_VERSION from its Go module (a few minutes, once)"
  mkdir -p "$cache/bin"
  (cd "$TOFU_WRAPPER" && GOBIN=$cache/bin GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" github.com/opentofu/opentofu/cmd/tofu) >&2 ||
    die "building OpenTofu $TOFU_VERSION in $TOFU_WRAPPER failed (output above)"
}

provider_dir() { echo "$mirror/$1/terraform-provider-openstack/openstack/$PROVIDER_VERSION/$platform"; }
provider_file() { echo "$(provider_dir "$1")/terraform-provider-openstack_v$PROVIDER_VERSION"; }

build_provider() {
  need_go
  say "building terraform-provider-openstack $PROVIDER_VERSION from its Go module (a few minutes, once)"
  local out=$cache/build
  mkdir -p "$out"
  GOBIN=$out GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "$PROVIDER_MODULE@v$PROVIDER_VERSION" >&2 ||
    die "go install $PROVIDER_MODULE@v$PROVIDER_VERSION failed (output above)"
  # terraform reads registry.terraform.io/..., tofu registry.opentofu.org/...: serve both
  local host
  for host in registry.terraform.io registry.opentofu.org; do
    mkdir -p "$(provider_dir "$host")"
    install -m 0755 "$out/terraform-provider-openstack" "$(provider_file "$host").tmp"
    mv "$(provider_file "$host").tmp" "$(provider_file "$host")"
  done
  rm -rf "$out"
}

write_config() {
  local tmp=$config.tmp
  cat >"$tmp" <<EOF
# Written by cidemo's scripts/terraform-tools.sh: the OpenStack provider comes from a local
# filesystem mirror built from its Go module; every other provider from its registry as usual.
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/terraform-provider-openstack/openstack", "registry.opentofu.org/terraform-provider-openstack/openstack"]
  }
  direct {
    exclude = ["registry.terraform.io/terraform-provider-openstack/openstack", "registry.opentofu.org/terraform-provider-openstack/openstack"]
  }
}
EOF
  mv "$tmp" "$config"
}

have_provider() { [[ -x $(provider_file registry.terraform.io) && -x $(provider_file registry.opentofu.org) ]]; }

mkdir -p "$cache"
found=$(find_binary)
if [[ -z $found ]]; then
  build_tofu
  found=$(find_binary)
  [[ -n $found ]] || die "the built $cache/bin/tofu does not answer 'tofu version -json'"
fi
if [[ -n $found && ${found#* } == no ]]; then
  echo "TF_BINARY=${found% *}"
fi
[[ $mode == binary ]] && exit 0

if ! have_provider; then
  [[ $mode == site && ${TF_MIRROR:-} != 1 ]] && exit 0
  build_provider
fi
write_config
echo "TF_CLI_CONFIG_FILE=$config"
