"""The `cidemo` command: parse, call, print, map errors to exit codes (DESIGN.md: 0, 1, 2, 3)."""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

import click

from cidemo_infra import lifecycle
from cidemo_infra.console import Reporter
from cidemo_infra.errors import EXIT_FAILED, EXIT_PLAN_CHANGES, EXIT_USAGE, CidemoError
from cidemo_infra.options import (
    dry_run_option,
    is_yes,
    json_option,
    load_site_and_state,
    lock_option,
    site_option,
    state_option,
    yes_option,
)
from cidemo_infra.site import load_site


@dataclass
class Context:
    verbose: bool
    reporter: Reporter


lock_site = lock_option("site")
infrastructure_only_option = click.option(
    "--infrastructure-only",
    is_flag=True,
    help="openstack: create or converge the cloud resources and write the inventory; place nothing",
)


class LazyGroup(click.Group):
    """Command groups of the delivery layer, imported when named: `provision` or `smoke` on a
    local site loads nothing of the pipeline, the webhook, backups or the cloud."""

    LAZY = {
        "env": "cidemo_infra.pipeline.commands:env",
        "webhook": "cidemo_infra.webhook.commands:webhook",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, _, attr = self.LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="tracebacks and debug logs")
@click.option("-q", "--quiet", is_flag=True, help="no progress lines")
@click.version_option(package_name="cidemo-infra")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Stand up, check and tear down the cidemo platform (local Docker or OpenStack)."""
    ctx.obj = Context(verbose=verbose, reporter=Reporter(quiet=quiet))
    import logging

    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:
        # libraries' own warnings (keystoneauth's version discovery, ...) would come before the
        # one line that says what failed; -v shows them
        logging.getLogger().addHandler(logging.NullHandler())


@cli.command()
def schema() -> None:
    """Print the JSON Schema of site files (for editors)."""
    from cidemo_infra.site.schema import site_json_schema

    click.echo(json.dumps(site_json_schema(), indent=2, sort_keys=True))


@cli.command()
@site_option
@state_option
@click.pass_obj
def render(obj: Context, site_path: str, state_dir: str | None) -> None:
    """Render Terraform inputs and each node's cloud-config into the state directory."""
    site, state = load_site_and_state(site_path, state_dir)
    for path in lifecycle.render(site, state, site_path):
        obj.reporter.line(str(path))


@cli.command()
@site_option
@state_option
@json_option
@click.option(
    "--services-only", is_flag=True, help="openstack: plan the containers only, not Terraform"
)
@infrastructure_only_option
@click.pass_obj
def plan(
    obj: Context,
    site_path: str,
    state_dir: str | None,
    as_json: bool,
    services_only: bool,
    infrastructure_only: bool,
) -> None:
    """Show what provision would change; exit 3 when there are changes, 0 when none."""
    site, state = load_site_and_state(site_path, state_dir)
    result = lifecycle.plan(
        site,
        state,
        site_path,
        obj.reporter,
        services_only=services_only,
        infrastructure_only=infrastructure_only,
    )
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        result.print(obj.reporter)
    if result.has_changes:
        sys.exit(EXIT_PLAN_CHANGES)


@cli.command()
@site_option
@state_option
@dry_run_option
@yes_option
@lock_site
@infrastructure_only_option
@click.pass_obj
def provision(
    obj: Context,
    site_path: str,
    state_dir: str | None,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
    infrastructure_only: bool,
) -> None:
    """Create or converge the site: infrastructure, services, then the smoke checks."""
    site, state = load_site_and_state(site_path, state_dir)
    lifecycle.provision(
        site,
        state,
        site_path,
        obj.reporter,
        dry_run=dry_run,
        yes=is_yes(yes),
        lock_wait=lock_wait,
        infrastructure_only=infrastructure_only,
    )


