"""A rejected command writes nothing.

Every `cidemo` command is given an invocation it must refuse (a missing environments section, a
bad ref, an image that is not there, options that exclude each other, a state directory of another
site, a precondition that does not hold). Each must exit with its documented code and one line on
stderr, and leave the cluster (databases, users), etcd (keys and values), Docker (containers,
services, networks, volumes, secrets of the site) and the state directory exactly as they were:
a snapshot before, a snapshot after, compared.

One provisioned site with an environments section that builds the guestbook (as
infra/sites/local.yaml does) serves every case. Beside its file lie the same site without that
section (`bare`, the site the first `env up` of issue 13 wrote a phantom preview into), without
`environments.build` (`nobuild`), asking for a project image that does not exist (`nosuch`), and
another site's file (`other`) pointed at this site's state directory. Last, `make demo`'s script
runs twice on the same site.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pymysql
import pytest
import yaml

from cidemo_infra.placement.teardown import remove_site_apps
from tests.conftest import REPO, run_cidemo
from tests.integration.conftest import TestSite, free_port, make_site, remove_site

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    rc: int
    says: str  # a fragment of the one line on stderr
    site: str = "main"  # main, bare, nobuild, nosuch, other
    env: tuple[tuple[str, str], ...] = ()


# The commands of cli.py and of pipeline/commands.py; test_every_command_has_a_case keeps it whole.
CASES = [
    Case("schema", ("schema", "--indent", "2"), 2, "No such option"),
    Case("render", ("render",), 2, "no Terraform inputs"),
    Case("plan", ("plan", "--services-only", "--infrastructure-only"), 2, "exclude each other"),
    Case("provision", ("provision", "--infrastructure-only", "--yes"), 2, "--infrastructure-only"),
    Case("status", ("status",), 2, "belongs to site", site="other"),
    Case("smoke", ("smoke",), 2, "belongs to site", site="other"),
    Case("recover", ("recover", "--yes"), 1, "still Synced"),
    Case("images", ("images",), 2, "images/nosuch/Dockerfile", site="nosuch"),
    Case("webhook serve", ("webhook", "serve"), 2, "no environments section", site="bare"),
    Case(
        "env up",
        ("env", "up", "--pr", "1", "--ref", "abc123"),
        2,
        "no environments section",
        site="bare",
    ),
    Case("env up (bad ref)", ("env", "up", "--pr", "1", "--ref", "abc 123"), 2, "--ref"),
    Case(
        "env up (no such image)",
        ("env", "up", "--pr", "1", "--ref", "deadbeef1234"),
        2,
        "is not on engine",
    ),
    Case("env up (no ref)", ("env", "up", "--staging"), 2, "--ref is required", site="nobuild"),
    Case("env down", ("env", "down", "--pr", "1", "--staging", "--yes"), 2, "exactly one"),
    Case(
        "env down (bare)",
        ("env", "down", "--pr", "1", "--yes"),
        2,
        "no environments section",
        site="bare",
    ),
    Case("env list", ("env", "list"), 2, "no environments section", site="bare"),
    Case("env promote", ("env", "promote"), 2, "runs nothing to promote"),
    Case("env gc", ("env", "gc", "--repo", "not-a-repo", "--yes"), 2, "--repo"),
    Case(
        "env refresh-staging",
        ("env", "refresh-staging", "--yes"),
        2,
        "production database guestbook does not exist",
    ),
    Case(
        "env refresh-staging (no such backup)",
        ("env", "refresh-staging", "--yes", "--from", "guestbook-20000101T000000Z"),
        2,
        "no such complete backup",
    ),
    Case("env backups", ("env", "backups"), 2, "no environments section", site="bare"),
    Case("env logs", ("env", "logs", "--staging"), 2, "no environments section", site="bare"),
    Case(
        "env up (build without environments.build)",
        ("env", "up", "--staging", "--ref", "abc123", "--build"),
        2,
        "has no environments.build",
        site="nobuild",
    ),
    Case("env up (build without ref)", ("env", "up", "--staging", "--build"), 2, "--ref SHA"),
    Case(
        "env snapshot", ("env", "snapshot", "--kind", "seed"), 2, "needs environments.fork_script"
    ),
    Case("destroy", ("destroy", "--sweep", "--yes"), 2, "--sweep"),
    Case("destroy (answered no)", ("destroy",), 1, "aborted", env=(("CIDEMO_YES", ""),)),
]


@dataclass
class Sites:
    main: TestSite
    files: dict[str, Path]


@pytest.fixture(scope="module")
def sites(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    tmp = tmp_path_factory.mktemp("rejections")
    main = make_site(
        engine,
        tmp,
        environments={
            "app": "guestbook",
            "app_port": 8080,
            "image": "cidemo/guestbook:{sha}",
            "router_port": free_port(),
            "build": str(REPO / "examples" / "guestbook"),
        },
    )
    # registrations refreshed at TTL/2 survive a loaded machine better with a longer TTL
    main.data["services"]["galera"]["ttl"] = 30
    main.data["services"]["registry"] = {"port": free_port()}  # builds place the registry
    main.path.write_text(yaml.safe_dump(main.data))
    files = {"main": main.path}
    bare = {k: v for k, v in main.data.items() if k != "environments"}
    environments = {k: v for k, v in main.data["environments"].items() if k != "build"}
    nobuild = {**main.data, "environments": environments}
    nosuch = {**main.data, "services": {**main.data["services"]}}
    nosuch["services"]["jenkins"] = {**nosuch["services"]["jenkins"], "image": "project:nosuch"}
    other = {**main.data, "name": main.name + "x"}
    for variant, data in (
        ("bare", bare),
        ("nobuild", nobuild),
        ("nosuch", nosuch),
        ("other", other),
    ):
        files[variant] = tmp / f"{variant}.yaml"
        files[variant].write_text(yaml.safe_dump(data))
    try:
        result = main.cidemo("provision")
        assert result.rc == 0, result.err[-3000:] + result.out[-3000:]
        router = f"http://127.0.0.1:{main.data['environments']['router_port']}"
        assert f"apps router       {router}" in result.out
        assert "app image         cidemo/guestbook:" in result.out
        yield Sites(main, files)
    finally:
        remove_site_apps(engine, main.name)
        remove_site([engine], main.name)


def _database_state(site: TestSite) -> dict[str, Any]:
    conn = pymysql.connect(
        host="127.0.0.1",
        port=site.rw_port,
        user="root",
        password=site.secret("root_password"),
        connect_timeout=10,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES")
            databases = sorted(r[0] for r in cur.fetchall())
            cur.execute("SELECT User, Host FROM mysql.user")
            users = sorted(f"{u}@{h}" for u, h in cur.fetchall())
    finally:
        conn.close()
    return {"databases": databases, "users": users}


def _etcd_state(site: TestSite) -> dict[str, str]:
    client = site.registry().client
    found = {}
    for node in client.read("/", recursive=True).leaves:
        if not node.dir:
            found[node.key] = str(node.value)
    return found


def _docker_state(engine: docker.DockerClient, site: TestSite) -> dict[str, Any]:
    """What the engine holds of the site: everything the tool creates is named cidemo-<site>-."""
    name = {"name": f"cidemo-{site.name}"}
    api = engine.api
    state: dict[str, Any] = {
        "containers": sorted(
            (c["Names"][0], c["Id"], c["Image"]) for c in api.containers(all=True, filters=name)
        ),
        "networks": sorted((n["Name"], n["Id"]) for n in api.networks(filters=name)),
        "volumes": sorted(v["Name"] for v in api.volumes(filters=name).get("Volumes") or []),
    }
    try:
        state["services"] = sorted(
            (s["Spec"]["Name"], s["ID"], s["Version"]["Index"]) for s in api.services(filters=name)
        )
        state["secrets"] = sorted((s["Spec"]["Name"], s["ID"]) for s in api.secrets(filters=name))
    except docker.errors.APIError as exc:
        if exc.status_code != 503:  # not a swarm manager: no services, no secrets
            raise
        state["services"] = state["secrets"] = []
    return state


def _state_dir(path: Path) -> dict[str, str]:
    found = {}
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = Path(root) / entry
            info = full.lstat()
            rel = str(full.relative_to(path))
            if stat.S_ISDIR(info.st_mode):
                found[rel] = f"dir {stat.S_IMODE(info.st_mode):o}"
            else:
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
                found[rel] = f"file {stat.S_IMODE(info.st_mode):o} {digest}"
    return found


def snapshot(engine: docker.DockerClient, site: TestSite) -> dict[str, Any]:
    return {
        "cluster": _database_state(site),
        "etcd": _etcd_state(site),
        "docker": _docker_state(engine, site),
        "state": _state_dir(site.state),
    }


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for part in before:
        for key in sorted(set(before[part]) | set(after[part])):
            old, new = before[part].get(key), after[part].get(key)
            if old != new:
                out.append(f"{part}/{key}: {old!r} -> {new!r}")
    return out


def test_every_command_has_a_case() -> None:
    import click

    from cidemo_infra.cli import cli

    ctx = click.Context(cli)
    commands = set()
    for name in cli.list_commands(ctx):  # the lazily imported groups (env, webhook) too
        command = cli.get_command(ctx, name)
        subs = getattr(command, "commands", None)
        commands |= {f"{name} {s}" for s in subs} if subs else {name}
    covered = {c.id.split(" (")[0] for c in CASES}
    assert commands == covered


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_rejected_command_changes_nothing(
    engine: docker.DockerClient, sites: Sites, case: Case
) -> None:
    site = sites.main
    before = snapshot(engine, site)
    args = [*case.args, "--site", str(sites.files[case.site]), "--state-dir", str(site.state)]
    if case.args[0] == "webhook":
        args += ["--listen", f"127.0.0.1:{free_port()}"]
    if case.args[0] == "schema":
        args = list(case.args)
    if case.args[0] == "images":  # images builds from the site alone: no state directory
        args = [*case.args, "--site", str(sites.files[case.site])]
    result = run_cidemo(*args, env=dict(case.env), timeout=300, stdin="n\n")
    after = snapshot(engine, site)
    assert result.rc == case.rc, result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and case.says in lines[0], result.err
    assert _differences(before, after) == []
    if case.site == "bare" and case.args[:2] == ("env", "up"):
        listed = run_cidemo(
            "env", "list", "--json", "--site", str(site.path), "--state-dir", str(site.state)
        )
        assert listed.rc == 0, listed.err
        assert "pr-1" not in listed.out  # no phantom preview


def test_demo_shows_staging_and_a_preview_each_on_its_own_database(sites: Sites) -> None:
    """`make demo` on the site (after the rejections: `env promote` found staging empty): twice,
    the same answers; `status` then lists both environments beside the containers."""
    site = sites.main
    cidemo = Path(sys.executable).with_name("cidemo")
    for _ in range(2):
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "demo.sh"), str(cidemo), str(site.path)],
            env={**os.environ, "CIDEMO_STATE_DIR": str(site.state), "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        # staging's answer, and the preview's from its own branch (staging's database name)
        assert proc.stdout.count('"database": "stage_guestbook"') >= 2, proc.stdout
        assert "curl -s --resolve pr-1-guestbook.cidemo.test:" in proc.stdout
    status = site.cidemo("status", "--json")
    assert status.rc == 0, status.err
    listed = json.loads(status.out)
    assert {(e["name"], e["database"]) for e in listed["environments"]} == {
        ("stage-guestbook", "stage_guestbook"),
        ("pr-1-guestbook", "stage_guestbook"),
    }
    assert any(c["role"] == "router" for c in listed["containers"])
