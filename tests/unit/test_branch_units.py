"""Snapshots and branches without services: site keys, the init file, kinds, room on a node."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from cidemo_infra.databases import branches, snapshots
from cidemo_infra.databases.capacity import Room
from cidemo_infra.databases.database import DatabaseError
from cidemo_infra.envs import names
from cidemo_infra.errors import SiteError
from cidemo_infra.platforms.swarm import service_spec
from cidemo_infra.site import load_site, parse_site

SITE = "name: t1\nenvironments: {app: guestbook}\n"


def test_preview_limits_and_fork_policy_have_defaults() -> None:
    envs = parse_site(SITE).environments
    assert (envs.preview_limits.app.cpus, envs.preview_limits.app.memory_mb) == (1.0, 512)
    assert (envs.preview_limits.database.cpus, envs.preview_limits.database.memory_mb) == (0.5, 256)
    assert envs.fork_data == "schema" and envs.fork_script is None


@pytest.mark.parametrize(
    ("environments", "problem"),
    [
        ("{app: g, fork_data: seed}", "environments.fork_script: required when"),
        ("{app: g, fork_script: x.sql}", "environments.fork_script: only for fork_data"),
        ("{app: g, fork_data: everything}", "environments.fork_data"),
        ("{app: g, preview_limits: {app: {cpus: 0}}}", "environments.preview_limits.app.cpus"),
        ("{app: g, preview_limits: {database: {memory_mb: 16}}}", "memory_mb"),
    ],
)
def test_bad_branch_settings_name_the_key(environments: str, problem: str) -> None:
    with pytest.raises(SiteError) as err:
        parse_site(f"name: t1\nenvironments: {environments}\n")
    assert problem in str(err.value)


def test_fork_script_is_found_beside_the_site_file(tmp_path: Path) -> None:
    site = tmp_path / "s.yaml"
    site.write_text("name: t1\nenvironments: {app: g, fork_data: seed, fork_script: seed.sql}\n")
    with pytest.raises(SiteError, match="is not a file"):
        load_site(site)
    (tmp_path / "seed.sql").write_text("INSERT INTO t VALUES (1);\n")
    loaded = load_site(site)
    assert loaded.environments.fork_script == str(tmp_path / "seed.sql")
    assert "environments" in loaded.model_fields_set


def test_the_init_file_quotes_the_password_and_grants_one_database() -> None:
    sql = branches.init_sql("stage_guestbook", "pr_7", "a'b\\c")
    assert "IDENTIFIED BY 'a\\'b\\\\c'" in sql
    assert "GRANT ALL PRIVILEGES ON `stage\\_guestbook`.* TO 'pr_7'@'%'" in sql
    with pytest.raises(DatabaseError):
        branches.init_sql("stage_guestbook", "pr_7", "")
    with pytest.raises(DatabaseError):
        branches.init_sql("stage_guestbook", "root", "x")


def test_the_builders_client_file_quotes_the_password() -> None:
    cnf = snapshots.client_cnf("proxy", 4006, 'p"w\\d')
    assert 'password="p\\"w\\\\d"' in cnf and "host=proxy" in cnf and "port=4006" in cnf


def test_forks_branch_from_the_policys_kind() -> None:
    assert snapshots.kind_for(False, "schema") == "full"
    assert snapshots.kind_for(True, "schema") == "schema"
    assert snapshots.kind_for(True, "anonymised") == "anonymised"


def test_limits_become_host_config_without_swap() -> None:
    limits = branches.Limits(0.5, 256)
    assert limits.host_config() == {
        "nano_cpus": 500_000_000,
        "mem_limit": "256m",
        "memswap_limit": "256m",
        "pids_limit": branches.PIDS_LIMIT,
    }
    assert limits.buffer_pool_mb == 64


def test_room_keeps_the_members_reservation() -> None:
    room = Room(node_mb=8192, members=1, reserved_mb=1024, previews=8, preview_mb=768)
    assert room.free_mb == 8192 - 1024 - 8 * 768
    assert room.fits
    assert not Room(8192, 1, 1024, 9, 768).fits


def test_preview_apps_get_limits_and_other_services_keep_their_hash() -> None:
    site = parse_site(SITE)
    preview = service_spec(site, names.preview(3, "guestbook"), "img:1", {}, ())
    assert preview.limits == (1.0, 512)
    staging = service_spec(site, names.staging("guestbook"), "img:1", {}, ())
    assert staging.limits is None
    fields = asdict(staging)
    del fields["limits"]
    old_hash = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert staging.spec_hash == old_hash  # deployed before limits existed: no rolling update
