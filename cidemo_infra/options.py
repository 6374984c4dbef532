"""Options every `cidemo` command group shares, defined once."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from cidemo_infra.site import Site
    from cidemo_infra.state import StateDir

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SITE = "infra/sites/local.yaml"

site_option = click.option(
    "--site",
    "site_path",
    default=lambda: os.environ.get("CIDEMO_SITE", DEFAULT_SITE),
    show_default=DEFAULT_SITE,
    type=click.Path(dir_okay=False),
    help="site file (env CIDEMO_SITE)",
)
state_option = click.option(
    "--state-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="state directory (env CIDEMO_STATE_DIR; default .cidemo/<site>)",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
dry_run_option = click.option("--dry-run", is_flag=True, help="print the plan and change nothing")
yes_option = click.option("--yes", "-y", is_flag=True, help="do not ask (env CIDEMO_YES=1)")


def lock_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--lock-wait",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0, 3600),
        help=f"seconds to wait for another run on the same {what}",
    )


def is_yes(yes: bool) -> bool:
    """`--yes`, or CIDEMO_YES=1 for scripts and CI."""
    return yes or os.environ.get("CIDEMO_YES", "") in ("1", "true", "yes")


def load_site_and_state(site_path: str, state_dir: str | None) -> tuple[Site, StateDir]:
    """The site file `--site` names and its state directory (`--state-dir`, or the default),
    checked to be this site's; nothing is written."""
    from cidemo_infra.site import load_site
    from cidemo_infra.state import StateDir

    site = load_site(site_path)
    return site, StateDir.resolve(site.name, state_dir).check()
