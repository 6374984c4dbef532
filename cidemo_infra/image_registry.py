"""The site's image registry: where it is, its credentials and TLS, and the engines' trust in it.

Placed on the standalone node (locally: the local engine) when the site builds its images
(`environments.build`). It serves HTTPS with a server certificate of the site CA
(`<state>/tls/nodes/registry/`) and asks for the user `cidemo` with the password in the state
directory (`secrets/registry_password`, or `CIDEMO_REGISTRY_PASSWORD`). Images are
`<address>/<app>:<sha>`; locally the address is `127.0.0.1:<services.registry.port>`.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from cidemo_infra.inventory import Inventory
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
