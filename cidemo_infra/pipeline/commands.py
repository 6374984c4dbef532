"""`cidemo env up|down|list|promote|gc|refresh-staging|snapshot|backups`: the site's environments.

Names: `pr-<n>-<app>` (previews), `stage-<app>`, `<app>` (production). Every command takes the
site (`--site`, env CIDEMO_SITE) and its state directory, runs under the environment's lock
(`--lock-wait` seconds to wait for another run), and prints one line per error (exit 1, or 2 for
bad usage). Commands that remove or overwrite ask first unless `--yes` (or CIDEMO_YES=1).
Usage and preconditions (an `environments` section, the image, the limit, the backup) are
checked before anything is written: a rejected command leaves everything as it was.
"""

from __future__ import annotations

import json
import os

import click

from cidemo_infra import app_image
from cidemo_infra.backups.store import check_name
from cidemo_infra.console import Reporter
from cidemo_infra.envs import names
from cidemo_infra.envs.names import Environment
from cidemo_infra.errors import UsageError
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
from cidemo_infra.pipeline import operations
from cidemo_infra.pipeline.github import REPO_ENV, PullRequests, valid_repo
from cidemo_infra.pipeline.operations import require_environments
from cidemo_infra.site import Site
from cidemo_infra.state import StateDir

lock_env = lock_option("environment")
pr_option = click.option("--pr", type=click.IntRange(min=1), help="pull request number: a preview")
staging_option = click.option("--staging", is_flag=True, help="the staging environment")
production_option = click.option("--production", is_flag=True, help="the production environment")


def _reporter() -> Reporter:
    root = click.get_current_context().find_root().obj
    reporter = getattr(root, "reporter", None)
    return reporter if isinstance(reporter, Reporter) else Reporter()


def _chosen(site: Site, pr: int | None, staging: bool, production: bool) -> Environment:
    if sum((pr is not None, staging, production)) != 1:
        raise UsageError("name exactly one environment: --pr N, --staging or --production")
    app = site.environments.app
    if pr is not None:
        return names.preview(pr, app)
    return names.staging(app) if staging else names.production(app)


@click.group()
def env() -> None:
    """Preview, staging and production environments: app plus database."""


@env.command()
@site_option
@state_option
@pr_option
@staging_option
@production_option
@click.option(
    "--ref",
    default=None,
    help="the commit the image was built from (default: the ref of environments.build's image)",
)
@click.option("--image", default=None, help="image to run (default: environments.image)")
@click.option("--fork", is_flag=True, help="a pull request from a fork: no app secrets")
@click.option(
    "--build",
    "build_it",
    is_flag=True,
    help="build --ref from source first (fetch, build, test, push to the site registry)",
)
@click.option(
    "--source",
    default=None,
    metavar="URL",
    help="with --build: the repository to fetch from (default: environments.build.repository_url"
    ", else GitHub's environments.repository); a local path or file:// too",
)
@dry_run_option
@lock_env
def up(
    site_path: str,
    state_dir: str | None,
    pr: int | None,
    staging: bool,
    production: bool,
    ref: str | None,
    image: str | None,
    fork: bool,
    build_it: bool,
    source: str | None,
    dry_run: bool,
    lock_wait: float,
) -> None:
    """Create or update an environment; prints its URL."""
    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    target = _chosen(site, pr, staging, production)
    if build_it:
        _up_built(site, state, target, ref, image, source, fork, dry_run, lock_wait)
        return
    if source is not None:
        raise UsageError("--source: only with --build")
    if ref is None:
        ref = app_image.built_ref(site, site_path)
    names.validate_ref(ref)
    chosen = names.validate_image(image) if image else None
    wanted = chosen or names.image_for(site.environments.image, site.environments.app, ref)
    with operations.open_envs(site, state, _reporter(), lock_wait) as ctx:
        if dry_run:
            for line in operations.plan_up(ctx, target, wanted).lines():
                ctx.reporter.line(line)
            return
        url = operations.up(ctx, target, ref, wanted, is_fork=fork)
    click.echo(url)


def _up_built(
    site: Site,
    state: StateDir,
    target: Environment,
    ref: str | None,
    image: str | None,
    source: str | None,
    fork: bool,
    dry_run: bool,
    lock_wait: float,
) -> None:
    from cidemo_infra.builds.build import BuildFailed, BuildSuperseded
    from cidemo_infra.builds.source import check_clone_url
    from cidemo_infra.pipeline import building

    building.require_builds(site)
    if ref is None:
        raise UsageError("--build: give the commit to build with --ref SHA")
    if image is not None:
        raise UsageError("--image and --build exclude each other: --build makes the image")
    names.validate_ref(ref)
    url = source or building.default_clone_url(site)
    if not url.startswith(("https://", "http://", "git://", "file://")):
        url = os.path.abspath(url)
    check_clone_url(url, from_event=False)
    with operations.open_envs(site, state, _reporter(), lock_wait) as ctx:
        if dry_run:
            ctx.reporter.line(f"{target.name}: would build {ref} from {url}")
            for line in operations.plan_up(ctx, target, building.built_image(ctx, ref)).lines():
                ctx.reporter.line(line)
            return
        building.note_request(state, target.name, ref)
        try:
            address = building.build_and_up(ctx, target, ref, url, is_fork=fork, from_event=False)
        except (BuildFailed, BuildSuperseded) as exc:
            raise BuildStopped(f"{target.name}: {exc}; it keeps what it ran") from None
    click.echo(address)


