"""openstacksdk for the OpenStack target: connect, preflight, waits and the leak sweep."""

from cidemo_infra.cloud.connect import connect
from cidemo_infra.cloud.preflight import (
    PreflightError,
    check,
    preflight,
    quota_needs,
    security_group_rule_count,
)
from cidemo_infra.cloud.sweep import Leak, SweepError, find, site_tag, sweep
from cidemo_infra.cloud.waits import wait_for_port, wait_for_servers

__all__ = [
    "Leak",
    "PreflightError",
    "SweepError",
    "check",
    "connect",
    "find",
    "preflight",
    "quota_needs",
    "security_group_rule_count",
    "site_tag",
    "sweep",
    "wait_for_port",
    "wait_for_servers",
]
