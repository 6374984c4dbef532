"""What starting `cidemo` imports: nothing a local provision or smoke does not run (the delivery
layer, the webhook, the cloud, templates, dnspython's resolver), and the deferred parts still
load when a command names them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

NOT_AT_START = (
    "cidemo_infra.pipeline",
    "cidemo_infra.webhook",
    "cidemo_infra.backups",
    "cidemo_infra.databases",
    "cidemo_infra.platforms",
    "cidemo_infra.render",
    "cidemo_infra.cloud",
    "cidemo_infra.terraform",
    "cidemo_infra.targets.openstack",
    "cidemo_infra.proxy.maxscale",
    "jinja2",
    "openstack",
    "keystoneauth1",
    "waitress",
    "dns.message",
)


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout


def test_the_cli_and_the_local_path_import_nothing_they_do_not_run() -> None:
    code = (
        "import json, sys; import cidemo_infra.cli, cidemo_infra.lifecycle, "
        "cidemo_infra.checks.smoke, cidemo_infra.placement.apply, cidemo_infra.registry.keys; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = set(json.loads(_python(code)))
    assert "etcd" in loaded and "docker" in loaded  # what the local path does use
    early = sorted(
        m for m in loaded for name in NOT_AT_START if m == name or m.startswith(name + ".")
    )
    assert early == []


def test_deferred_parts_load_when_used() -> None:
    code = (
        "import cidemo_infra.cli, etcd.client; "
        "print(etcd.client.dns.resolver.Resolver.__name__)"  # python-etcd's own reference
    )
    assert _python(code).strip() == "Resolver"
    for group, sub in (("env", "up"), ("webhook", "serve")):
        done = subprocess.run(
            [sys.executable, "-m", "cidemo_infra", group, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert sub in done.stdout
