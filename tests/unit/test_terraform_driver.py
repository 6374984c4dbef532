"""The Terraform driver against the machine's real terraform, on modules of built-in resources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from python_terraform import IsFlagged

from cidemo_infra.errors import TerraformError, UsageError
from cidemo_infra.terraform import TerraformDriver, terraform_binary
from cidemo_infra.terraform.driver import _Terraform
from tests.conftest import REPO, need

pytestmark = pytest.mark.unit
FIXTURES = REPO / "tests" / "data" / "terraform"


@pytest.fixture
def module(tmp_path: Path) -> Path:
    need(shutil.which("terraform") is not None, "the terraform binary on PATH")
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
    need(shutil.which("terraform") is not None, "the terraform binary on PATH")
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


def test_automation_environment_is_set(module: Path) -> None:
    import os

    TerraformDriver(module)
    assert os.environ["TF_IN_AUTOMATION"] == "1"
    assert os.environ["TF_INPUT"] == "0"


@pytest.mark.parametrize("name", ["terragrunt", "/usr/bin/pulumi"])
def test_unsupported_binary_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="not supported"):
        terraform_binary(name)


def test_missing_binary_names_tf_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="TF_BINARY='tofu': not found"):
        terraform_binary("tofu")
