#!/bin/sh
# fetch-tarball PATH INTEGRITY DIR: download https://registry.npmjs.org/PATH, check it against the
# registry's sha512 integrity (sha512-<base64>), and unpack its package/ into DIR.
set -eu
url="https://registry.npmjs.org/$1"
want=$(printf '%s' "${2#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
tmp=$(mktemp -d)
curl -fsSL --retry 3 -o "$tmp/package.tgz" "$url"
got=$(sha512sum "$tmp/package.tgz" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
    echo "fetch-tarball: $url does not match its integrity $2" >&2
    exit 1
fi
tar -xzf "$tmp/package.tgz" -C "$tmp"
mkdir -p "$(dirname "$3")"
mv "$tmp/package" "$3"
rm -rf "$tmp"
