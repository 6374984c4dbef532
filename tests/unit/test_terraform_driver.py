"""The Terraform driver against the machine's real terraform, on modules of built-in resources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from python_terraform import IsFlagged

from cidemo_infra.errors import TerraformError, TerraformTimeout, UsageError
from cidemo_infra.terraform import TerraformDriver, terraform_binary
from cidemo_infra.terraform.driver import _Terraform
from tests.conftest import REPO, need

pytestmark = pytest.mark.unit
FIXTURES = REPO / "tests" / "data" / "terraform"


def need_terraform() -> None:
    try:
        terraform_binary()
    except UsageError as exc:
        need(False, f"terraform or tofu ({exc}; make terraform-tools provides one)")


@pytest.fixture
def module(tmp_path: Path) -> Path:
    need_terraform()
    work = tmp_path / "basic"
    shutil.copytree(FIXTURES / "basic", work)
    (work / "in.tfvars.json").write_text(
        json.dumps(
            {
                "nodes": {
                    "deis-1": {"role": "deis", "private_ip": "10.0.0.11"},
                    "standalone-1": {"role": "standalone", "private_ip": "10.0.0.14"},
                }
            }
        )
    )
    return work


def test_full_lifecycle_plan_apply_noop_output_destroy(module: Path) -> None:
    driver = TerraformDriver(module)
    driver.init()
    first = driver.plan(module / "in.tfvars.json")
    assert first.has_changes
    assert first.counts["create"] == 2
    assert ('terraform_data.node["deis-1"]', "create") in first.changes
    driver.apply_plan()
    assert not (module / "cidemo.tfplan").exists()
    second = driver.plan(module / "in.tfvars.json")
    assert not second.has_changes
    assert second.describe() == "no changes"
    nodes = driver.outputs()["nodes"]
    assert nodes["deis-1"] == {"name": "deis-1", "role": "deis", "private_ip": "10.0.0.11"}
    assert len(driver.state_addresses()) == 2
    driver.destroy(module / "in.tfvars.json")
    assert driver.state_addresses() == []


def test_changed_input_is_planned_as_update(module: Path) -> None:
    driver = TerraformDriver(module)
    driver.init()
    driver.plan(module / "in.tfvars.json")
    driver.apply_plan()
    data = json.loads((module / "in.tfvars.json").read_text())
    data["nodes"]["deis-1"]["private_ip"] = "10.0.0.99"
    (module / "in.tfvars.json").write_text(json.dumps(data))
    summary = driver.plan(module / "in.tfvars.json")
    assert summary.changes == [('terraform_data.node["deis-1"]', "update")]
    assert summary.describe() == "0 to add, 1 to change, 0 to replace, 0 to destroy"


def test_broken_module_raises_terraform_error_with_command_code_and_message(tmp_path: Path) -> None:
    need_terraform()
    work = tmp_path / "broken"
    shutil.copytree(FIXTURES / "broken", work)
    driver = TerraformDriver(work)
    driver.init()
    with pytest.raises(TerraformError) as err:
        driver.plan()
    assert err.value.rc == 1
    assert err.value.cmd[1] == f"-chdir={work}"
    assert "plan" in err.value.cmd
    assert "Reference to undeclared input variable" in err.value.stderr
    assert str(err.value).startswith("terraform plan failed (exit 1): Reference to undeclared")


def test_apply_without_a_saved_plan_is_refused(module: Path) -> None:
    driver = TerraformDriver(module)
    with pytest.raises(UsageError, match="no saved plan"):
        driver.apply_plan()


def test_python_terraform_breakages_are_handled_in_the_command_line(module: Path) -> None:
    tf = _Terraform(module, terraform_binary())
    # python-terraform's destroy() passes force=IsFlagged, i.e. `-force`, removed in 0.15
    flagged = tf.generate_cmd_string("destroy", force=IsFlagged)
    assert "-force" not in flagged
    assert flagged[1] == f"-chdir={module}"
    plan = tf.generate_cmd_string("plan", detailed_exitcode=IsFlagged)
    assert plan[:3] == [terraform_binary(), f"-chdir={module}", "plan"]
    assert str(module) not in plan[3:]


def slow_module(tmp_path: Path, seconds: int) -> Path:
    need_terraform()
    work = tmp_path / "slow"
    shutil.copytree(FIXTURES / "slow", work)
    (work / "in.tfvars.json").write_text(json.dumps({"seconds": seconds}))
    return work


def test_apply_progress_is_streamed_while_terraform_runs(tmp_path: Path) -> None:
    work = slow_module(tmp_path, 2)
    seen: list[tuple[str, bool]] = []
    driver = TerraformDriver(work, progress=lambda line: seen.append((line, driver.is_running)))
    driver.init()
    driver.plan(work / "in.tfvars.json")
    driver.apply_plan()
    assert ("terraform_data.slow: Creating...", True) in seen
    assert any(line.startswith("terraform_data.slow: Creation complete") for line, _ in seen)
    assert seen[-1][0].startswith("Apply complete! Resources: 1 added")
    assert driver.last_apply_started() is not None
    assert not driver.is_running


def test_a_hung_apply_is_stopped_at_the_timeout_with_one_clear_line(tmp_path: Path) -> None:
    work = slow_module(tmp_path, 300)
    driver = TerraformDriver(work, timeout=5)
    driver.init()
    driver.plan(work / "in.tfvars.json")
    with pytest.raises(TerraformTimeout) as err:
        driver.apply_plan()
    assert str(err.value).startswith(
        "terraform apply did not finish within 5 s (timeouts.terraform) and was stopped; "
    )
    assert "run provision again to converge" in str(err.value)
    assert not driver.is_running
    # interrupted, not killed: terraform wrote its state, and it can be planned again
    assert not (work / ".terraform.tfstate.lock.info").exists()
    assert driver.plan(work / "in.tfvars.json").has_changes


def test_terraform_runs_without_questions_and_without_the_update_check(tmp_path: Path) -> None:
    work = slow_module(tmp_path, 0)
    driver = TerraformDriver(work)
    driver.init()
    driver.plan(work / "in.tfvars.json")
    driver.apply_plan()
    env = dict(
        line.split("=", 1) for line in (work / "env.txt").read_text().splitlines() if "=" in line
    )
    assert env["TF_IN_AUTOMATION"] == "1"
    assert env["TF_INPUT"] == "0"
    assert env["CHECKPOINT_DISABLE"] == "1"


@pytest.mark.parametrize("name", ["terragrunt", "/usr/bin/pulumi"])
def test_unsupported_binary_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="not supported"):
        terraform_binary(name)


def test_missing_binary_names_tf_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="TF_BINARY='tofu': not found"):
        terraform_binary("tofu")


def test_a_cloud_error_becomes_the_address_and_the_clouds_own_reason() -> None:
    diagnostic = {
        "severity": "error",
        "summary": (
            "Error creating OpenStack server: Expected HTTP response code [202] when accessing "
            "[POST http://127.0.0.1:18774/v2.1/servers], but got 403 instead: "
            '{"forbidden": {"code": 403, "message": "Quota exceeded for instances: Requested 1, '
            'but already used 10 of 10 instances"}}'
        ),
        "detail": "",
        "address": 'openstack_compute_instance_v2.node["deis-3"]',
    }
    error = TerraformError(["terraform", "-chdir=/x", "apply", "-json"], 1, "", [diagnostic] * 2)
    assert str(error) == (
        'terraform apply failed (exit 1): openstack_compute_instance_v2.node["deis-3"]: '
        "Error creating OpenStack server: the cloud answered HTTP 403 to POST: Quota exceeded "
        "for instances: Requested 1, but already used 10 of 10 instances (+1 more error)"
    )


def test_the_site_key_bounds_every_terraform_command(tmp_path: Path) -> None:
    need_terraform()
    from cidemo_infra.console import Reporter
    from cidemo_infra.site import Site
    from cidemo_infra.state import StateDir
    from cidemo_infra.targets.openstack import site_driver

    site = Site.model_validate(
        {
            "name": "tmo",
            "target": "openstack",
            "cloud": "c",
            "ssh": {"public_key_file": "x.pub"},
            "roles": {
                "deis": {"flavor": "f", "image": "i"},
                "standalone": {"flavor": "f", "image": "i"},
            },
            "timeouts": {"terraform": 45},
        }
    )
    driver = site_driver(site, StateDir.resolve("tmo", str(tmp_path)), Reporter(quiet=True))
    assert driver.timeout == 45
