"""What `terraform validate` with the real provider does not say about a module, offline.

Validate (tests/integration/test_terraform_validate.py) checks every type, argument and block
against the provider itself. This keeps only: resource and data source types removed in 3.0, named
with their replacement (validate says only "not supported"), and the provider requirement, which
must admit the provider built here and neither 2.x nor 4.x. The schema file is the provider's
`terraform providers schema -json` with the removed types added (tests/data/PROVENANCE.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hcl2
from hcl2.utils import SerializationOptions

PROVIDER_SOURCE = "terraform-provider-openstack/openstack"
LAST_UNSUPPORTED_VERSION = "2.1.0"
FIRST_UNTESTED_VERSION = "4.0.0"  # a major release may remove types: no 4.x by surprise
KINDS = {"resource": "x_removed_resource_types", "data": "x_removed_data_source_types"}


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    where: str
    message: str


def load_hcl(path: Path) -> dict[str, Any]:
    """Parse one `.tf` file into plain Python: keys and string literals unquoted, `${...}` kept."""
    with path.open(encoding="utf-8") as handle:
        raw = hcl2.load(handle, serialization_options=SerializationOptions(with_comments=False))
    return normalise(raw)


def normalise(value: Any) -> Any:
    """Undo python-hcl2's quoting: `'"x"'` becomes `'x'`; expressions stay `'${...}'`."""
    if isinstance(value, dict):
        return {unquote(key): normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return unquote(value) if isinstance(value, str) else value


def unquote(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def labelled(entries: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """`resource "t" "n" {}` parses as [{t: {n: body}}]; yield ("t.n", body) pairs."""
    found = []
    for entry in entries:
        for first, inner in entry.items():
            if first.startswith("__"):
                continue
            if isinstance(inner, dict) and not inner.get("__is_block__"):
                found += [(f"{first}.{second}", body) for second, body in inner.items()]
            else:
                found.append((first, inner))
    return found


def check_module(module_dir: Path, schema: dict[str, Any]) -> list[Finding]:
    findings: list[Finding] = []
    documents = {path.name: load_hcl(path) for path in sorted(Path(module_dir).glob("*.tf"))}
    for filename, document in documents.items():
        for kind, removed_key in KINDS.items():
            for address, _ in labelled(document.get(kind, [])):
                findings += check_removed(
                    schema, removed_key, address, f"{filename}: {kind} {address}"
                )
    findings += check_required_providers(documents, schema)
    return findings


def check_removed(
    schema: dict[str, Any], removed_key: str, address: str, where: str
) -> list[Finding]:
    type_name = address.split(".")[0]
    removed = schema.get(removed_key, {}).get(type_name)
    if not removed:
        return []
    message = next((text for key, text in removed.items() if key.startswith("deprecation")), "")
    replacement = next(iter(re.findall(r"openstack_\w+", message)), None)
    advice = f"use {replacement} instead" if replacement else message
    removed_in = removed.get("removed_in", "an earlier release")
    return [Finding("error", where, f"{type_name} was removed in {removed_in}: {advice}")]


def check_required_providers(
    documents: dict[str, dict[str, Any]], schema: dict[str, Any]
) -> list[Finding]:
    declared = [
        (filename, requirement["openstack"])
        for filename, document in documents.items()
        for terraform in document.get("terraform", [])
        for requirement in terraform.get("required_providers", [])
        if "openstack" in requirement
    ]
    if not declared:
        return [Finding("error", "terraform", "required_providers does not declare openstack")]
    findings = []
    for filename, requirement in declared:
        where = f"{filename}: terraform required_providers openstack"
        source = requirement.get("source", "") if isinstance(requirement, dict) else ""
        if source.removeprefix("registry.terraform.io/") != PROVIDER_SOURCE:
            findings.append(Finding("error", where, f"source {source!r} is not {PROVIDER_SOURCE}"))
        constraint = requirement.get("version", "") if isinstance(requirement, dict) else ""
        newest = schema["provider_version"]
        if (
            not admits(constraint, newest)
            or admits(constraint, LAST_UNSUPPORTED_VERSION)
            or admits(constraint, FIRST_UNTESTED_VERSION)
        ):
            findings.append(
                Finding(
                    "error",
                    where,
                    f"version {constraint!r} must admit {newest} and exclude 2.x and 4.x",
                )
            )
    return findings


def admits(constraint: str, version: str) -> bool:
    """Whether a Terraform version constraint such as `>= 3.0, < 4.0` or `~> 3.4` admits version."""
    wanted = parse_version(version)
    for part in filter(None, (piece.strip() for piece in constraint.split(","))):
        match = re.fullmatch(r"(~>|>=|<=|!=|=|>|<)?\s*v?([0-9][0-9.]*)", part)
        if not match:
            return False
        operator, bound = match.group(1) or "=", parse_version(match.group(2))
        if operator == "~>":
            given = match.group(2).count(".") + 1
            upper = (*bound[: max(given - 2, 0)], bound[max(given - 2, 0)] + 1)
            ok = bound <= wanted and wanted[: len(upper)] < upper
        else:
            ok = {
                "=": wanted == bound,
                "!=": wanted != bound,
                ">": wanted > bound,
                ">=": wanted >= bound,
                "<": wanted < bound,
                "<=": wanted <= bound,
            }[operator]
        if not ok:
            return False
    return bool(constraint.strip())


def parse_version(text: str) -> tuple[int, ...]:
    parts = [int(piece) for piece in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