class BuildStopped(click.ClickException):
    """A build that failed or was superseded: exit 1, the environment unchanged."""

    exit_code = 1


@env.command()
@click.argument("name", required=False)
@site_option
@state_option
@pr_option
@staging_option
@production_option
def logs(
    name: str | None,
    site_path: str,
    state_dir: str | None,
    pr: int | None,
    staging: bool,
    production: bool,
) -> None:
    """The environment's last build log and its app's recent output (NAME, e.g. pr-3-app, or
    --pr N / --staging / --production)."""
    from cidemo_infra.pipeline import building

    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    if name is not None:
        if pr is not None or staging or production:
            raise UsageError("name the environment once: NAME or --pr/--staging/--production")
        target = names.parse(name, site.environments.app)
    else:
        target = _chosen(site, pr, staging, production)
    with operations.open_envs(site, state, _reporter()) as ctx:
        build_log, app_output = building.logs(ctx, target)
    click.echo(f"== last build of {target.name} ==")
    click.echo(build_log.rstrip("\n") if build_log is not None else "(no build of it here)")
    click.echo(f"== app output of {target.name} (last {building.APP_LOG_LINES} lines) ==")
    click.echo(app_output.rstrip("\n"))


@env.command()
@site_option
@state_option
@pr_option
@staging_option
@production_option
@dry_run_option
@yes_option
@lock_env
def down(
    site_path: str,
    state_dir: str | None,
    pr: int | None,
    staging: bool,
    production: bool,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
) -> None:
    """Remove an environment: its app, its database and the database's user."""
    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    target = _chosen(site, pr, staging, production)
    database = operations.database_of(target)
    what = f"{target.name} (app, database {database} and its user)"
    if target.is_preview:
        what = f"{target.name} (app, and its database container with everything written to it)"
    if dry_run:
        click.echo(f"would remove {what}")
        return
    if not is_yes(yes) and not click.confirm(f"Remove {what}?", default=False):
        raise click.exceptions.Abort
    with operations.open_envs(site, state, _reporter(), lock_wait) as ctx:
        removed = operations.down(ctx, target)
    click.echo(f"removed {what}" if removed else f"no changes: {target.name} does not exist")


@env.command("list")
@site_option
@state_option
@json_option
def list_(site_path: str, state_dir: str | None, as_json: bool) -> None:
    """List the environments: name, kind, image, URL, database, snapshot, last update."""
    site, state = load_site_and_state(site_path, state_dir)
    reporter = _reporter()
    with operations.open_envs(site, state, reporter) as ctx:
        rows = operations.list_envs(ctx)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    headers = ["name", "kind", "image", "url", "database", "snapshot", "updated"]
    reporter.table(headers, [[r.as_dict()[h] for h in headers] for r in rows])


@env.command()
@site_option
@state_option
@dry_run_option
@lock_env
def promote(site_path: str, state_dir: str | None, dry_run: bool, lock_wait: float) -> None:
    """Run in production exactly the image staging runs."""
    site, state = load_site_and_state(site_path, state_dir)
    with operations.open_envs(site, state, _reporter(), lock_wait) as ctx:
        if dry_run:
            stage = names.staging(ctx.app)
            image = ctx.platform.image_of(stage)
            if image is None:
                raise UsageError(f"staging ({stage.name}) runs nothing to promote")
            for line in operations.plan_up(ctx, names.production(ctx.app), image).lines():
                ctx.reporter.line(line)
            return
        image, url = operations.promote(ctx)
    click.echo(f"{url} runs {image}")


