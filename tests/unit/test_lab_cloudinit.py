"""The lab nodes' cloud-config applier (tests/cloud/lab/node/cidemo-lab-cloudinit): what it plans
for the project's real rendered user-data, in coreos-cloudinit's order; what it does on a node
(files, keys, systemctl calls, the boot result); and its one-line failure on any key it does not
implement."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import stat
import subprocess
import sys
import urllib.error
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, SITES, run_cidemo

pytestmark = pytest.mark.unit

APPLIER = REPO / "tests" / "cloud" / "lab" / "node" / "cidemo-lab-cloudinit"
EXAMPLE = SITES / "openstack.example.yaml"
# the lab image's /usr/share/flatcar/update.conf (reached as /usr/share/coreos/update.conf)
IMAGE_UPDATE_CONF = "GROUP=stable\nSERVER=disabled\n"
MEMBERS_CLIENT_URLS = "https://10.42.0.11:2379,https://10.42.0.12:2379,https://10.42.0.13:2379"
NODES = ("deis-1", "deis-2", "deis-3", "standalone-1")


def _load_applier() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("cidemo_lab_cloudinit", str(APPLIER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


lab = _load_applier()


@pytest.fixture(scope="module")
def user_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The user-data `cidemo render` writes for the example OpenStack site, by node."""
    state = tmp_path_factory.mktemp("state")
    result = run_cidemo("render", "--site", str(EXAMPLE), "--state-dir", str(state))
    assert result.rc == 0, result.err
    rendered = {path.stem: path.read_text() for path in (state / "user-data").glob("*.yaml")}
    assert sorted(rendered) == list(NODES)
    return rendered


@pytest.fixture(scope="module")
def legacy_user_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("legacy")
    text = EXAMPLE.read_text()
    assert "node_os: flatcar" in text
    site = directory / "legacy.yaml"
    site.write_text(text.replace("node_os: flatcar", "node_os: coreos-legacy"))
    state = directory / "state"
    result = run_cidemo("render", "--site", str(site), "--state-dir", str(state))
    assert result.rc == 0, result.err
    return (state / "user-data" / "deis-1.yaml").read_text()


def planned(text: str | bytes, update_conf: str | None = IMAGE_UPDATE_CONF) -> list[Any]:
    return lab.plan(lab.parse(lab.load_document(text)), update_conf)


def steps(actions: list[Any]) -> list[str]:
    """Each action as the applier logs it, without the sizes and hashes."""
    return [action.describe().split(" (")[0] for action in actions]


def expected_steps(node: str) -> list[str]:
    drop_in = (
        "20-cidemo-etcd-proxy.conf"
        if node.startswith("standalone")
        else ("20-cidemo-etcd-member.conf")
    )
    return [
        f"hostname {node}",
        "ssh-keys core coreos-cloudinit",
        "write /etc/cidemo/node.env 0644 root:root",
        "write /etc/docker/tls/ca.pem 0644 root:root",
        "write /etc/docker/tls/server.pem 0644 root:root",
        "write /etc/docker/tls/server-key.pem 0600 root:root",
        "write /opt/cidemo/bin/cidemo-branch-store 0755 root:root",
        "write /etc/ssl/certs/cidemo-etcd-ca.pem 0644 etcd:etcd",
        "write /etc/ssl/certs/cidemo-etcd-server.pem 0644 etcd:etcd",
        "write /etc/ssl/certs/cidemo-etcd-server-key.pem 0600 etcd:etcd",
        "write /etc/coreos/update.conf 0644",
        "write /etc/systemd/system/docker-tls-tcp.socket 0644",
        "enable docker-tls-tcp.socket",
        "write /etc/systemd/system/docker.service.d/20-cidemo-tls.conf 0644",
        "write /etc/systemd/system/cidemo-metadata-guard.service 0644",
        "enable cidemo-metadata-guard.service",
        f"write /etc/systemd/system/etcd-member.service.d/{drop_in} 0644",
        "enable etcd-member.service",
        "write /etc/systemd/system/cidemo-apps-firewall.service 0644",
        "enable cidemo-apps-firewall.service",
        "write /etc/systemd/system/cidemo-branch-store.service 0644",
        "enable cidemo-branch-store.service",
        "write /run/systemd/system/locksmithd.service.d/20-cloudinit.conf 0644",
        "unmask /run/systemd/system/locksmithd.service",
        "unmask /run/systemd/system/locksmithd.service",
        "daemon-reload",
        "start docker-tls-tcp.socket",
        "restart docker.service",
        "start cidemo-metadata-guard.service",
        "start etcd-member.service",
        "start cidemo-apps-firewall.service",
        "start cidemo-branch-store.service",
        "restart locksmithd.service",
    ]


