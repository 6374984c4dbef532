"""The site's image registry: where it is, its credentials and TLS, and the engines' trust in it.

Placed on the standalone node (locally: the local engine) when the site builds its images
(`environments.build`). It serves HTTPS with a server certificate of the site CA
(`<state>/tls/nodes/registry/`) and asks for the user `cidemo` with the password in the state
directory (`secrets/registry_password`, or `CIDEMO_REGISTRY_PASSWORD`). Images are
`<address>/<app>:<sha>`; locally the address is `127.0.0.1:<services.registry.port>`.

The tool deletes tags and collects garbage through the registry container itself (`docker exec`
of curl against its own loopback port, the password read from its secret file into curl's
config on stdin, never an argument): the tool's machine need not reach the registry's address.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker

from cidemo_infra.engines import ENGINE_ERRORS
from cidemo_infra.errors import CidemoError
from cidemo_infra.inventory import Inventory
from cidemo_infra.placement.specs import container_name
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir
from cidemo_infra.tls.pki import ensure_pki

USER = "cidemo"
PASSWORD = "registry_password"
PASSWORD_ENV = "CIDEMO_REGISTRY_PASSWORD"
TLS_CERT = "registry_tls_cert"
TLS_KEY = "registry_tls_key"
SECRETS = (PASSWORD, TLS_CERT, TLS_KEY)  # as files in the container, never in its spec
CONTAINER_PORT = 5000
# Where a Docker engine looks for the CA of a registry at host:port (dockerd's own convention)
CERTS_D = Path("/etc/docker/certs.d")


def is_placed(site: Site) -> bool:
    """The registry runs for sites that build their images."""
    return "environments" in site.model_fields_set and site.environments.build is not None


def address(site: Site, inventory: Inventory) -> str:
    """host:port the engines push to and pull from."""
    port = site.services.registry.port
    if site.target == "local":
        return f"127.0.0.1:{port}"
    return f"{inventory.of_role('standalone')[0].private_ip}:{port}"


def image_of(site: Site, inventory: Inventory, ref: str) -> str:
    """The image a build of commit `ref` is pushed as."""
    return f"{address(site, inventory)}/{site.environments.app}:{ref}"


def password(state: StateDir) -> str:
    return state.secret(PASSWORD, PASSWORD_ENV)


def auth_config(state: StateDir) -> dict[str, str]:
    """For the Docker API's push and pull (X-Registry-Auth); never logged."""
    return {"username": USER, "password": password(state)}


def container_secrets(site: Site, state: StateDir, inventory: Inventory) -> dict[str, str]:
    """The registry container's secret files: its password and TLS pair (created once)."""
    standalone = inventory.of_role("standalone")[0]
    pki = ensure_pki(state.tls_dir, site.name, {"registry": ["registry", standalone.private_ip]})
    _, cert, key = pki.server_pems("registry")
    return {PASSWORD: password(state), TLS_CERT: cert, TLS_KEY: key}


def ca_pem(state: StateDir) -> str:
    return (state.tls_dir / "ca.pem").read_text()


def trust(site: Site, state: StateDir, inventory: Inventory, root: Path = CERTS_D) -> Path | None:
    """Make this machine's engine trust the site CA for the registry (local target only:
    `<root>/<address>/ca.crt`, read by dockerd at each push and pull; other registries are
    untouched). Returns the file, None where there is nothing to do."""
    if site.target != "local":
        return None
    folder = root / address(site, inventory)
    path = folder / "ca.crt"
    pem = ca_pem(state)
    if path.is_file() and path.read_text() == pem:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(pem)
    return path


def untrust(site: Site, state: StateDir, inventory: Inventory, root: Path = CERTS_D) -> None:
    """Remove what `trust` wrote, only when it is still this site's CA."""
    if site.target != "local":
        return
    folder = root / address(site, inventory)
    path = folder / "ca.crt"
    ca = state.tls_dir / "ca.pem"
    with contextlib.suppress(OSError):
        if path.is_file() and ca.is_file() and path.read_text() == ca.read_text():
            shutil.rmtree(folder)


