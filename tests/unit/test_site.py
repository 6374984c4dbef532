"""The site model: shipped sites load, and every bad site in the corpus fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cidemo_infra.errors import SiteError
from cidemo_infra.site import load_site, parse_site
from cidemo_infra.site.schema import site_json_schema
from tests.conftest import REPO, SITES

pytestmark = pytest.mark.unit

BAD = sorted((REPO / "tests" / "data" / "sites" / "bad").glob("*.yaml"))


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' line"
    return first.removeprefix("# expect: ")


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_site_is_rejected_by_the_cli_and_nothing_is_written(
    path: Path, tmp_path: Path, cidemo
) -> None:
    state = tmp_path / "state"
    result = cidemo("render", "--site", str(path), "--state-dir", str(state))
    assert result.rc == 2, result.err
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {result.err}"
    assert expectation(path) in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in result.err
    assert not state.exists()


@pytest.mark.parametrize("name", ["local.yaml", "openstack.example.yaml"])
def test_shipped_sites_load(name: str) -> None:
    site = load_site(SITES / name)
    assert len(site.nodes_of("deis")) == 3
    assert len(site.nodes_of("standalone")) == 1


def test_every_problem_is_listed_not_only_the_first() -> None:
    with pytest.raises(SiteError) as err:
        parse_site("name: x\ncolour: 1\nnetwork: {cidrr: 2}\n", "s.yaml")
    assert len(err.value.problems) == 2
    assert "(+1 more)" in str(err.value)


def test_unknown_key_names_the_valid_choices() -> None:
    with pytest.raises(SiteError) as err:
        parse_site("name: x\nservices: {proxy: {knd: haproxy}}\n", "s.yaml")
    assert "services.proxy.knd: unknown key; valid keys here: image, kind, ro_port, rw_port" in str(
        err.value
    )


def test_literal_error_names_the_valid_choices() -> None:
    with pytest.raises(SiteError) as err:
        parse_site("name: x\nservices: {proxy: {kind: nginx}}\n", "s.yaml")
    assert "'haproxy' or 'maxscale'" in str(err.value)


def test_private_ips_skip_reserved_and_given_addresses() -> None:
    site = parse_site(
        "name: x\nnetwork: {cidr: 10.1.0.0/24}\nnodes:\n"
        "  - {name: deis-1, role: deis, private_ip: 10.1.0.11}\n"
        "  - {name: deis-2, role: deis}\n  - {name: deis-3, role: deis}\n"
        "  - {name: standalone-1, role: standalone}\n"
    )
    ips = {k: str(v) for k, v in site.private_ips().items()}
    assert ips == {
        "deis-1": "10.1.0.11",
        "deis-2": "10.1.0.10",
        "deis-3": "10.1.0.12",
        "standalone-1": "10.1.0.13",
    }


def test_json_schema_validates_the_shipped_sites_and_rejects_unknown_keys() -> None:
    schema = site_json_schema()
    for name in ("local.yaml", "openstack.example.yaml"):
        jsonschema.validate(yaml.safe_load((SITES / name).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "colour": "blue"}, schema)


def test_schema_command_prints_the_schema(cidemo) -> None:
    result = cidemo("schema")
    assert result.rc == 0
    assert json.loads(result.out)["title"] == "cidemo site file"


def test_missing_site_file_is_a_usage_error(cidemo, tmp_path: Path) -> None:
    result = cidemo("render", "--site", str(tmp_path / "nope.yaml"))
    assert result.rc == 2
    assert "nope.yaml: no such site file" in result.err
