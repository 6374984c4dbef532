"""Environments by name (pure): `pr-<n>-<app>`, `stage-<app>`, `<app>`, and their images.

The names are Deis v1's (`^[a-z0-9-]+$`, at most 64 characters), so one name serves as the Deis
app id, the Swarm service suffix, the router's host name and (with `-` -> `_`) the database.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

from cidemo_infra.errors import CidemoError, UsageError

ENV_NAME = re.compile(r"^[a-z0-9-]+$")
ENV_NAME_MAX = 64
# Docker's reference grammar for a tag; a commit id or branch-like ref fits in it.
REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
IMAGE = re.compile(r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$")
PLACEHOLDERS = ("app", "sha")

Kind = Literal["preview", "staging", "production"]
KINDS: tuple[Kind, ...] = ("preview", "staging", "production")


class CapacityError(CidemoError):
    """`env up` of a new preview while `environments.max_previews` exist (exit 1)."""


@dataclass(frozen=True)
class Environment:
    name: str
    kind: Kind
    pr: int | None = None

    @property
    def is_preview(self) -> bool:
        return self.kind == "preview"


def validate_name(name: str) -> str:
    if not ENV_NAME.match(name) or len(name) > ENV_NAME_MAX:
        raise UsageError(
            f"environment name '{name}' is invalid: use a-z, 0-9 and - "
            f"(at most {ENV_NAME_MAX} characters), e.g. pr-12-ghost"
        )
    return name


def preview(pr: int, app: str) -> Environment:
    if isinstance(pr, bool) or pr < 1:
        raise UsageError(f"--pr {pr}: a pull request number is an integer >= 1")
    return Environment(validate_name(f"pr-{pr}-{app}"), "preview", pr)


def staging(app: str) -> Environment:
    return Environment(validate_name(f"stage-{app}"), "staging")


def production(app: str) -> Environment:
    return Environment(validate_name(app), "production")


def parse(name: str, app: str) -> Environment:
    """The environment a name stands for, given the site's app; UsageError for another app's."""
    validate_name(name)
    if name == app:
        return production(app)
    if name == f"stage-{app}":
        return staging(app)
    match = re.fullmatch(rf"pr-([1-9][0-9]*)-{re.escape(app)}", name)
    if match:
        return preview(int(match.group(1)), app)
    raise UsageError(
        f"environment '{name}' is not one of app '{app}': valid are pr-<n>-{app}, "
        f"stage-{app} and {app}"
    )


def validate_ref(ref: str) -> str:
    if not REF.match(ref):
        raise UsageError(
            f"--ref '{ref[:80]}': a commit id or tag of letters, digits, '_', '.' and '-' "
            "(at most 128 characters)"
        )
    return ref


def image_for(template: str, app: str, sha: str) -> str:
    """`environments.image` with `{app}` and `{sha}` replaced; any other placeholder is an error."""
    validate_ref(sha)
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise UsageError(
            f"environments.image '{template}': unknown placeholder {{{unknown[0]}}}; "
            f"valid: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    return validate_image(template.format(app=app, sha=sha))


def validate_image(image: str) -> str:
    if not IMAGE.match(image) or len(image) > 255:
        raise UsageError(f"image '{image[:120]}' is not an image reference (e.g. ghost:1a2b3c)")
    return image


def check_capacity(previews: set[str], wanted: str, limit: int) -> None:
    """Refuse a new preview when `limit` previews exist; an existing one may always be updated."""
    if wanted in previews or len(previews) < limit:
        return
    raise CapacityError(
        f"environments.max_previews: {len(previews)} previews exist "
        f"({', '.join(sorted(previews))}) and the limit is {limit}; "
        f"remove one (cidemo env down --pr N) before {wanted}"
    )
