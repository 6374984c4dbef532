"""Read a site file into a validated `Site`, or raise one `SiteError` listing every problem."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cidemo_infra.errors import SiteError
from cidemo_infra.site.model import Site, semantic_problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a site file with both is a mistake."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_site(path: str | Path) -> Site:
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SiteError(
            source, ["no such site file; the shipped ones are in infra/sites/"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(source, [f"cannot read: {exc}"]) from None
    site = parse_site(text, source)
    build = site.environments.build
    folder = build.source if build is not None else None
    dockerfile = build.dockerfile if build is not None else "Dockerfile"
    if folder and not (path.parent / folder / dockerfile).is_file():
        raise SiteError(
            source,
            [
                f"environments.build.source: {folder!r} has no {dockerfile} (the path is "
                f"relative to the site file: {(path.parent / folder).resolve()})"
            ],
        )
    script = site.environments.fork_script
    if script:
        found = (path.parent / script).absolute()
        if not found.is_file():
            raise SiteError(
                source,
                [
                    f"environments.fork_script: {script!r} is not a file (the path is relative "
                    f"to the site file: {found})"
                ],
            )
        envs = site.environments.model_copy(update={"fork_script": str(found)})
        site = site.model_copy(update={"environments": envs})
    return site


def parse_site(text: str, source: str = "<site>") -> Site:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise SiteError(source, [_yaml_problem(exc)]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SiteError(source, [f"(top level): expected a mapping of site keys, got {kind}"])
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        raise SiteError(source, [_pydantic_problem(err) for err in exc.errors()]) from None
    problems = semantic_problems(site)
    if problems:
        raise SiteError(source, problems)
    return site


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(YAML)"
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: malformed YAML: {problem}"


def key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problem(err: Any) -> str:
    loc = tuple(p for p in err["loc"] if p != "[key]")
    path = key_path(loc)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1])
        return f"{path}: unknown key; valid keys here: {', '.join(valid)}"
    value = err.get("input")
    shown = "" if isinstance(value, dict | list) else f" {value!r}:"
    message = err["msg"]
    if err["type"] == "string_pattern_mismatch":
        message = _pattern_hint(loc) or message
    return f"{path}:{shown} {message}"


def _pattern_hint(loc: tuple[int | str, ...]) -> str | None:
    leaf = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if leaf in ("name", "user") or (len(loc) >= 2 and loc[0] == "engines"):
        return (
            "not a valid hostname: lowercase letters, digits and '-', at most 63 characters, "
            "not starting or ending with '-'"
            + (" (site names: at most 30, starting with a letter)" if loc == ("name",) else "")
        )
    if leaf == "domain":
        return "not a valid DNS name (lowercase labels of letters, digits and '-', dot-separated)"
    if leaf == "prefix":
        return "an etcd prefix is '' or '/a/b' (no trailing '/')"
    return None


def _valid_keys(loc: tuple[int | str, ...]) -> list[str]:
    annotation: Any = Site
    for part in loc:
        model = _as_model(annotation)
        if isinstance(part, str) and model is not None and part in model.model_fields:
            annotation = model.model_fields[part].annotation
        else:  # a list index or a mapping key: step into the item type
            annotation = _item_type(annotation)
    model = _as_model(annotation)
    return sorted(model.model_fields) if model is not None else []


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(filter(None, map(_as_model, typing.get_args(annotation))), None)
    return None


def _item_type(annotation: Any) -> Any:
    """The item type of `list[X]` or the value type of `dict[K, X]`."""
    args = typing.get_args(annotation)
    return args[-1] if args else None
