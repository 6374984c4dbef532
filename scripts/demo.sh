#!/usr/bin/env bash
# `make demo`: staging and the preview of pull request 1 of the site's app, both running the image
# provision built from `environments.build`; prints each URL and a curl that shows it answering
# through the router with a database of its own. A second run changes nothing and shows the same.
set -euo pipefail
cidemo=${1:?usage: demo.sh CIDEMO SITE}
site=${2:?usage: demo.sh CIDEMO SITE}

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

staging=$("$cidemo" env up --site "$site" --staging)
preview=$("$cidemo" env up --site "$site" --pr 1)
show "$staging"
show "$preview"