@pytest.mark.parametrize("node", NODES)
def test_plan_follows_coreos_cloudinit_order(user_data: dict[str, str], node: str) -> None:
    assert steps(planned(user_data[node])) == expected_steps(node)


@pytest.mark.parametrize("node", NODES)
def test_plan_writes_what_the_user_data_says(user_data: dict[str, str], node: str) -> None:
    document = yaml.safe_load(user_data[node])
    writes = {a.path: a for a in planned(user_data[node]) if isinstance(a, lab.WriteFile)}
    for entry in document["write_files"]:
        action = writes[entry["path"]]
        assert (action.content, action.owner) == (entry["content"], entry["owner"])
        assert action.mode == int(entry["permissions"], 8)
    for unit in document["coreos"]["units"]:
        if "content" in unit:
            assert writes[f"/etc/systemd/system/{unit['name']}"].content == unit["content"]
        for drop_in in unit.get("drop_ins", []):
            path = f"/etc/systemd/system/{unit['name']}.d/{drop_in['name']}"
            assert writes[path].content == drop_in["content"]


def test_update_and_locksmith_land_where_flatcar_has_them(user_data: dict[str, str]) -> None:
    writes = {
        a.path: a.content for a in planned(user_data["deis-2"]) if isinstance(a, lab.WriteFile)
    }
    assert writes["/etc/coreos/update.conf"] == IMAGE_UPDATE_CONF + "REBOOT_STRATEGY=etcd-lock\n"
    assert writes["/run/systemd/system/locksmithd.service.d/20-cloudinit.conf"] == (
        f'[Service]\nEnvironment="LOCKSMITHD_ENDPOINT={MEMBERS_CLIENT_URLS}"\n'
        'Environment="LOCKSMITHD_ETCD_CAFILE=/etc/ssl/certs/cidemo-etcd-ca.pem"\n'
        'Environment="LOCKSMITHD_ETCD_CERTFILE=/etc/ssl/certs/cidemo-etcd-server.pem"\n'
        'Environment="LOCKSMITHD_ETCD_KEYFILE=/etc/ssl/certs/cidemo-etcd-server-key.pem"\n'
    )


def test_update_conf_replaces_an_existing_strategy_in_place() -> None:
    base = "GROUP=stable\nREBOOT_STRATEGY=reboot\nSERVER=disabled\n"
    assert lab.update_conf(base, {"REBOOT_STRATEGY": "etcd-lock"}) == (
        "GROUP=stable\nREBOOT_STRATEGY=etcd-lock\nSERVER=disabled\n"
    )


def test_reboot_strategy_off_masks_and_stops_locksmithd(user_data: dict[str, str]) -> None:
    text = user_data["deis-1"].replace('reboot_strategy: "etcd-lock"', 'reboot_strategy: "off"')
    actions = steps(planned(text))
    runtime_unit = "/run/systemd/system/locksmithd.service"
    assert actions[-1] == "stop locksmithd.service"
    assert actions.index(f"unmask {runtime_unit}") < actions.index(f"mask {runtime_unit}")


def test_a_reboot_strategy_needs_an_update_conf(user_data: dict[str, str]) -> None:
    with pytest.raises(lab.CloudConfigError) as failure:
        planned(user_data["deis-1"], update_conf=None)
    assert failure.value.path == "coreos.update"


def test_gzipped_user_data_plans_the_same(user_data: dict[str, str]) -> None:
    text = user_data["standalone-1"]
    assert planned(gzip.compress(text.encode())) == planned(text)


