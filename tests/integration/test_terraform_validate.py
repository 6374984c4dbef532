"""The module checked by the provider itself: `terraform init` + `validate` with the real
terraform-provider-openstack, built from its Go module into the mirror of `make terraform-tools`
(TF_CLI_CONFIG_FILE), or from the registry where the machine reaches it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cidemo_infra.data import TERRAFORM_MODULE
from cidemo_infra.errors import UsageError
from cidemo_infra.terraform import TerraformDriver, terraform_binary
from tests.conftest import REPO, need

pytestmark = pytest.mark.integration
MODULE = TERRAFORM_MODULE


@pytest.fixture(scope="module")
def provider_ready() -> None:
    try:
        terraform_binary()
    except UsageError as exc:
        need(False, f"terraform or tofu ({exc}); run make terraform-tools")
    need(
        bool(os.environ.get("TF_CLI_CONFIG_FILE")),
        "TF_CLI_CONFIG_FILE: the provider mirror (export $(make -s terraform-tools))",
    )


def validate(directory: Path) -> dict[str, Any]:
    driver = TerraformDriver(directory, timeout=300)
    driver.init()
    return driver.validate()


def copy_module(tmp_path: Path) -> Path:
    work = tmp_path / "module"
    shutil.copytree(MODULE, work, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    return work


def test_the_shipped_module_is_valid_for_the_real_provider(
    provider_ready: None, tmp_path: Path
) -> None:
    work = copy_module(tmp_path)
    result = validate(work)
    assert result["valid"], result["diagnostics"]
    assert result["warning_count"] == 0, result["diagnostics"]
    lock = (work / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.' in lock and 'version     = "3.4.0"' in lock


def test_no_dependency_lock_file_is_shipped() -> None:
    """A lock made from a local build carries hashes the registry's packages do not match."""
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*.terraform.lock.hcl"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tracked == ""


# Mistakes of the kind the offline schema checker used to look for, each caught by validate.
MUTATIONS = {
    "unknown argument": (
        "network.tf",
        "  admin_state_up = true\n",
        '  admin_state_up = true\n  colour         = "red"\n',
        'An argument named "colour" is not expected here',
    ),
    "server group policy typo": (
        "compute.tf",
        "policies = [",
        "policy = [",
        'An argument named "policy" is not expected here',
    ),
    "rule direction outside its choices": (
        "security.tf",
        'direction         = "ingress"',
        'direction         = "inbound"',
        'unknown "inbound" direction',
    ),
    "missing required argument": (
        "compute.tf",
        "  pool        = var.external_network\n",
        "",
        'The argument "pool" is required',
    ),
    "unknown argument in a dynamic block": (
        "compute.tf",
        "group = scheduler_hints.value",
        "grup = scheduler_hints.value",
        'An argument named "grup" is not expected here',
    ),
    "floating_ip on an instance (removed in 2.0)": (
        "compute.tf",
        "  key_pair    = openstack_compute_keypair_v2.site.name\n",
        '  key_pair    = openstack_compute_keypair_v2.site.name\n  floating_ip = "1.2.3.4"\n',
        'An argument named "floating_ip" is not expected here',
    ),
    "a type removed in 3.0": (
        "compute.tf",
        'resource "openstack_networking_floatingip_associate_v2"',
        'resource "openstack_compute_floatingip_associate_v2"',
        "openstack_compute_floatingip_associate_v2",
    ),
}


@pytest.mark.parametrize(
    ("filename", "old", "new", "message"), MUTATIONS.values(), ids=list(MUTATIONS)
)
def test_validate_rejects_a_mutated_module(
    provider_ready: None, tmp_path: Path, filename: str, old: str, new: str, message: str
) -> None:
    work = copy_module(tmp_path)
    text = (work / filename).read_text()
    assert old in text
    (work / filename).write_text(text.replace(old, new, 1))
    result = validate(work)
    assert not result["valid"]
    said = [f"{d.get('summary', '')} {d.get('detail', '')}" for d in result["diagnostics"]]
    assert any(message in text for text in said), said
