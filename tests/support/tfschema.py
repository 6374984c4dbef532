"""Check a Terraform module against an offline provider schema (`terraform providers schema -json`).

Used where `terraform validate` cannot run because the provider cannot be downloaded.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hcl2
from hcl2.utils import SerializationOptions

PROVIDER_SOURCE = "terraform-provider-openstack/openstack"
LAST_UNSUPPORTED_VERSION = "2.1.0"
META_ARGUMENTS = frozenset({"count", "for_each", "depends_on", "provider", "lifecycle"})
RESOURCE_META_ARGUMENTS = META_ARGUMENTS | frozenset({"provisioner", "connection"})
KINDS = {
    "resource": ("resource_schemas", "x_removed_resource_types", RESOURCE_META_ARGUMENTS),
    "data": ("data_source_schemas", "x_removed_data_source_types", META_ARGUMENTS),
}


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


def is_literal(value: Any) -> bool:
    return not (isinstance(value, str) and "${" in value)


def blocks(value: Any) -> list[dict[str, Any]] | None:
    """The bodies of a block written `key { ... }`, or None when `key = ...` is an attribute."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, dict) and item.get("__is_block__") for item in value)
    ):
        return value
    return None


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
        for kind in KINDS:
            for address, body in labelled(document.get(kind, [])):
                findings += check_typed(
                    schema, kind, address, body, f"{filename}: {kind} {address}"
                )
        for name, body in labelled(document.get("provider", [])):
            where = f"{filename}: provider {name}"
            if name == "openstack":
                findings += check_body(
                    body, schema["provider"]["block"], where, "", frozenset({"alias"})
                )
            else:
                findings.append(
                    Finding("warning", where, "not in the OpenStack schema; not checked")
                )
    findings += check_required_providers(documents, schema)
    return findings


def check_typed(
    schema: dict[str, Any], kind: str, address: str, body: dict[str, Any], where: str
) -> list[Finding]:
    schemas_key, removed_key, meta = KINDS[kind]
    type_name = address.split(".")[0]
    removed = schema.get(removed_key, {}).get(type_name)
    if removed:
        message = next((text for key, text in removed.items() if key.startswith("deprecation")), "")
        replacement = next(iter(re.findall(r"openstack_\w+", message)), None)
        advice = f"use {replacement} instead" if replacement else message
        removed_in = removed.get("removed_in", "an earlier release")
        return [Finding("error", where, f"{type_name} was removed in {removed_in}: {advice}")]
    if type_name not in schema[schemas_key]:
        if not type_name.startswith("openstack_"):
            return [Finding("warning", where, "not an OpenStack type; not checked")]
        return [Finding("error", where, f"unknown {kind} type {type_name}")]
    block = schema[schemas_key][type_name]["block"]
    findings = []
    if block.get("deprecated"):
        findings.append(Finding("warning", where, block.get("deprecation_message", "deprecated")))
    return findings + check_body(body, block, where, "", meta)


def check_body(
    body: dict[str, Any], block: dict[str, Any], where: str, path: str, meta: frozenset[str]
) -> list[Finding]:
    attributes, block_types = block.get("attributes", {}), block.get("block_types", {})
    findings: list[Finding] = []
    occurrences: Counter[str] = Counter()
    for key, value in body.items():
        here = f"{where}: {path}{key}"
        if key.startswith("__") or key in meta:
            continue
        if key == "dynamic" and isinstance(value, list):
            for name, dynamic in labelled(value):
                occurrences[name] += 1
                findings += check_nested(
                    name, dynamic.get("content", [{}]), block_types, where, path
                )
        elif key in attributes and blocks(value) is None:
            findings += check_attribute(key, value, attributes[key], here)
        elif key in block_types and blocks(value):
            occurrences[key] += len(value)
            findings += check_nested(key, value, block_types, where, path)
        elif key in attributes or key in block_types:
            shape = "an argument (key = value)" if key in attributes else "a block (key { ... })"
            findings.append(Finding("error", here, f"{key} must be written as {shape}"))
        else:
            choices = ", ".join(sorted(set(attributes) | set(block_types)))
            findings.append(
                Finding("error", here, f"unknown argument or block {key}; valid: {choices}")
            )
    for name, attribute in attributes.items():
        if attribute.get("required") and name not in body:
            findings.append(Finding("error", f"{where}: {path}{name}", "missing required argument"))
    return findings + check_counts(block_types, occurrences, where, path)


def check_nested(
    name: str, bodies: list[dict[str, Any]], block_types: dict[str, Any], where: str, path: str
) -> list[Finding]:
    if name not in block_types:
        return [Finding("error", f"{where}: {path}{name}", f"unknown block type {name}")]
    findings = []
    block_type = block_types[name]
    if block_type.get("block", {}).get("deprecated") or block_type.get("deprecated"):
        findings.append(Finding("warning", f"{where}: {path}{name}", f"block {name} is deprecated"))
    for body in bodies:
        findings += check_body(body, block_type["block"], where, f"{path}{name}.", frozenset())
    return findings


def check_attribute(name: str, value: Any, attribute: dict[str, Any], where: str) -> list[Finding]:
    if attribute.get("computed") and not (attribute.get("optional") or attribute.get("required")):
        return [Finding("error", where, f"{name} is computed by the provider and cannot be set")]
    findings = []
    allowed = attribute.get("allowed_values")
    if allowed and is_literal(value) and value not in allowed:
        choices = ", ".join(map(str, allowed))
        findings.append(Finding("error", where, f"{value!r} is not allowed; valid: {choices}"))
    if attribute.get("deprecated"):
        findings.append(Finding("warning", where, f"{name} is deprecated"))
    return findings


def check_counts(
    block_types: dict[str, Any], occurrences: Counter[str], where: str, path: str
) -> list[Finding]:
    findings = []
    for name, block_type in block_types.items():
        count, here = occurrences[name], f"{where}: {path}{name}"
        low = block_type.get("min_items", 0)
        high = 1 if block_type["nesting_mode"] == "single" else block_type.get("max_items")
        if count < low:
            findings.append(
                Finding("error", here, f"needs at least {low} {name} block(s), has {count}")
            )
        if high is not None and count > high:
            findings.append(
                Finding("error", here, f"allows at most {high} {name} block(s), has {count}")
            )
    return findings


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
        if not admits(constraint, newest) or admits(constraint, LAST_UNSUPPORTED_VERSION):
            findings.append(
                Finding(
                    "error", where, f"version {constraint!r} must admit {newest} and exclude 2.x"
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
