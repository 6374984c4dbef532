#!/usr/bin/env bash
# `make demo`: staging and the preview of pull request 1 of the site's app, built by the platform
# from a local git repository of `environments.build.source` (`cidemo env up --build`: fetched by
# commit, built, tested, pushed to the site registry, deployed); prints each URL and a curl that
# shows it answering through the router with a database of its own. A second run changes nothing
# and shows the same (the environments already run that commit's build).
set -euo pipefail
cidemo=${1:?usage: demo.sh CIDEMO SITE}
site=${2:?usage: demo.sh CIDEMO SITE}
python=$(dirname "$cidemo")/python

# the site's name and its app's source folder (relative to the site file)
read -r name source < <("$python" - "$site" <<'PY'
import sys
from pathlib import Path
from cidemo_infra.site import load_site
site = load_site(sys.argv[1])
build = site.environments.build
if build is None or not build.source:
    sys.exit(f"{sys.argv[1]}: environments.build.source is not set: nothing to build the demo from")
print(site.name, (Path(sys.argv[1]).parent / build.source).resolve())
PY
)
repo="${CIDEMO_STATE_DIR:-.cidemo/$name}/demo-repo"

# the app's folder as a git repository: one commit per change of its files
mkdir -p "$repo"
[ -d "$repo/.git" ] || git init -q -b development "$repo"
find "$repo" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
cp -R "$source"/. "$repo"/
git -C "$repo" add -A
if ! git -C "$repo" diff --cached --quiet || ! git -C "$repo" rev-parse -q --verify HEAD >/dev/null; then
  git -C "$repo" -c user.name=cidemo -c user.email=demo@cidemo.test commit -q -m "demo: $source"
fi
sha=$(git -C "$repo" rev-parse HEAD)
printf 'commit %s of %s (a git repository of %s)\n' "$sha" "$repo" "$source"

show() {  # show URL: the curl to run, then its answer (the router may take a moment to route)
  local url=$1 hostport name port cmd answer=""
  hostport=${url#http://}; hostport=${hostport%%/*}
  name=${hostport%%:*}; port=${hostport##*:}
  [ "$port" != "$name" ] || port=80
  cmd="curl -s --resolve $name:$port:127.0.0.1 -H 'Accept: application/json' $url"
  printf '%s\n  $ %s\n' "$url" "$cmd"
  for _ in $(seq 30); do
    answer=$(eval "$cmd" || true)
    [[ $answer == *'"database"'* ]] && break
    sleep 1
  done
  printf '  %s\n' "${answer:-(no answer)}"
  [[ $answer == *'"database"'* ]]
}

up() { "$cidemo" env up --site "$site" "$@" --ref "$sha" --build --source "$repo"; }
staging=$(up --staging)
preview=$(up --pr 1)
show "$staging"
show "$preview"
