"""An offline checker of CoreOS `#cloud-config` documents against the coreos-cloudinit key list.

The key list is `tests/data/coreos-cloud-config.json` (derived from coreos-cloudinit v1.14.0).
The checker is stricter than coreos-cloudinit on purpose: an unknown key, a wrong type or a YAML
boolean where a string belongs is an error here, because the project's files must have none.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

PROFILES = ("flatcar", "coreos-legacy")
# Sections whose daemons Flatcar does not ship: configuring them there silently does nothing.
NOT_ON_FLATCAR = {
    "etcd": "configure etcd-member.service with a drop-in instead",
    "etcd2": "configure etcd-member.service with a drop-in instead",
    "fleet": "fleet left Container Linux in 2017; nothing schedules fleet units there",
}
_ENCODINGS = {
    "b64": ("base64",),
    "base64": ("base64",),
    "gz": ("gzip",),
    "gzip": ("gzip",),
    "gz+base64": ("base64", "gzip"),
    "gzip+base64": ("base64", "gzip"),
    "gz+b64": ("base64", "gzip"),
    "gzip+b64": ("base64", "gzip"),
}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    path: str
    message: str


def check_cloud_config(text: str, schema: Mapping[str, Any], profile: str) -> list[Finding]:
    """Every problem of `text` as a cloud-config for `profile` ("flatcar" or "coreos-legacy")."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
    findings: list[Finding] = []
    first_line = text.split("\n", 1)[0].rstrip()
    if first_line != "#cloud-config":
        findings.append(
            Finding("error", "<header>", f"first line is {first_line[:40]!r}, not '#cloud-config'")
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<document>"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        findings.append(Finding("error", where, f"YAML does not parse: {problem}"))
        return findings
    if document is None:
        findings.append(Finding("error", "<document>", "the document is empty"))
        return findings
    walker = _Walker(profile, findings)
    normalised = walker.normalise(document, "")
    walker.check(normalised, schema["schema"], "")
    return findings


class _Walker:
    def __init__(self, profile: str, findings: list[Finding]) -> None:
        self.profile = profile
        self.findings = findings

    def error(self, path: str, message: str) -> None:
        self.findings.append(Finding("error", path or "<document>", message))

    def warning(self, path: str, message: str) -> None:
        self.findings.append(Finding("warning", path or "<document>", message))

    def normalise(self, value: Any, path: str) -> Any:
        """The value with '-' replaced by '_' in every mapping key, as coreos-cloudinit reads it."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    self.error(_join(path, str(key)), f"key {key!r} is not a string")
                    continue
                name = key.replace("-", "_")
                child = _join(path, name)
                if name in out:
                    self.error(child, f"key {key!r} repeats a key that differs only by '-'/'_'")
                out[name] = self.normalise(item, child)
            return out
        if isinstance(value, list):
            return [self.normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return value

    def check(self, value: Any, node: Mapping[str, Any], path: str) -> None:
        kind = node["type"]
        if kind == "object":
            self.check_object(value, node, path)
        elif kind == "list":
            if not isinstance(value, list):
                self.error(path, f"expected a list, found {_type_name(value)}")
                return
            for i, item in enumerate(value):
                self.check(item, node["items"], f"{path}[{i}]")
                if path == "write_files" and isinstance(item, dict):
                    self.check_write_file(item, f"{path}[{i}]")
        else:
            self.check_scalar(value, node, path)

    def check_object(self, value: Any, node: Mapping[str, Any], path: str) -> None:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, found {_type_name(value)}")
            return
        keys: Mapping[str, Any] = node["keys"]
        for name, item in value.items():
            child = _join(path, name)
            if name not in keys:
                valid = ", ".join(sorted(keys))
                self.error(child, f"unknown key {name!r} (valid here: {valid})")
                continue
            spec = keys[name]
            if path == "coreos" and name in NOT_ON_FLATCAR and self.profile == "flatcar":
                self.error(
                    child,
                    f"coreos.{name} configures a daemon Flatcar does not ship: "
                    f"{NOT_ON_FLATCAR[name]}",
                )
            elif "deprecated" in spec:
                self.warning(child, f"deprecated: {spec['deprecated']}")
            self.check(item, spec, child)

    def check_scalar(self, value: Any, spec: Mapping[str, Any], path: str) -> None:
        kind = spec["type"]
        if value is None:
            self.error(path, "has no value (null)")
            return
        if kind == ["list", "string"]:
            if not isinstance(value, list):
                self.error(path, f"expected a list of strings, found {_type_name(value)}")
                return
            for i, item in enumerate(value):
                self.check_scalar(item, {"type": "string"}, f"{path}[{i}]")
            return
        if kind == "string":
            if isinstance(value, bool):
                self.error(
                    path,
                    f"is the YAML boolean {str(value).lower()}, not a string: quote it "
                    "(YAML 1.1 reads on/off/yes/no as booleans)",
                )
                return
            if not isinstance(value, str | int | float):
                self.error(path, f"expected a string, found {_type_name(value)}")
                return
        elif kind == "bool":
            if not isinstance(value, bool):
                self.error(path, f"expected true or false, found {value!r}")
                return
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(path, f"expected an integer, found {value!r}")
                return
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.error(path, f"expected a number, found {value!r}")
                return
        else:
            raise ValueError(f"schema type {kind!r} at {path} is not understood")
        self.check_value(value, spec, path)

    def check_value(self, value: Any, spec: Mapping[str, Any], path: str) -> None:
        # coreos-cloudinit leaves zero values unchecked.
        if value == "" or value is False or (not isinstance(value, str) and value == 0):
            return
        shown = _go_format(value)
        pattern = spec.get("valid_regex")
        allowed = spec.get("allowed_values")
        if pattern is not None and not re.fullmatch(pattern, shown):
            choices = f" (valid: {', '.join(allowed)})" if allowed else f" (must match {pattern})"
            self.error(path, f"invalid value {shown!r}{choices}")
        elif pattern is None and allowed is not None and shown not in allowed:
            self.error(path, f"invalid value {shown!r} (valid: {', '.join(allowed)})")

    def check_write_file(self, entry: Mapping[str, Any], path: str) -> None:
        file_path = entry.get("path")
        if not isinstance(file_path, str) or not file_path:
            self.error(f"{path}.path", "every write_files entry needs a path")
            return
        if not file_path.startswith("/"):
            self.error(f"{path}.path", f"{file_path!r} is not an absolute path")
        directory = posixpath.dirname(posixpath.normpath(file_path))
        if directory == "/usr" or directory.startswith("/usr/"):
            self.error(f"{path}.path", f"{file_path!r} is under /usr, which is read-only")
        encoding = entry.get("encoding")
        content = entry.get("content")
        if isinstance(encoding, str) and encoding in _ENCODINGS and isinstance(content, str):
            try:
                _decode(content, _ENCODINGS[encoding])
            except (binascii.Error, ValueError, OSError, EOFError) as exc:
                self.error(f"{path}.content", f"cannot be decoded as {encoding}: {exc}")


def _decode(content: str, steps: tuple[str, ...]) -> bytes:
    data = content.encode()
    for step in steps:
        data = base64.b64decode(data, validate=True) if step == "base64" else gzip.decompress(data)
    return data


def _go_format(value: Any) -> str:
    """The text Go's fmt.Sprintf("%v") gives for the decoded value, which the regex sees."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
