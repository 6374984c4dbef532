"""Teardown of what the delivery layer made on a site's engines, without knowing the layer.

Everything an environment's app owns on an engine is labelled: services and secrets with
`io.cidemo.site=<site>`, the apps network, the tasks' containers and the previews' databases with
`io.cidemo.apps-of=<site>`, snapshot images with `io.cidemo.site=<site>`
(placement owns every container and network labelled `io.cidemo.site` and would plan to remove
them). `cidemo destroy` removes all of it by label, whatever platform put it there.
"""

from __future__ import annotations

import contextlib
import time

import docker
import docker.errors

from cidemo_infra.errors import EngineError
from cidemo_infra.placement import branch_store
from cidemo_infra.placement.specs import LABEL_APPS_OF, LABEL_SITE

GONE_TIMEOUT = 60.0
# what `databases/` makes: previews' databases, snapshot builders, the branch store's helpers
# (and snapshot images, below)
DATABASE_ROLES = ("preview-db", "snapshot-builder", branch_store.ROLE_HELPER)
ROLE_SNAPSHOT = "snapshot"


def remove_site_apps(client: docker.DockerClient, site: str) -> list[str]:
    """Everything of the site's apps on one engine: services, their secrets, the apps network
    (for `cidemo destroy` and test finalizers). Returns what was removed."""
    removed = _remove_databases(client, site)
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        return removed
    api = client.api
    manager = bool(swarm.get("ControlAvailable"))
    if manager:
        for service in api.services(filters={"label": f"{LABEL_SITE}={site}"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_service(service["ID"])
                removed.append(f"service {service['Spec']['Name']}")
    deadline = time.monotonic() + GONE_TIMEOUT
    flt = {"label": f"{LABEL_APPS_OF}={site}"}
    while api.containers(all=True, filters=flt) and time.monotonic() < deadline:
        time.sleep(0.5)
    if manager:
        for secret in api.secrets(filters={"label": f"{LABEL_SITE}={site}"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_secret(secret["ID"])
                removed.append(f"secret {secret['Spec']['Name']}")
    for net in api.networks(filters={"label": f"{LABEL_APPS_OF}={site}"}):
        for container in (api.inspect_network(net["Id"]).get("Containers") or {}).values():
            with contextlib.suppress(docker.errors.APIError):
                api.disconnect_container_from_network(container["Name"], net["Id"], force=True)
        if _remove_network(api, net["Id"], time.monotonic() + GONE_TIMEOUT):
            removed.append(f"network {net['Name']}")
    return removed


def _remove_databases(client: docker.DockerClient, site: str) -> list[str]:
    """Previews' databases, snapshot builders, the site's files in the branch store (their
    writes and the snapshots' copies), then the site's snapshot images."""
    api = client.api
    removed = []
    for role in DATABASE_ROLES:
        flt = {"label": [f"{LABEL_APPS_OF}={site}", f"io.cidemo.role={role}"]}
        for container in api.containers(all=True, filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True, v=True)
                removed.append(f"container {container['Names'][0].lstrip('/')}")
    labels = [f"{LABEL_SITE}={site}", f"io.cidemo.role={ROLE_SNAPSHOT}"]
    images = api.images(filters={"label": labels})
    tagged = [t for image in images for t in image.get("RepoTags") or []]
    if tagged:  # the previews' and snapshots' files in the branch store, before the images
        try:
            branch_store.remove_site(client, tagged[0], site)
            removed.append(f"branch store {branch_store.STORE}/{site}")
        except branch_store.StoreError as exc:
            raise EngineError(f"destroy: {exc}") from None
    for image in images:
        for tag in image.get("RepoTags") or [image["Id"]]:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(tag, force=True)
                removed.append(f"image {tag}")
    return removed


def _remove_network(api: docker.APIClient, network_id: str, deadline: float) -> bool:
    """Remove an apps network; the swarm refuses while tasks of removed services on other nodes
    still hold it ("in use by task"), so that is retried until `deadline`."""
    while True:
        try:
            api.remove_network(network_id)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if "in use" not in str(exc.explanation or exc) or time.monotonic() >= deadline:
                raise EngineError(
                    f"remove network {network_id}: {exc.explanation or exc}"
                ) from None
            time.sleep(1)
