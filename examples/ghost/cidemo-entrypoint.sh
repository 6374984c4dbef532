#!/bin/sh
# Maps the 2015 ci-demo names (URL, DB_HOST, DB_USER, DB_PASS, DB_NAME, ...) that the platform's
# `cidemo env` commands set to Ghost's own nconf names (`url`, `database__connection__host`, ...),
# then runs Ghost.
set -eu
# A secret may come as <NAME>_FILE, the path of a file holding it (a Swarm secret: how the cidemo
# swarm platform hands over DB_PASS and app secrets), instead of <NAME> itself.
file_env() {
    eval "value=\${$1:-}"
    eval "file=\${$1_FILE:-}"
    if [ -n "$value" ] && [ -n "$file" ]; then
        echo "cidemo: both $1 and $1_FILE are set; set one of them" >&2
        exit 1
    fi
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "cidemo: $1_FILE=$file is not a readable file" >&2
            exit 1
        fi
        value=$(cat "$file")
        export "$1=$value"
    fi
    unset "$1_FILE" value file
}
for name in DB_PASS S3_ACCESS_KEY_ID S3_ACCESS_KEY; do
    file_env "$name"
done
if [ -n "${URL:-}" ]; then
    export url="$URL"
fi
if [ -n "${DB_HOST:-}" ]; then
    export database__client=mysql
    export database__connection__host="$DB_HOST"
    export database__connection__port="${DB_PORT:-3306}"
    export database__connection__user="${DB_USER:?DB_USER is required when DB_HOST is set}"
    export database__connection__password="${DB_PASS:?DB_PASS is required when DB_HOST is set}"
    export database__connection__database="${DB_NAME:-ghost}"
fi
if [ -n "${PORT:-}" ]; then
    export server__port="$PORT"
fi
if [ -n "${HOST:-}" ]; then
    export server__host="$HOST"
fi
# S3 keys come only from the environment; the adapter is the app's to install in content/.
if [ -n "${S3_ACCESS_KEY_ID:-}" ] && [ -n "${S3_ACCESS_KEY:-}" ]; then
    export storage__s3__accessKeyId="$S3_ACCESS_KEY_ID"
    export storage__s3__secretAccessKey="$S3_ACCESS_KEY"
    export storage__s3__bucket="${S3_BUCKET:-ci-demo-ghost-images}"
    export storage__s3__region="${S3_REGION:-us-east-1}"
    if [ -d "${paths__contentPath:-/opt/ghost/content}/adapters/storage/s3" ]; then
        export storage__active=s3
    else
        echo "cidemo: S3 keys are set but no s3 storage adapter is installed; using local storage" >&2
    fi
fi
unset DB_PASS S3_ACCESS_KEY
exec "$@"
