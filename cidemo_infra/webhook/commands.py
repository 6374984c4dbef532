"""`cidemo webhook serve`: the GitHub webhook endpoint of one site, in the foreground.

The secret comes from `CIDEMO_WEBHOOK_SECRET` or the state directory (`secrets/webhook_secret`),
never from a flag. Commit statuses are posted, and write access is asked of GitHub, when
`CIDEMO_GITHUB_TOKEN` is set (`CIDEMO_GITHUB_API` for GitHub Enterprise). TLS is terminated in
front of this server. The site must name its repository (`environments.repository`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import signal
import sys
import threading
from typing import Any

import click

from cidemo_infra.options import load_site_and_state, site_option, state_option
from cidemo_infra.pipeline.github import ApiUrlError, Collaborators
from cidemo_infra.state import StateDir
from cidemo_infra.webhook.events import DeliverySettings
from cidemo_infra.webhook.executor import make_executor
from cidemo_infra.webhook.server import WebhookServer
from cidemo_infra.webhook.status import TOKEN_ENV, CommitStatusClient, StatusError

SECRET_ENV = "CIDEMO_WEBHOOK_SECRET"
SECRET_NAME = "webhook_secret"
DEFAULT_LISTEN = "127.0.0.1:8088"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$")

log = logging.getLogger("cidemo.webhook")


class BadUsage(click.ClickException):
    """One line, exit 2: what is wrong and what would be valid."""

    exit_code = 2


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` into (host, port); BadUsage names what is wrong."""
    hint = "expected HOST:PORT, e.g. 127.0.0.1:8088 or [::1]:8088"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", text.strip())
    if not match:
        raise BadUsage(f"--listen '{text}': {hint}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise BadUsage(f"--listen '{text}': port {port} is outside 1-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise BadUsage(f"--listen '{text}': '{host}' is not an address or host name") from None
    return host, port


def webhook_secret(state: StateDir) -> str:
    """The shared secret GitHub signs with; BadUsage when there is none (it is never generated
    here: GitHub must have been given the same value, and this command never prints it)."""
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    path = state.secrets_dir / SECRET_NAME
    if not path.is_file() or not path.read_text().strip():
        raise BadUsage(
            f"no webhook secret: set {SECRET_ENV} or write the secret given to GitHub "
            f"into {path} (mode 0600)"
        )
    return state.secret(SECRET_NAME, SECRET_ENV)


def delivery_settings(site: Any) -> DeliverySettings:
    """The delivery settings of the site's `environments` section."""
    configured = getattr(site, "environments", None)
    if configured is None:
        return DeliverySettings()
    values = {
        f.name: getattr(configured, f.name)
        for f in dataclasses.fields(DeliverySettings)
        if getattr(configured, f.name, None) is not None
    }
    if "authorized_logins" in values:
        values["authorized_logins"] = tuple(values["authorized_logins"])
    return DeliverySettings(**values)


def log_to_stderr() -> None:
    """The server's log lines (`cidemo.*`, INFO) on stderr, whatever `cidemo` set up before:
    without -v it gives the root logger only a NullHandler, which a basicConfig would keep."""
    root = logging.getLogger()
    if any(not isinstance(h, logging.NullHandler) for h in root.handlers):
        return  # -v: the root logger prints everything already
    logger = logging.getLogger("cidemo")
    if any(getattr(h, "_cidemo_webhook", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    handler._cidemo_webhook = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@click.group()
def webhook() -> None:
    """Receive GitHub webhooks and turn them into environment changes."""


@webhook.command()
@site_option
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="address and port to listen on (HOST:PORT)",
)
@state_option
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600),
    help="seconds to finish queued intents on SIGTERM/SIGINT",
)
def serve(
    site_path: str, listen: str, state_dir: str | None, workers: int, drain_timeout: float
) -> None:
    """Serve POST /github until SIGTERM or SIGINT, then drain the queue."""
    host, port = parse_listen(listen)
    site, state = load_site_and_state(site_path, state_dir)
    if "environments" not in site.model_fields_set:
        raise BadUsage(
            f"site '{site.name}' has no environments section: there is nothing for webhooks "
            "to deploy; add one and run cidemo provision"
        )
    settings = delivery_settings(site)
    if not settings.repository:
        raise BadUsage(
            f"{site_path}: environments.repository: required by `webhook serve`: the "
            "owner/name of the GitHub repository whose events deploy (e.g. paulczar/ci-demo)"
        )
    secret = webhook_secret(state)
    try:
        statuses = CommitStatusClient.from_env()
        access = Collaborators.from_env()
    except (StatusError, ApiUrlError) as exc:
        raise BadUsage(str(exc)) from None
    state.ensure()
    log_to_stderr()
    if statuses is None:
        log.warning(
            "%s is not set: commit statuses will not be posted, and only "
            "environments.authorized_logins count as having write access",
            TOKEN_ENV,
        )
    try:
        server = WebhookServer(
            secret,
            make_executor(site, state),
            state.path / "webhook" / "deliveries.sqlite3",
            host=host,
            port=port,
            settings=settings,
            statuses=statuses,
            workers=workers,
            access=access,
        )
    except OSError as exc:
        raise BadUsage(f"--listen {listen}: {exc.strerror or exc}") from None

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    click.echo(f"cidemo: webhook for site '{site.name}' on {server.url}", err=True)
    while not stop.wait(1.0):
        pass
    left = server.stop(drain_timeout)
    click.echo(f"cidemo: webhook stopped; {left} queued intent(s) not run", err=True)
