#!/bin/sh
# The site registry. Its secrets arrive as files in /etc/cidemo/secrets (copied in before start):
# registry_password (the `cidemo` user's; hashed here with bcrypt, read from stdin so it is never
# an argument), registry_tls_cert and registry_tls_key (a server certificate of the site CA).
set -eu
secrets=/etc/cidemo/secrets
for f in registry_password registry_tls_cert registry_tls_key; do
  [ -s "$secrets/$f" ] || { echo "registry: missing secret $secrets/$f" >&2; exit 1; }
done
umask 077
htpasswd -B -i -c /run/cidemo/htpasswd "${REGISTRY_USER:-cidemo}" <"$secrets/registry_password" 2>/dev/null
cat >/run/cidemo/config.yml <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: 0.0.0.0:${REGISTRY_PORT:-5000}
  tls:
    certificate: $secrets/registry_tls_cert
    key: $secrets/registry_tls_key
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: cidemo-registry
    path: /run/cidemo/htpasswd
YAML
exec /usr/bin/docker-registry serve /run/cidemo/config.yml