def add(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`document` with `value` set at a dotted path (list items as `name[i]`)."""
    node: Any = document
    *parents, last = path.split(".")
    for part in parents:
        name, _, index = part.partition("[")
        node = node[name] if not index else node[name][int(index.rstrip("]"))]
    node[last] = value
    return document


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("manage_etc_hosts", "localhost", "not implemented by the lab's applier"),
        ("users", [{"name": "ops"}], "the templates create no users"),
        ("write_files[1].encoding", "b64", "the templates write plain text"),
        ("coreos.units[0].nmae", "typo.service", "not implemented"),
        ("coreos.units[3].drop_ins[0].runtime", True, "not implemented"),
        ("coreos.update.group", "beta", "update-engine.service"),
        ("coreos.oem", {"id": "openstack"}, "not implemented"),
        ("coreos.etcd2", {"name": "deis-1"}, "coreos-legacy"),
    ],
)
def test_a_key_the_lab_does_not_implement_fails_naming_its_path(
    user_data: dict[str, str], path: str, value: Any, says: str
) -> None:
    document = add(yaml.safe_load(user_data["deis-1"]), path, value)
    with pytest.raises(lab.CloudConfigError) as failure:
        lab.parse(document)
    message = str(failure.value)
    assert failure.value.path == path
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_the_legacy_profile_is_refused_by_its_keys(legacy_user_data: str) -> None:
    with pytest.raises(lab.CloudConfigError) as failure:
        lab.parse(lab.load_document(legacy_user_data))
    assert failure.value.path == "coreos.etcd2"
    assert "coreos-legacy profile" in str(failure.value)
    assert "coreos.fleet" in str(failure.value) and "coreos.flannel" in str(failure.value)


@pytest.mark.parametrize(
    ("old", "new", "path", "says"),
    [
        ('permissions: "0600"', "permissions: 0600", "write_files[3].permissions", "quote it"),
        (
            'reboot_strategy: "etcd-lock"',
            "reboot_strategy: off",
            "coreos.update.reboot_strategy",
            "the boolean false",
        ),
        ("enable: true", 'enable: "yes"', "coreos.units[0].enable", "expected true or false"),
        ("command: start", "command: launch", "coreos.units[0].command", "'launch' is not one of"),
        ('permissions: "0600"', 'permissions: "600x"', "write_files[3].permissions", "octal"),
    ],
)
def test_a_value_coreos_cloudinit_would_read_otherwise_fails(
    user_data: dict[str, str], old: str, new: str, path: str, says: str
) -> None:
    text = user_data["deis-1"]
    assert old in text
    with pytest.raises(lab.CloudConfigError) as failure:
        lab.parse(lab.load_document(text.replace(old, new, 1)))
    assert failure.value.path == path and says in str(failure.value)


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        (lambda t: t.replace("#cloud-config\n", "#!/bin/bash\n", 1), "<header>", "#cloud-config"),
        (lambda t: t + 'hostname: "other"\n', "line", "given twice"),
        (lambda t: t + "write_files: [\n", "line", "does not parse"),
        (lambda t: t.replace('"deis-1"', '"$private_ipv4"', 1), "<document>", "$private_ipv4"),
    ],
)
def test_a_document_the_lab_cannot_read_fails_without_quoting_it(
    user_data: dict[str, str], change: Any, path: str, says: str
) -> None:
    with pytest.raises(lab.CloudConfigError) as failure:
        lab.parse(lab.load_document(change(user_data["deis-1"])))
    message = str(failure.value)
    assert message.startswith(path) and says in message
    assert "PRIVATE KEY" not in message and "\n" not in message


class FakeAccounts(lab.Accounts):
    """Every user and group maps to ids -1, which chown leaves unchanged."""

    def user(self, name: str) -> Any:
        return lab.Account(-1, -1, "/root" if name == "root" else f"/home/{name}")

    def group(self, name: str) -> int:
        return -1


class FakeNode:
    """Runs nothing, records the commands; jobs of units in `failing` fail, in `hanging` hang."""

    def __init__(self, failing: tuple[str, ...] = (), hanging: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.failing, self.hanging = failing, hanging

    def __call__(self, argv: list[str], timeout: float | None) -> Any:
        self.calls.append(list(argv))
        if argv[0] == "journalctl":
            return lab.Completed(0, "etcd-member (lab node): ETCD_IMAGE_TAG=v3.5.99 does not name")
        is_job = argv[:2] == ["systemctl", "--job-mode=replace"]
        if is_job and argv[-1] in self.hanging:
            raise subprocess.TimeoutExpired(argv, timeout or 0)
        if is_job and argv[-1] in self.failing:
            return lab.Completed(
                1,
                f"Job for {argv[-1]} failed because the control process exited with error code.\n"
                f'See "systemctl status {argv[-1]}" and "journalctl -xeu {argv[-1]}" for details.',
            )
        return lab.Completed(0, "")

    def systemctl(self) -> list[str]:
        return [" ".join(call[1:]) for call in self.calls if call[0] == "systemctl"]


def node_root(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    (root / "etc").mkdir(parents=True)
    (root / "usr/share/coreos").mkdir(parents=True)
    (root / "usr/share/coreos/update.conf").write_text(IMAGE_UPDATE_CONF)
    return root


def executor(root: Path, node: FakeNode, timeout: float | None = None) -> Any:
    return lab.Executor(
        root=root,
        run=node,
        job_timeout=timeout,
        log=lambda line: None,
        sethostname=lambda name: None,
        accounts=FakeAccounts(),
    )


def test_applying_writes_the_files_and_drives_systemd_in_order(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    root, node = node_root(tmp_path), FakeNode()
    lab.apply_user_data(user_data["deis-1"], executor(root, node))

    document = yaml.safe_load(user_data["deis-1"])
    key = root / "etc/docker/tls/server-key.pem"
    assert key.read_text() == document["write_files"][3]["content"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "etc/cidemo/node.env").stat().st_mode) == 0o644
    assert (root / "etc/hostname").read_text() == "deis-1\n"
    assert (root / "etc/coreos/update.conf").read_text().endswith("REBOOT_STRATEGY=etcd-lock\n")
    assert (root / "etc/systemd/system/etcd-member.service.d/20-cidemo-etcd-member.conf").is_file()
    assert (root / "run/systemd/system/locksmithd.service.d/20-cloudinit.conf").is_file()
    ssh = root / "home/core/.ssh"
    keys = document["ssh_authorized_keys"]
    assert (ssh / "authorized_keys.d/coreos-cloudinit").read_text() == "".join(
        f"{k}\n" for k in keys
    )
    assert (ssh / "authorized_keys").read_text() == (
        "# auto-generated by update-ssh-keys\n" + "".join(f"{k}\n" for k in keys)
    )
    assert not list(root.rglob(".cloudinit-temp*"))
    assert node.systemctl() == [
        "enable --force --no-reload docker-tls-tcp.socket",
        "enable --force --no-reload cidemo-metadata-guard.service",
        "enable --force --no-reload etcd-member.service",
        "enable --force --no-reload cidemo-apps-firewall.service",
        "enable --force --no-reload cidemo-branch-store.service",
        "daemon-reload",
        "--job-mode=replace start docker-tls-tcp.socket",
        "--job-mode=replace restart docker.service",
        "--job-mode=replace start cidemo-metadata-guard.service",
        "--job-mode=replace start etcd-member.service",
        "--job-mode=replace start cidemo-apps-firewall.service",
        "--job-mode=replace start cidemo-branch-store.service",
        "--job-mode=replace restart locksmithd.service",
    ]


def test_a_failed_job_lets_the_rest_run_and_fails_the_run_naming_it(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    node = FakeNode(failing=("etcd-member.service",))
    with pytest.raises(lab.ApplyError) as failure:
        lab.apply_user_data(user_data["deis-1"], executor(node_root(tmp_path), node))
    assert str(failure.value) == (
        "coreos.units[3].command: start etcd-member.service failed (rc 1): Job for "
        "etcd-member.service failed because the control process exited with error code.; its "
        "last log line: etcd-member (lab node): ETCD_IMAGE_TAG=v3.5.99 does not name"
    )
    assert node.systemctl()[-1] == "--job-mode=replace restart locksmithd.service"


def test_a_job_without_a_result_in_time_stops_the_run(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    node = FakeNode(hanging=("etcd-member.service",))
    with pytest.raises(lab.ApplyError) as failure:
        lab.apply_user_data(user_data["deis-1"], executor(node_root(tmp_path), node, timeout=5))
    assert str(failure.value).startswith(
        "coreos.units[3].command: start etcd-member.service had no result within 5 s"
    )
    assert "--job-mode=replace restart locksmithd.service" not in node.systemctl()


def test_keys_already_there_are_kept_as_a_set_of_their_own(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    root = node_root(tmp_path)
    ssh = root / "home/core/.ssh"
    ssh.mkdir(parents=True)
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nzaolder ops@old\n")
    lab.apply_user_data(user_data["deis-1"], executor(root, FakeNode()))
    assert (ssh / "authorized_keys.d/old_authorized_keys").read_text() == (
        "ssh-ed25519 AAAAC3Nzaolder ops@old\n"
    )
    assert (ssh / "authorized_keys").read_text().splitlines()[1:] == [
        *yaml.safe_load(user_data["deis-1"])["ssh_authorized_keys"],
        "ssh-ed25519 AAAAC3Nzaolder ops@old",
    ]


def test_masking_replaces_a_unit_file_and_unmasking_keeps_a_real_one(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    root = node_root(tmp_path)
    runtime_unit = root / "run/systemd/system/locksmithd.service"
    runtime_unit.parent.mkdir(parents=True)
    runtime_unit.write_text("[Service]\nExecStart=/bin/true\n")
    text = user_data["deis-1"].replace('reboot_strategy: "etcd-lock"', 'reboot_strategy: "off"')
    lab.apply_user_data(text, executor(root, FakeNode()))
    assert runtime_unit.is_symlink() and str(runtime_unit.readlink()) == "/dev/null"


def test_boot_routes_the_metadata_address_then_applies_and_records_ok(
    user_data: dict[str, str], tmp_path: Path
) -> None:
    node_env, saved, result = tmp_path / "node.env", tmp_path / "lib/user-data", tmp_path / "result"
    node_env.write_text("# written by the lab controller\nMETADATA_VIA=10.42.0.2\n")
    data = user_data["standalone-1"].encode()
    node = FakeNode()
    rc = lab.boot(executor(node_root(tmp_path), node), node_env, saved, result, lambda: data)
    assert (rc, result.read_text()) == (0, "ok\n")
    assert node.calls[0] == ["ip", "route", "replace", "169.254.169.254/32", "via", "10.42.0.2"]
    assert saved.read_bytes() == data and stat.S_IMODE(saved.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("env", "fetched", "says"),
    [
        (None, "", "node.env is missing: the lab controller writes it before the node starts"),
        ("METADATA_VIA=metadata\n", "", "METADATA_VIA='metadata' is not the IPv4 address"),
        (
            "METADATA_VIA=10.42.0.2\n",
            "#cloud-config\nmanage_etc_hosts: localhost\n",
            "manage_etc_hosts: not implemented",
        ),
    ],
)
def test_a_failed_boot_records_one_line(
    tmp_path: Path, env: str | None, fetched: str, says: str
) -> None:
    node_env, result = tmp_path / "node.env", tmp_path / "result"
    if env is not None:
        node_env.write_text(env)
    node = FakeNode()
    rc = lab.boot(
        executor(node_root(tmp_path), node), node_env, tmp_path / "saved", result, fetched.encode
    )
    (line,) = result.read_text().splitlines()
    assert rc == 1 and line.startswith("failed: ") and says in line
    assert node.systemctl() == []


def test_fetching_retries_until_the_metadata_answers() -> None:
    answers: list[Any] = [urllib.error.URLError("refused"), urllib.error.URLError("refused"), b"ud"]

    def opener(url: str, timeout: float) -> bytes:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert lab.fetch_user_data(opener=opener, sleep=lambda s: None) == b"ud"
    assert answers == []


def test_fetching_gives_up_after_its_deadline() -> None:
    now = [0.0]
    attempts = []

    def opener(url: str, timeout: float) -> bytes:
        attempts.append(now[0])
        raise urllib.error.HTTPError(url, 404, "no user-data", {}, None)  # type: ignore[arg-type]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(lab.BootError) as failure:
        lab.fetch_user_data(
            seconds=60, interval=2, opener=opener, clock=lambda: now[0], sleep=sleep
        )
    assert str(failure.value) == (f"{lab.USER_DATA_URL}: no user-data within 60 s (last: HTTP 404)")
    assert attempts == [float(t) for t in range(0, 61, 2)]


def run_applier(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APPLIER), *args], capture_output=True, text=True, check=False
    )


def test_the_command_prints_the_plan(user_data: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "deis-3.yaml"
    path.write_text(user_data["deis-3"])
    result = run_applier("apply", "--plan", "--root", str(node_root(tmp_path)), str(path))
    assert result.returncode == 0, result.stderr
    assert steps_of_lines(result.stdout) == expected_steps("deis-3")


def steps_of_lines(text: str) -> list[str]:
    return [line.split(" (")[0] for line in text.splitlines()]


def test_the_command_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text('#cloud-config\nhostname: "deis-1"\ncoreos:\n  unitz: []\n')
    result = run_applier("apply", "--plan", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"cidemo-lab-cloudinit: coreos.unitz: {lab.NOT_IMPLEMENTED}"
    ]