@cli.command()
@site_option
@state_option
@dry_run_option
@yes_option
@lock_site
@click.option("--purge", is_flag=True, help="also remove the site's volumes (database data)")
@click.option("--sweep", is_flag=True, help="openstack: delete resources Terraform left behind")
@click.pass_obj
def destroy(
    obj: Context,
    site_path: str,
    state_dir: str | None,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
    purge: bool,
    sweep: bool,
) -> None:
    """Remove exactly what carries the site's label (volumes only with --purge)."""
    site, state = load_site_and_state(site_path, state_dir)
    lifecycle.destroy(
        site,
        state,
        site_path,
        obj.reporter,
        dry_run=dry_run,
        yes=is_yes(yes),
        lock_wait=lock_wait,
        purge=purge,
        sweep=sweep,
    )


@cli.command()
@site_option
@state_option
@json_option
@click.pass_obj
def status(obj: Context, site_path: str, state_dir: str | None, as_json: bool) -> None:
    """List the site's containers and, with an environments section, its environments."""
    site, state = load_site_and_state(site_path, state_dir)
    rows = lifecycle.status(site, state)
    envs: list[dict[str, str]] | None = None
    unlisted = ""  # why the environments could not be listed; the containers still are
    if "environments" in site.model_fields_set:
        from cidemo_infra.pipeline import operations

        try:
            with operations.open_envs(site, state, obj.reporter) as ctx:
                envs = [r.as_dict() for r in operations.list_envs(ctx)]
        except CidemoError as exc:
            unlisted = str(exc)
    if as_json:
        out: dict[str, object] = {"containers": rows, "environments": envs}
        if unlisted:
            out["environments_error"] = unlisted
        click.echo(json.dumps(out, indent=2))
        return
    headers = ["node", "role", "container", "state", "image"]
    obj.reporter.table(headers, [[r[h] for h in headers] for r in rows])
    if unlisted:
        obj.reporter.line(f"environments: not listed: {unlisted}")
    if envs is None:
        return
    if not envs:
        obj.reporter.line("environments: none yet (cidemo env up, or make demo)")
        return
    headers = ["environment", "kind", "image", "url", "database", "updated"]
    keys = ["name", "kind", "image", "url", "database", "updated"]
    obj.reporter.table(headers, [[e[k] for k in keys] for e in envs])


@cli.command()
@site_option
@state_option
@json_option
@click.pass_obj
def smoke(obj: Context, site_path: str, state_dir: str | None, as_json: bool) -> None:
    """Check that every service registered and is healthy; exit 1 on any failure."""
    site, state = load_site_and_state(site_path, state_dir)
    report = lifecycle.smoke(site, state, obj.reporter)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        report.print(obj.reporter)
    if not report.passed:
        sys.exit(EXIT_FAILED)


@cli.command()
@site_option
@state_option
@yes_option
@lock_site
@click.pass_obj
def recover(
    obj: Context, site_path: str, state_dir: str | None, yes: bool, lock_wait: float
) -> None:
    """After a crash of every member: bootstrap from the most advanced one, rejoin the others."""
    site, state = load_site_and_state(site_path, state_dir)
    lifecycle.recover(site, state, obj.reporter, yes=is_yes(yes), lock_wait=lock_wait)


@cli.command()
@site_option
@click.option("--base-only", is_flag=True, help="only the debootstrap base image")
@click.pass_obj
def images(obj: Context, site_path: str, base_only: bool) -> None:
    """Build the project's images that are missing (the base image with debootstrap if needed)."""
    site = load_site(site_path)
    for ref in lifecycle.build_images(site, obj.reporter, base_only=base_only):
        obj.reporter.line(ref)


def main(argv: list[str] | None = None) -> NoReturn:
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="cidemo", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cidemo: aborted; nothing was changed after the question", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        click.echo(f"cidemo: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except CidemoError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"cidemo: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("cidemo: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        click.echo(
            f"cidemo: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    sys.exit(0)


if __name__ == "__main__":
    main()