class RegistryError(CidemoError):
    """The site registry refused or failed a call; names the registry and the call."""


# What a tag's manifest is asked for as: the digest it is deleted by is that of the manifest
# the engines pushed (schema 2 or OCI), not of a conversion.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)
# Runs in the registry container: curl's `user` from the secret file, through a pipe. Arguments:
# curl's method option, the Accept header, the API path, the user, the password file.
_CALL = r"""set -eu
body=$(mktemp)
trap 'rm -f "$body"' EXIT
sed -e 's/[\\"]/\\&/g' -e "s/^/user = \"$4:/" -e 's/$/"/' "$5" |
  curl -sS -k -K - -D - -o "$body" $1 -H "Accept: $2" "https://127.0.0.1:${REGISTRY_PORT:-5000}/v2/$3"
echo; cat "$body"
"""
SECRET_FILE = f"/etc/cidemo/secrets/{PASSWORD}"  # where placement copies it into the container
_METHODS = {"GET": "", "HEAD": "-I", "DELETE": "-X DELETE"}
CONFIG = "/run/cidemo/config.yml"  # written by the image's entrypoint


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def container(site: Site) -> str:
    return container_name(site, "registry")


def _exec(client: docker.DockerClient, name: str, argv: list[str], what: str) -> bytes:
    """`argv` in the registry container `name`; its stdout, or RegistryError naming `what`."""
    try:
        ran = client.containers.get(name).exec_run(argv, demux=True)
    except ENGINE_ERRORS as exc:
        raise RegistryError(f"registry {name}: {what}: {exc}") from None
    out, err = ran.output
    if ran.exit_code != 0:
        detail = (err or out or b"").decode(errors="replace").strip().splitlines()
        raise RegistryError(
            f"registry {name}: {what} failed (exit {ran.exit_code}): "
            f"{detail[-1] if detail else 'no output'}"
        )
    return out or b""


def _call(client: docker.DockerClient, name: str, method: str, path: str) -> Reply:
    argv = ["sh", "-c", _CALL, "sh", _METHODS[method], MANIFEST_TYPES, path, USER, SECRET_FILE]
    out = _exec(client, name, argv, f"{method} /v2/{path}")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
    return Reply(status, headers, body.lstrip(b"\n"))


def tags(client: docker.DockerClient, name: str, repository: str) -> list[str]:
    """The tags of `repository` in the registry container `name` ([] when it has none)."""
    reply = _call(client, name, "GET", f"{repository}/tags/list")
    if reply.status == 404:
        return []
    if reply.status != 200:
        raise RegistryError(f"registry {name}: tags of {repository}: HTTP {reply.status}")
    return sorted(json.loads(reply.body or b"{}").get("tags") or [])


def delete_tags(
    client: docker.DockerClient, name: str, repository: str, doomed: Sequence[str]
) -> list[str]:
    """Delete the manifests of `doomed` tags (their blobs go at the next `collect_garbage`);
    returns the tags deleted."""
    deleted = []
    for tag in doomed:
        found = _call(client, name, "HEAD", f"{repository}/manifests/{tag}")
        digest = found.headers.get("docker-content-digest")
        if found.status == 404:
            continue
        if found.status != 200 or not digest:
            raise RegistryError(f"registry {name}: {repository}:{tag}: HTTP {found.status}")
        gone = _call(client, name, "DELETE", f"{repository}/manifests/{digest}")
        if gone.status not in (202, 404):
            raise RegistryError(f"registry {name}: delete {repository}:{tag}: HTTP {gone.status}")
        deleted.append(tag)
    return deleted


def collect_garbage(client: docker.DockerClient, name: str) -> None:
    """Remove the blobs no manifest uses any more (the registry's own `garbage-collect`). Run
    only while nothing pushes: a push's blobs are unreferenced until its manifest is put."""
    argv = ["docker-registry", "garbage-collect", "--delete-untagged", CONFIG]
    _exec(client, name, argv, "garbage-collect")
