#!/usr/bin/env bash
# The package as a user installs it: build the wheel from this checkout's files, check that it holds
# every file of cidemo_infra/, install it into a fresh virtualenv outside the checkout, and from an
# empty directory run `cidemo schema`, `cidemo render` and `cidemo plan` of the example sites
# (infra/sites/*.yaml, copied there; `plan` is itself the dry run). Compared with the checkout's
# cidemo: the schema, the local sites' plans and the project images' tags must be identical.
# OpenStack sites: render, then plan up to the cloud. plan renders and runs `terraform init` on the
# packaged module (the provider from scripts/terraform-tools.sh's mirror), then must stop at the
# site's cloud, which an empty clouds.yaml does not have: no cloud is contacted.
# Needs the checkout's .venv (make venv), a Docker engine (a local site's plan reads it) and the
# terraform tools (built once, cached). Exit 0: all as expected; 1: the first difference, named.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
checkout_py=$repo/.venv/bin/python
say() { echo "wheel-check: $*"; }
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }
[[ -x $checkout_py ]] || fail "no $checkout_py; run make venv"
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/cidemo-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The wheel, from the files a clean clone would have plus new ones (no stale build/ directory)
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$checkout_py" -m pip wheel -q --no-deps --disable-pip-version-check -w "$work/dist" "$work/src" \
  2>"$work/build.log" || { cat "$work/build.log" >&2; fail "the wheel does not build"; }
wheel=$(echo "$work"/dist/cidemo_infra-*.whl)
[[ -f $wheel ]] || fail "no wheel in $work/dist"
git ls-files -z cidemo_infra | "$checkout_py" -c '
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [f for f in sys.stdin.read().split("\0") if f and f not in names]
sys.exit(f"the wheel lacks {len(missing)} file(s) of cidemo_infra/: {missing[:5]}" if missing else 0)
' "$wheel" || fail "see the line above"
say "built $(basename "$wheel") ($(( $(date +%s) - start )) s); it holds every file of cidemo_infra/"

# A fresh virtualenv outside the checkout; the checkout's pip installs into it
install_start=$(date +%s)
python3 -m venv --without-pip "$work/venv"
"$checkout_py" -m pip --python "$work/venv/bin/python" install -q --disable-pip-version-check \
  "$wheel" || fail "the wheel does not install into a fresh virtualenv"
say "installed with its dependencies in $(( $(date +%s) - install_start )) s"

run=$work/run
mkdir -p "$run/infra"
cp -r infra/sites "$run/infra/sites"
cp -r examples "$run/examples"  # local.yaml's environments.build is ../../examples/guestbook
echo "clouds: {}" >"$work/clouds.yaml"
tf_env=$(bash scripts/terraform-tools.sh)
# shellcheck disable=SC2086 # one VAR=value per word
export $tf_env
while IFS= read -r var; do unset "$var"; done < <(env | sed -n 's/^\(OS_[A-Z_]*\)=.*/\1/p')
export OS_CLIENT_CONFIG_FILE=$work/clouds.yaml NO_COLOR=1
unset CIDEMO_SITE CIDEMO_STATE_DIR PYTHONPATH
wheel_cidemo=$work/venv/bin/cidemo
checkout_cidemo=$repo/.venv/bin/cidemo
cd "$run"

location=$("$work/venv/bin/python" -c 'import cidemo_infra; print(cidemo_infra.__file__)')
[[ $location == "$work/venv/"* ]] || fail "the venv imports cidemo_infra from $location"
"$wheel_cidemo" --version >/dev/null || fail "cidemo --version"

"$wheel_cidemo" schema >schema.json || fail "cidemo schema"
"$checkout_cidemo" schema | cmp -s - schema.json || fail "cidemo schema differs from the checkout's"
say "cidemo schema: the checkout's, byte for byte"

expect() {  # expect RC CMD...: run CMD (its output in $run/out, $run/err), fail unless it exits RC
  local want=$1 rc=0
  shift
  "$@" >out 2>err || rc=$?
  [[ $rc == "$want" ]] || { cat err >&2; fail "$* exited $rc, not $want"; }
}

for site in infra/sites/*.yaml; do
  read -r name target nodes < <("$work/venv/bin/python" -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
print(d["name"], d.get("target", "local"), ",".join(n["name"] for n in d["nodes"]))' "$site")
  [[ -n ${nodes:-} ]] || fail "$site: cannot read its name, target and nodes"
  state=$run/state/$name
  if [[ $target == openstack ]]; then
    expect 0 "$wheel_cidemo" render --site "$site" --state-dir "$state"
    [[ -s $state/terraform/cidemo.auto.tfvars.json ]] || fail "$site: render wrote no tfvars"
    for node in ${nodes//,/ }; do
      head -n 1 "$state/user-data/$node.yaml" | grep -qx '#cloud-config' \
        || fail "$site: no cloud-config for node $node"
    done
    for tf in "$repo"/cidemo_infra/data/terraform/*.tf; do
      cmp -s "$tf" "$state/terraform/$(basename "$tf")" || fail "$site: module file $(basename "$tf") differs"
    done
    [[ $(ls "$state/terraform"/*.tf | wc -l) == $(ls "$repo"/cidemo_infra/data/terraform/*.tf | wc -l) ]] \
      || fail "$site: the state's module has other *.tf files than the package's"
    cloud=$(sed -n 's/^cloud: *//p' "$site")
    expect 1 "$wheel_cidemo" plan --site "$site" --state-dir "$state"
    [[ -f $state/terraform/.terraform.lock.hcl ]] || fail "$site: terraform init did not run on the module"
    grep -qx "cidemo: error: cloud '$cloud': no such entry in clouds.yaml (OS_CLIENT_CONFIG_FILE=$work/clouds.yaml)" err \
      || { cat err >&2; fail "$site: plan did not stop at cloud '$cloud'"; }
    say "$site: render (tfvars, user-data of $nodes, the module), plan to terraform init, stops at cloud '$cloud'"
  else
    expect 2 "$wheel_cidemo" render --site "$site" --state-dir "$state"
    grep -q "has target local: there are no Terraform inputs" err || fail "$site: render's refusal"
    # a name of its own: plan reads the shared engine, where a site of the example's name may run
    # (beside the example: its relative paths stay as they are)
    renamed=infra/sites/$name-renamed.yaml.copy
    sed "s/^name: .*/name: wchk$RANDOM$RANDOM/" "$site" >"$renamed"
    expect 3 "$wheel_cidemo" plan --json --site "$renamed" --state-dir "$state"
    mv out plan-wheel.json
    expect 3 "$checkout_cidemo" plan --json --site "$renamed" --state-dir "$state-checkout"
    cmp -s out plan-wheel.json || { diff out plan-wheel.json >&2; fail "$site: the plans differ"; }
    say "$site: render refused as documented (exit 2), plan: the checkout's ($(grep -c '"action"' out) actions)"
  fi
done

# The project images' tags: same sources, same tags, so an install recreates no container
tags='from cidemo_infra import data, images
for d in sorted(p.name for p in data.IMAGES.iterdir() if (p / "Dockerfile").is_file()):
    print(images.image_tag(d, "cidemo/debian:bookworm-slim"))'
"$work/venv/bin/python" -c "$tags" >tags-wheel
"$checkout_py" -c "$tags" | cmp -s - tags-wheel || fail "the image tags differ from the checkout's"
say "image tags: the checkout's ($(wc -l <tags-wheel) images)"
say "passed in $(( $(date +%s) - start )) s"
