"""MaxScale's configuration, rendered from the members registered in etcd (pure).

The 2015 image rendered it with confd from `/services/database_port`; cidemo renders the same
data when it places a site-supplied MaxScale image: galeramon monitors the members,
readwritesplit listens on 4006 and readconnroute (slaves) on 4008, as the 2015 listeners did.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from cidemo_infra.errors import RenderError
from cidemo_infra.registry.keys import Registration

TEMPLATE = Path(__file__).with_name("maxscale.cnf.j2")
MONITOR_USER = "cidemo_monitor"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int


def servers_from(
    registrations: list[Registration], networks: Sequence[str] | None = None
) -> list[Server]:
    """One server per live `database_port` registration, in address order (stable output);
    with `networks` (the site's CIDRs), a member outside all of them is left out and logged."""
    allowed = [ipaddress.ip_network(n, strict=False) for n in networks or ()]
    out: dict[str, Server] = {}
    for reg in registrations:
        host, _, port = reg.value.rpartition(":")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            raise RenderError(
                f"etcd registration {reg.service}/{reg.key_id} has the value "
                f"{reg.value!r}, not <ip>:<port>"
            ) from None
        if networks is not None and not any(ipaddress.ip_address(host) in n for n in allowed):
            log.warning(
                "ignoring %s/%s = %s: not inside the site's network (%s)",
                reg.service,
                reg.key_id,
                reg.value,
                ",".join(networks),
            )
            continue
        name = "member-" + host.replace(".", "-").replace(":", "-") + f"-{number}"
        out[name] = Server(name, host, number)
    return sorted(out.values(), key=lambda s: (ipaddress.ip_address(s.host), s.port))


def render_maxscale(
    registrations: list[Registration],
    password: str,
    rw_port: int = 4006,
    ro_port: int = 4008,
    source: str = "/services/database_port",
    networks: Sequence[str] | None = None,
) -> str:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    if any(ch in password for ch in "\n\r"):
        raise RenderError("the monitor password cannot hold a line break in maxscale.cnf")
    template = env.from_string(TEMPLATE.read_text())
    return template.render(
        servers=servers_from(registrations, networks),
        user=MONITOR_USER,
        password=password,
        rw_port=rw_port,
        ro_port=ro_port,
        source=source,
    )
