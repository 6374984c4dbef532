"""`cidemo render`: Terraform inputs and user-data in the state directory, and nowhere else."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import hcl2
import pytest
import yaml

from cidemo_infra.data import TERRAFORM_MODULE
from tests.conftest import REPO, SITES

pytestmark = pytest.mark.unit
EXAMPLE = SITES / "openstack.example.yaml"


@pytest.fixture
def rendered(tmp_path: Path, cidemo) -> tuple[Path, list[Path], str]:
    state = tmp_path / "state"
    result = cidemo("render", "--site", str(EXAMPLE), "--state-dir", str(state))
    assert result.rc == 0, result.err
    paths = [Path(line) for line in result.out.split()]
    return state, paths, result.out + result.err


def test_render_writes_tfvars_and_four_user_data_files(rendered) -> None:
    state, paths, _ = rendered
    assert [p.name for p in paths] == [
        "cidemo.auto.tfvars.json",
        "deis-1.yaml",
        "deis-2.yaml",
        "deis-3.yaml",
        "standalone-1.yaml",
    ]
    assert all(p.is_relative_to(state) and p.exists() for p in paths)
    for path in paths[1:]:
        text = path.read_text()
        assert text.startswith("#cloud-config\n")
        assert yaml.safe_load(text)["hostname"] == path.stem
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tfvars_match_the_module_variables_exactly(rendered) -> None:
    _, paths, _ = rendered
    tfvars = json.loads(paths[0].read_text())
    with open(TERRAFORM_MODULE / "variables.tf") as fh:
        declared = {next(iter(v)) for v in hcl2.load(fh)["variable"]}
    declared = {name.strip('"') for name in declared}
    assert set(tfvars) == declared
    assert tfvars["nodes"]["deis-2"]["private_ip"] == "10.42.0.12"
    assert Path(tfvars["nodes"]["deis-2"]["user_data_file"]) == paths[2]
    assert tfvars["tags"] == ["cidemo", "cidemo-site-demo"]


def test_no_secret_in_output_or_in_files_meant_to_be_committed(rendered) -> None:
    state, paths, output = rendered
    assert "PRIVATE KEY" not in output
    assert "PRIVATE KEY" not in paths[0].read_text()
    for path in TERRAFORM_MODULE.rglob("*"):
        if path.is_file():
            assert "PRIVATE KEY" not in path.read_text(errors="ignore")
    keys = [p for p in (state / "tls").rglob("*key*.pem")]
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)


def test_render_copies_the_module_into_the_state_dir(rendered) -> None:
    state, _, _ = rendered
    copied = sorted(p.name for p in (state / "terraform").glob("*.tf"))
    assert copied == sorted(p.name for p in TERRAFORM_MODULE.glob("*.tf"))


def test_render_is_idempotent(tmp_path: Path, cidemo) -> None:
    state = tmp_path / "s"
    first = cidemo("render", "--site", str(EXAMPLE), "--state-dir", str(state))
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    second = cidemo("render", "--site", str(EXAMPLE), "--state-dir", str(state))
    assert first.rc == second.rc == 0
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before


def test_state_dir_of_another_site_is_refused(tmp_path: Path, cidemo) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "site").write_text("other\n")
    result = cidemo("render", "--site", str(EXAMPLE), "--state-dir", str(state))
    assert result.rc == 2
    assert "belongs to site 'other'" in result.err


def test_render_of_a_local_site_is_a_usage_error(tmp_path: Path, cidemo) -> None:
    result = cidemo(
        "render", "--site", str(SITES / "local.yaml"), "--state-dir", str(tmp_path / "s")
    )
    assert result.rc == 2
    assert "target local" in result.err
    assert not (tmp_path / "s").exists()


def test_default_state_dir_is_dot_cidemo_site(tmp_path: Path, cidemo) -> None:
    import shutil

    shutil.copytree(REPO / "infra" / "sites", tmp_path / "infra" / "sites")
    env = {"CIDEMO_STATE_DIR": ""}
    result = cidemo("render", "--site", "infra/sites/openstack.example.yaml", env=env, cwd=tmp_path)
    assert result.rc == 0, result.err
    assert (tmp_path / ".cidemo" / "demo" / "terraform" / "cidemo.auto.tfvars.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cidemo", "infra"]


def test_env_state_dir_is_honoured(tmp_path: Path, cidemo) -> None:
    result = cidemo(
        "render", "--site", str(EXAMPLE), env={"CIDEMO_STATE_DIR": str(tmp_path / "env")}
    )
    assert result.rc == 0
    assert (tmp_path / "env" / "user-data" / "deis-1.yaml").exists()


@pytest.mark.parametrize(
    ("setting", "policy"), [(None, "anti-affinity"), ("soft", "soft-anti-affinity")]
)
def test_the_deis_server_group_policy_follows_the_site(
    tmp_path: Path, cidemo, setting: str | None, policy: str
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["ssh"] = {"public_key_file": str(SITES / "example-key.pub")}
    if setting:
        data["roles"]["deis"]["anti_affinity"] = setting
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    result = cidemo("render", "--site", str(site), "--state-dir", str(tmp_path / "state"))
    assert result.rc == 0, result.err
    tfvars = json.loads(Path(result.out.split()[0]).read_text())
    assert tfvars["deis_server_group_policy"] == policy


@pytest.mark.parametrize(("node_os", "builder"), [("flatcar", False), ("coreos-legacy", True)])
def test_the_deis_builder_port_is_opened_only_where_deis_runs(
    tmp_path: Path, cidemo, node_os: str, builder: bool
) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["ssh"] = {"public_key_file": str(SITES / "example-key.pub")}
    data["node_os"] = node_os
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    result = cidemo("render", "--site", str(site), "--state-dir", str(tmp_path / "state"))
    assert result.rc == 0, result.err
    assert json.loads(Path(result.out.split()[0]).read_text())["deis_builder"] is builder


def test_terraform_refuses_an_unknown_server_group_policy(rendered, tmp_path: Path) -> None:
    """The module's own validation, by the real terraform (variables.tf needs no provider),
    with the rendered inputs of the example site and one bad value."""
    import shutil
    import subprocess

    _, paths, _ = rendered
    shutil.copy(TERRAFORM_MODULE / "variables.tf", tmp_path / "variables.tf")
    shutil.copy(paths[0], tmp_path / paths[0].name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TF_IN_AUTOMATION": "1", "HOME": str(tmp_path)}

    def terraform(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["terraform", *args, "-input=false", "-no-color"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    init = terraform("init")
    assert init.returncode == 0, init.stderr
    good = terraform("plan")
    assert good.returncode == 0, good.stderr
    bad = terraform("plan", "-var", "deis_server_group_policy=affinity")
    assert bad.returncode == 1
    assert "deis_server_group_policy must be anti-affinity or soft-anti-affinity" in bad.stderr


def test_a_key_that_only_looks_like_one_is_refused_before_the_cloud(tmp_path: Path, cidemo) -> None:
    """Nova answers 400 'failed to generate fingerprint' for such a key, mid-apply."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["ssh"] = {"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcidemoExampleKeyOnly x"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    result = cidemo("render", "--site", str(site), "--state-dir", str(tmp_path / "state"))
    assert result.rc == 2
    (line,) = result.err.splitlines()
    assert "ssh.public_key: the key does not parse as an OpenSSH public key" in line
    assert not (tmp_path / "state" / "terraform").exists()


