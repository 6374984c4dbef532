"""`make bench`: measurements printed as a table, each against a baseline from the same run.

- cold provision of the local service tier vs its floor: the same images started by hand, one
  after another, each waited for until Synced (what no orchestration can beat); the best of
  COLD_REPEATS of each, in turn (a join's state transfer varies by seconds);
- no-op provision vs a no-op `docker-compose up -d` of an equivalent compose file.
Timings are measured here and never asserted by tests.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import yaml

from cidemo_infra.bench import branch as bench_branch
from cidemo_infra.bench import build as bench_build
from cidemo_infra.bench import envs as bench_envs
from cidemo_infra.console import Reporter
from cidemo_infra.engines import client_for
from cidemo_infra.galera.member import member_status

COLD_REPEATS = 3
BENCH_SITE = {
    "name": "bench",
    "target": "local",
    "network": {"cidr": "10.215.9.0/24"},
    "services": {
        "galera": {"cluster_name": "bench", "members": 3, "ttl": 6},
        "proxy": {"rw_port": 24006, "ro_port": 24008},
        "jenkins": {"enabled": True, "image": "project:jenkins-standin", "port": 28080},
        "etcd": {"port": 24379},
        "registry": {"port": 25000},
    },
    "environments": {
        "app": "guestbook",
        "app_port": 8080,
        "image": "cidemo/guestbook:{sha}",
        "router_port": 28000,
        "max_previews": 6,
        "repository": "cidemo/bench",
        "build": bench_build.BUILD,
    },
}


def _cidemo(site: Path, state: Path, *args: str) -> float:
    start = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cidemo_infra",
            *args,
            "--site",
            str(site),
            "--state-dir",
            str(state),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "NO_COLOR": "1", "CIDEMO_YES": "1"},
    )
    return time.monotonic() - start


def _wait(predicate: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench: a member did not become Synced in time")
        time.sleep(0.2)


def _floor(client: docker.DockerClient, image: str, etcd_image: str) -> float:
    """Bootstrap one member, then join two, each waited for Synced: by hand, no tool."""
    tag = "bench-floor-" + secrets.token_hex(3)
    net = client.networks.create(
        tag,
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.215.10.0/24")]),
        labels={"io.cidemo.bench": tag},
    )
    made = []
    try:
        made.append(
            client.containers.run(
                etcd_image,
                name=f"{tag}-etcd",
                detach=True,
                network=tag,
                hostname="etcd",
                labels={"io.cidemo.bench": tag},
            )
        )
        time.sleep(1)
        start = time.monotonic()
        for i in (1, 2, 3):
            c = client.containers.create(
                image,
                name=f"{tag}-{i}",
                hostname=f"{tag}-{i}",
                network=tag,
                labels={"io.cidemo.bench": tag},
                environment={
                    "ETCD_URL": f"http://{tag}-etcd:2379",
                    "CLUSTER_NAME": tag,
                    "NODE_NAME": f"n{i}",
                    "CONTAINER_NAME": f"{tag}-{i}",
                    "TTL": "6",
                },
            )
            _put_bench_secrets(c)
            c.start()
            made.append(c)
            _wait(functools.partial(_is_synced, c))
        return time.monotonic() - start
    finally:
        for c in made:
            c.remove(force=True, v=True)
        net.remove()


def _is_synced(container: docker.models.containers.Container) -> bool:
    return member_status(container).is_synced


def _put_bench_secrets(container: docker.models.containers.Container) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("root_password", "sst_password", "monitor_password"):
            data = secrets.token_urlsafe(18).encode()
            info = tarfile.TarInfo(f"cidemo/secrets/{name}")
            info.size, info.mode = len(data), 0o400
            tar.addfile(info, io.BytesIO(data))
    container.put_archive("/etc", buf.getvalue())


def _compose_file(client: docker.DockerClient, site: str, path: Path) -> None:
    """A compose file equivalent to the placed site: the same images, environment, addresses,
    published ports, volumes and secret files; written before the site is destroyed."""
    services: dict[str, Any] = {}
    subnet = ""
    for c in client.containers.list(filters={"label": f"io.cidemo.site={site}"}):
        cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
        net = next(iter(c.attrs["NetworkSettings"]["Networks"].values()))
        subnet = subnet or _subnet(client, next(iter(c.attrs["NetworkSettings"]["Networks"])))
        ports = host.get("PortBindings") or {}
        services[c.name] = {
            "image": cfg["Image"],
            "hostname": cfg.get("Hostname"),
            "init": True,
            "environment": [e for e in cfg.get("Env") or [] if not e.startswith("PATH=")],
            "ports": [
                f"{b[0]['HostIp']}:{b[0]['HostPort']}:{p.split('/')[0]}"
                for p, b in ports.items()
                if b
            ],
            "volumes": [
                f"{m['Name'] + '-compose'}:{m['Destination']}"
                for m in c.attrs["Mounts"]
                if m["Type"] == "volume"
            ]
            + [f"{path.parent / 'secrets'}:/etc/cidemo/secrets:ro"],
            "networks": {"tier": {"ipv4_address": net["IPAMConfig"]["IPv4Address"]}},
        }
    volumes: dict[str, dict[str, str]] = {
        v.split(":")[0]: {}
        for svc in services.values()
        for v in svc["volumes"]
        if not v.startswith("/")
    }
    compose = {
        "version": "2.4",
        "services": services,
        "volumes": volumes,
        "networks": {"tier": {"ipam": {"config": [{"subnet": subnet}]}}},
    }
    path.write_text(yaml.safe_dump(compose))
    secrets_dir = path.parent / "secrets"
    secrets_dir.mkdir(mode=0o700)
    for name in ("root_password", "sst_password", "monitor_password", "jenkins_admin_password"):
        (secrets_dir / name).write_text(secrets.token_urlsafe(18))
        (secrets_dir / name).chmod(0o644)  # read by the services' own users in the containers


def _subnet(client: docker.DockerClient, network: str) -> str:
    return str(client.networks.get(network).attrs["IPAM"]["Config"][0]["Subnet"])


def _compose(compose: str, compose_file: Path, *args: str) -> float:
    start = time.monotonic()
    result = subprocess.run(
        [compose, "-p", "cidemobench", "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker-compose {args[0]} failed: {result.stderr.strip()[-500:]}")
    return time.monotonic() - start


def _section(
    name: str, measure: Callable[[], list[list[str]]], failed: list[str]
) -> list[list[str]]:
    """A section's rows, or one row saying why it could not be measured, noted in `failed` (the
    rest still runs, and the bench exits 1 at the end)."""
    try:
        return measure()
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
        return [[name, "not measured", f"{type(exc).__name__}: {exc}"[:80], "-"]]


def main() -> None:
    reporter = Reporter()
    client = client_for("unix:///var/run/docker.sock", node="local")
    work = Path(tempfile.mkdtemp(prefix="cidemo-bench-"))
    site = work / "bench.yaml"
    site.write_text(yaml.safe_dump(BENCH_SITE))
    state = work / "state"
    rows: list[list[str]] = []
    failed: list[str] = []  # sections that could not be measured
    notes: list[str] = []  # lines under the table
    load = "load average (1, 5, 15 min) at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    try:
        reporter.step("building images (not timed)")
        subprocess.run(
            [sys.executable, "-m", "cidemo_infra", "images", "--site", str(site)],
            check=True,
            capture_output=True,
        )
        cold = _cidemo(site, state, "provision")
        noop = min(_cidemo(site, state, "provision") for _ in range(3))
        images = {
            c.labels.get("io.cidemo.role"): c.attrs["Config"]["Image"]
            for c in client.containers.list(filters={"label": "io.cidemo.site=bench"})
        }
        sections = _section("environments", lambda: bench_envs.run(site, state), failed)
        sections += _section("builds", lambda: bench_build.run(site, state), failed)

        def branch() -> list[list[str]]:
            branch_rows, summary = bench_branch.run(site, state)
            notes.extend(summary)
            return branch_rows

        sections += _section("preview databases", branch, failed)
        compose_file = work / "compose.yaml"
        _compose_file(client, "bench", compose_file)
        _cidemo(site, state, "destroy", "--purge")
        compose = shutil.which("docker-compose")  # Debian's (make host installs it)

        def noop_row() -> list[list[str]]:
            if compose is None:
                raise FileNotFoundError("docker-compose is not installed (make host installs it)")
            try:
                _compose(compose, compose_file, "up", "-d")
                compose_noop = min(_compose(compose, compose_file, "up", "-d") for _ in range(3))
            finally:
                _compose(compose, compose_file, "down", "-v")
            return [
                [
                    "no-op provision (smoke checks included)",
                    f"{noop:.2f} s",
                    f"docker-compose up -d no-op, {compose_noop:.2f} s",
                    f"{noop / compose_noop:.2f}x (goal <= 1.0x)",
                ]
            ]

        rows += _section("no-op provision", noop_row, failed)
        # a join's state transfer varies by seconds between runs: the best of a few of each,
        # taken in turn, so that neither side gets the quieter minute
        colds, floors = [cold], [_floor(client, images["galera"], images["etcd"])]
        for _ in range(COLD_REPEATS - 1):
            colds.append(_cidemo(site, state, "provision"))
            _cidemo(site, state, "destroy", "--purge")
            floors.append(_floor(client, images["galera"], images["etcd"]))
        notes.append(
            "cold provision, each run: "
            + ", ".join(f"{c:.1f}" for c in colds)
            + " s; the floor: "
            + ", ".join(f"{f:.1f}" for f in floors)
            + " s"
        )
        rows.append(
            [
                f"cold provision (images built), best of {COLD_REPEATS}",
                f"{min(colds):.1f} s",
                f"floor: 3 members by hand, best of {COLD_REPEATS}, {min(floors):.1f} s",
                f"{min(colds) / min(floors):.2f}x (goal <= 1.3x)",
            ]
        )
        rows += sections
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cidemo_infra",
                "destroy",
                "--purge",
                "--yes",
                "--site",
                str(site),
                "--state-dir",
                str(state),
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
    reporter.table(["measurement", "cidemo", "baseline (same run)", "ratio"], rows)
    reporter.line("ratio: cidemo's time / the baseline's (below 1: cidemo is faster)")
    reporter.line(f"{load}; at end: " + "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for line in notes:
        reporter.line(line)
    for failure in failed:
        print(f"bench: not measured: {failure}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
