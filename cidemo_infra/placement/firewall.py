"""The apps' firewall: containers of the apps' overlay network never reach etcd, Docker, Galera
or the site registry.

Swarm tasks leave their overlay through `docker_gwbridge`. A task that connects to its own
node's address goes through INPUT; to another node, or (local target) to a service container on
the site's bridge, through FORWARD, where Docker jumps to DOCKER-USER first. Each site has two
chains of its own, `CIDEMO-<id>-F` (jumped to from DOCKER-USER) and `CIDEMO-<id>-I` (from INPUT),
so only its own rules are ever flushed or removed; DOCKER-USER and INPUT get one jump each.
The cloud nodes get the same rules from cloud-config (`cidemo-apps-firewall.service`).

Desired rules are pure (`rules`); `install` and `remove` run iptables on this machine, the local
target's engine host.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from cidemo_infra.errors import PlacementError

# Docker API (2375, 2376), etcd client and peer (2379, 2380), Galera (3306, 4444, 4567, 4568)
CONTROL_PORTS = (2375, 2376, 2379, 2380, 3306, 4444, 4567, 4568)
APPS_BRIDGE = "docker_gwbridge"  # where swarm tasks' traffic leaves their overlay


@dataclass(frozen=True)
class Chains:
    forward: str
    input: str


def chains(site: str) -> Chains:
    """The site's own chain names (iptables allows 28 characters; site names have 30)."""
    digest = hashlib.sha256(site.encode()).hexdigest()[:10].upper()
    return Chains(f"CIDEMO-{digest}-F", f"CIDEMO-{digest}-I")


def rules(
    site: str, cidrs: Sequence[str], extra_ports: Sequence[int] = ()
) -> dict[str, list[list[str]]]:
    """Chain -> its rules (iptables arguments after `-A <chain>`). `extra_ports`: the site
    registry's, where one is placed (it holds the built images and staging's snapshots)."""
    ports = ",".join(str(p) for p in dict.fromkeys((*CONTROL_PORTS, *extra_ports)))
    comment = ["-m", "comment", "--comment", f"cidemo {site}: apps never reach the control plane"]
    reject = ["-j", "REJECT", "--reject-with", "tcp-reset"]
    match = ["-i", APPS_BRIDGE, "-p", "tcp", "-m", "multiport", "--dports", ports]
    names = chains(site)
    return {
        names.forward: [[*match, "-d", cidr, *comment, *reject] for cidr in cidrs],
        names.input: [[*match, *comment, *reject]],
    }


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("iptables")
    if binary is None:
        raise PlacementError("iptables is not installed: cannot fence the apps' network")
    result = subprocess.run(
        [binary, "-w", "10", *args], capture_output=True, text=True, check=False, timeout=60
    )
    if check and result.returncode != 0:
        raise PlacementError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result


def install(site: str, cidrs: Sequence[str], extra_ports: Sequence[int] = ()) -> None:
    """Create or refresh the site's chains and their jumps (idempotent)."""
    names = chains(site)
    wanted = rules(site, cidrs, extra_ports)
    for parent, chain in (("DOCKER-USER", names.forward), ("INPUT", names.input)):
        if parent == "DOCKER-USER" and _iptables("-S", parent, check=False).returncode != 0:
            _iptables("-N", parent)  # dockerd adds its jump from FORWARD when it starts
        if _iptables("-S", chain, check=False).returncode != 0:
            _iptables("-N", chain)
        _iptables("-F", chain)
        for rule in wanted[chain]:
            _iptables("-A", chain, *rule)
        if _iptables("-C", parent, "-j", chain, check=False).returncode != 0:
            _iptables("-I", parent, "1", "-j", chain)


def remove(site: str) -> None:
    """The site's jumps and chains, and nothing else; nothing to do when they are gone."""
    names = chains(site)
    for parent, chain in (("DOCKER-USER", names.forward), ("INPUT", names.input)):
        while _iptables("-C", parent, "-j", chain, check=False).returncode == 0:
            _iptables("-D", parent, "-j", chain)
        if _iptables("-S", chain, check=False).returncode == 0:
            _iptables("-F", chain)
            _iptables("-X", chain)