def test_the_example_key_is_a_real_public_key() -> None:
    from cryptography.hazmat.primitives import serialization

    text = (SITES / "example-key.pub").read_text().split()
    assert serialization.load_ssh_public_key(" ".join(text[:2]).encode())


@pytest.mark.parametrize("builds", [True, False])
def test_nodes_trust_the_site_registry_only_where_the_site_builds(
    tmp_path: Path, cidemo, builds: bool
) -> None:
    """Every node pulls the builds from the standalone node's registry: its engine trusts the site
    CA for that address (dockerd's certs.d), and for nothing where the site does not build."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["ssh"] = {"public_key_file": str(SITES / "example-key.pub")}
    data["environments"] = {"app": "guestbook", "image": "guestbook:{sha}"}
    if builds:
        data["environments"]["build"] = {"repository_url": "https://git.example.com/guestbook.git"}
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data))
    result = cidemo("render", "--site", str(site), "--state-dir", str(tmp_path / "state"))
    assert result.rc == 0, result.err
    ca = (tmp_path / "state" / "tls" / "ca.pem").read_text().strip()
    for path in [Path(p) for p in result.out.split()[1:]]:
        trusted = [
            f
            for f in yaml.safe_load(path.read_text())["write_files"]
            if f["path"].startswith("/etc/docker/certs.d/")
        ]
        if not builds:
            assert trusted == [], path.name
            continue
        standalone = "10.42.0.14:5000"  # standalone-1's private address, the registry's port
        assert [f["path"] for f in trusted] == [f"/etc/docker/certs.d/{standalone}/ca.crt"]
        assert trusted[0]["content"].strip() == ca