@env.command()
@site_option
@state_option
@click.option(
    "--repo",
    default=lambda: os.environ.get(REPO_ENV, ""),
    help=f"owner/name to ask GitHub about pull requests (env {REPO_ENV}; needs a token)",
)
@dry_run_option
@yes_option
@lock_env
def gc(
    site_path: str, state_dir: str | None, repo: str, dry_run: bool, yes: bool, lock_wait: float
) -> None:
    """Remove previews whose pull request is closed or that are idle past preview_ttl_hours."""
    site, state = load_site_and_state(site_path, state_dir)
    if repo and not valid_repo(repo):
        raise UsageError(f"--repo '{repo[:100]}': expected owner/name, e.g. octocat/hello-world")
    reporter = _reporter()
    with operations.open_envs(site, state, reporter, lock_wait) as ctx:
        github = PullRequests.from_env()
        doomed = operations.gc(ctx, dry_run=True, github=github, repo=repo)
        if not doomed:
            reporter.line("no changes: no preview to collect")
            return
        for item in doomed:
            reporter.line(f"{'would remove' if dry_run else 'remove'} {item.env}: {item.reason}")
        if dry_run:
            return
        if not is_yes(yes) and not click.confirm(
            f"Remove {len(doomed)} preview(s) with their databases?", default=False
        ):
            raise click.exceptions.Abort
        for item in doomed:
            operations.down(ctx, names.parse(item.env, ctx.app))
    reporter.line(f"removed {len(doomed)} preview(s)")


@env.command("refresh-staging")
@site_option
@state_option
@click.option(
    "--from",
    "from_backup",
    default=None,
    metavar="NAME",
    help="restore this backup of the store (see `env backups`) instead of backing up production",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="with --from: restore a format-1 backup, made before backups were authenticated "
    "(only from a store you trust)",
)
@dry_run_option
@yes_option
@lock_env
def refresh_staging(
    site_path: str,
    state_dir: str | None,
    from_backup: str | None,
    allow_unauthenticated: bool,
    dry_run: bool,
    yes: bool,
    lock_wait: float,
) -> None:
    """Back up production's database and restore it into staging's (replacing its data)."""
    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    app = site.environments.app
    source = operations.database_of(names.production(app))
    target = operations.database_of(names.staging(app))
    if from_backup is not None:
        check_name(from_backup)
    elif allow_unauthenticated:
        raise UsageError(
            "--allow-unauthenticated: only with --from NAME (a new backup is authenticated)"
        )
    where = _store_description(site, state)
    what = f"backup {from_backup}" if from_backup else f"a new backup of {source}"
    with operations.open_envs(site, state, _reporter(), lock_wait) as ctx:
        store = operations.backup_store(site, state)
        operations.check_refresh(ctx, store, from_backup)
        if dry_run:
            click.echo(f"would restore {what} (kept in {where}) into {target}")
            return
        if not is_yes(yes) and not click.confirm(
            f"Replace the data of {target} with {what}?", default=False
        ):
            raise click.exceptions.Abort
        done = operations.refresh_staging(
            ctx, from_backup, store, allow_unauthenticated=allow_unauthenticated
        )
    click.echo(f"{target} now holds {done.name} ({done.tables} tables, {done.rows} rows)")
    click.echo(f"backup: {done.where}")
    if done.pruned:
        click.echo(f"removed older backups: {', '.join(done.pruned)}")


@env.command()
@site_option
@state_option
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["full", "schema", "seed", "anonymised"]),
    help="the kind(s) to take (default: full, and the kind environments.fork_data names)",
)
@dry_run_option
def snapshot(site_path: str, state_dir: str | None, kinds: tuple[str, ...], dry_run: bool) -> None:
    """Take new snapshots of staging's database for previews to branch from (previews being
    created meanwhile branch from the previous ones)."""
    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    envs = site.environments
    for kind in kinds:
        if kind in ("seed", "anonymised") and not envs.fork_script:
            raise UsageError(
                f"--kind {kind}: needs environments.fork_script (an SQL file); the site has none"
            )
    with operations.open_envs(site, state, _reporter()) as ctx:
        chosen = list(kinds) or operations.snapshot_kinds(ctx)
        if dry_run:
            for kind in chosen:
                ctx.reporter.line(
                    f"would take a {kind} snapshot of {operations.staging_database(ctx.app)}"
                )
            return
        taken = operations.take_snapshots(ctx, chosen)
    for snap in taken:
        click.echo(snap.ref)


@env.command("backups")
@site_option
@state_option
@json_option
def backups(site_path: str, state_dir: str | None, as_json: bool) -> None:
    """List the complete backups in the site's store (directory or container), newest first."""
    site, state = load_site_and_state(site_path, state_dir)
    require_environments(site)
    found = operations.backup_store(site, state).backups()
    if as_json:
        click.echo(json.dumps([{"name": b.name, "where": b.where} for b in found], indent=2))
        return
    if not found:
        click.echo(f"no backups in {_store_description(site, state)}")
        return
    reporter = _reporter()
    reporter.table(["backup", "where"], [[b.name, b.where] for b in found])


def _store_description(site: Site, state: StateDir) -> str:
    container = site.environments.backup_container
    if container:
        return f"container {container} on cloud {site.cloud}"
    return str(operations.backup_dir(site, state))
