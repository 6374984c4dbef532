"""MaxScale's configuration rendered from etcd registrations (MaxScale itself cannot run here)."""

from __future__ import annotations

import configparser

import pytest

from cidemo_infra.checks.smoke import maxscale_backends
from cidemo_infra.errors import RenderError
from cidemo_infra.proxy.maxscale import render_maxscale
from cidemo_infra.registry.keys import Registration

pytestmark = pytest.mark.unit


def regs(*values: str) -> list[Registration]:
    return [Registration("database_port", f"h{i}:c{i}:3306", v, 10) for i, v in enumerate(values)]


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_one_server_per_registration_in_address_order_and_the_2015_listeners() -> None:
    text = render_maxscale(regs("10.0.0.12:3306", "10.0.0.9:3306", "10.0.0.11:3306"), "s3cret")
    cfg = parse(text)
    servers = [s for s in cfg.sections() if cfg[s].get("type") == "server"]
    assert servers == ["member-10-0-0-9-3306", "member-10-0-0-11-3306", "member-10-0-0-12-3306"]
    assert cfg["galera-monitor"]["module"] == "galeramon"
    assert cfg["galera-monitor"]["servers"] == ",".join(servers)
    assert cfg["read-write"]["router"] == "readwritesplit"
    assert cfg["read-only"]["router"] == "readconnroute"
    assert cfg["read-write-listener"]["port"] == "4006"
    assert cfg["read-only-listener"]["port"] == "4008"
    assert {cfg[s]["user"] for s in ("galera-monitor", "read-write", "read-only")} == {
        "cidemo_monitor"
    }
    assert maxscale_backends(text) == ["10.0.0.11:3306", "10.0.0.12:3306", "10.0.0.9:3306"]


def test_no_registration_gives_a_valid_config_with_no_server() -> None:
    cfg = parse(render_maxscale([], "pw"))
    assert cfg["galera-monitor"]["servers"] == ""


@pytest.mark.parametrize("value", ["not-an-address:3306", "10.0.0.1", "10.0.0.1:port"])
def test_a_malformed_registration_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(RenderError, match="h0:c0:3306"):
        render_maxscale(regs(value), "pw")


def test_a_password_cannot_break_the_file() -> None:
    with pytest.raises(RenderError, match="line break"):
        render_maxscale(regs("10.0.0.1:3306"), "pw\n[evil]")
