"""The project's images, built from data/images/<name>/ and tagged by a hash of their sources.

Where no registry answers, the base image is made with debootstrap (data/images/base/mkbase.sh).
An image present on one engine is copied to the others (save/load) rather than rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import docker
import docker.errors

from cidemo_infra.console import Reporter
from cidemo_infra.data import IMAGES as IMAGES_DIR
from cidemo_infra.engines import client_for
from cidemo_infra.errors import EngineError, UsageError

PROJECT_PREFIX = "project:"
LOCAL_ENGINE = "unix:///var/run/docker.sock"
UPSTREAM_BASE = "debian:bookworm-slim"
LOCAL_BASE = "cidemo/debian:bookworm-slim"
# Certificate authorities this machine trusts besides Debian's (update-ca-certificates' place)
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
# Images whose Dockerfile starts from something other than the Debian base (not buildable here).
_OWN_BASE = {"jenkins": "jenkins/jenkins:lts-jdk17"}


def is_project_image(ref: str) -> bool:
    return ref.startswith(PROJECT_PREFIX)


def image_tag(name: str, base: str) -> str:
    if not (IMAGES_DIR / name).is_dir():
        # a tag of the base alone would plan every container of that image as changed
        raise UsageError(f"project image {name!r}: no folder {IMAGES_DIR / name}")
    digest = hashlib.sha256(base.encode())
    for folder in (IMAGES_DIR / name, IMAGES_DIR / "common"):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _is_bytecode(p)):
            digest.update(str(path.relative_to(IMAGES_DIR)).encode())
            digest.update(path.read_bytes())
    return f"cidemo/{name}:{digest.hexdigest()[:12]}"


def _is_bytecode(path: Path) -> bool:
    """Python's compiled files (an install compiles jenkins-standin/standin.py) are no source."""
    return path.suffix == ".pyc" or "__pycache__" in path.relative_to(IMAGES_DIR).parts


def has(client: docker.DockerClient, ref: str) -> bool:
    """Whether the engine has the image `ref`."""
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def own_base(name: str) -> str | None:
    return _OWN_BASE.get(name)


def planned_base(client: docker.DockerClient) -> str:
    """The base `base_image` would use, without pulling or building anything."""
    chosen = os.environ.get("CIDEMO_BASE_IMAGE")
    if chosen:
        return chosen
    return UPSTREAM_BASE if has(client, UPSTREAM_BASE) else LOCAL_BASE


def base_image(client: docker.DockerClient, reporter: Reporter) -> str:
    """The Debian base: CIDEMO_BASE_IMAGE, a present one, a pulled one, or one made offline."""
    chosen = os.environ.get("CIDEMO_BASE_IMAGE")
    if chosen:
        if not has(client, chosen):
            raise UsageError(f"CIDEMO_BASE_IMAGE={chosen}: no such image on the engine")
        return chosen
    for ref in (UPSTREAM_BASE, LOCAL_BASE):
        if has(client, ref):
            return ref
    try:
        with reporter.progress(f"pulling {UPSTREAM_BASE}"):
            client.images.pull(UPSTREAM_BASE)
        return UPSTREAM_BASE
    except docker.errors.APIError:
        pass
    # debootstrap imports into this machine's engine; another engine gets a copy from there
    here = client_for(LOCAL_ENGINE, node="local")
    if not has(here, LOCAL_BASE):
        reporter.step(
            f"no registry answers for {UPSTREAM_BASE}; building {LOCAL_BASE} with debootstrap"
        )
        make_base_image(reporter)
    if not has(client, LOCAL_BASE):
        with reporter.progress(f"copying {LOCAL_BASE} to the build engine"):
            client.images.load(here.images.get(LOCAL_BASE).save(named=True))
    return LOCAL_BASE


def make_base_image(reporter: Reporter) -> None:
    script = IMAGES_DIR / "base" / "mkbase.sh"
    with reporter.progress(f"debootstrap base image {LOCAL_BASE} (about a minute)"):
        result = subprocess.run(
            ["bash", str(script), LOCAL_BASE], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"building the base image failed ({script}): {tail[0]}")


def ensure_images(
    clients: dict[str, docker.DockerClient],
    needs: Mapping[str, Iterable[str]],
    reporter: Reporter,
) -> dict[str, str]:
    """Build each project image once, on the first engine, and copy it to every engine that
    needs it (`needs`: engine -> image names); returns name -> tag."""
    engines = list(clients.items())
    first_name, first = engines[0]
    wanted = sorted({n for names in needs.values() for n in names})
    for name in wanted:  # all checked before the first build
        if not (IMAGES_DIR / name / "Dockerfile").is_file():
            raise UsageError(f"project image {name!r}: no {IMAGES_DIR / name / 'Dockerfile'}")
    base = base_image(first, reporter)
    tags: dict[str, str] = {}
    for name in wanted:
        parent = _OWN_BASE.get(name) or base
        tag = image_tag(name, parent)
        if not has(first, tag):
            _build(first, first_name, name, tag, parent, reporter)
        for engine_name, client in engines[1:]:
            if name in needs.get(engine_name, ()) and not has(client, tag):
                with reporter.progress(f"copying {tag} to engine {engine_name}"):
                    client.images.load(first.images.get(tag).save(named=True))
        tags[name] = tag
    return tags


def build_app_image(
    client: docker.DockerClient,
    context: Path,
    tag: str,
    reporter: Reporter,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Build an app's image (e.g. examples/guestbook) from its own directory, on the same Debian
    base and through the same build step as the project's images; returns `tag`."""
    if not (context / "Dockerfile").is_file():
        raise UsageError(f"app image {tag}: no Dockerfile in {context}")
    base = base_image(client, reporter)
    extra_ca = local_ca_certificates()
    _build(
        client,
        "local",
        context.name,
        tag,
        base,
        reporter,
        context=context,
        dockerfile="Dockerfile",
        build_args={**({"EXTRA_CA_CERTS": extra_ca} if extra_ca else {}), **(build_args or {})},
        labels=labels,
    )
    return tag


def local_ca_certificates(folder: Path = LOCAL_CA_DIR) -> str:
    """The PEM certificates this machine added to Debian's trust store (a TLS-inspecting proxy's
    CA, say), for app builds that fetch over HTTPS (examples/ghost's npm install); "" if none."""
    if not folder.is_dir():
        return ""
    pems = (p.read_text(errors="replace").strip() for p in sorted(folder.rglob("*.crt")))
    return "\n".join(pem for pem in pems if "BEGIN CERTIFICATE" in pem)


def _build(
    client: docker.DockerClient,
    engine: str,
    name: str,
    tag: str,
    base: str,
    reporter: Reporter,
    context: Path = IMAGES_DIR,
    dockerfile: str | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> None:
    with reporter.progress(f"building {tag} on engine {engine}"):
        try:
            client.images.build(
                path=str(context),
                dockerfile=dockerfile or f"{name}/Dockerfile",
                tag=tag,
                buildargs={**(build_args or {}), "BASE_IMAGE": base},
                rm=True,
                forcerm=True,
                network_mode="host",
                labels={"io.cidemo.image": name, **(labels or {})},
            )
        except docker.errors.BuildError as exc:
            last = next(
                (
                    str(e.get("error") or e.get("stream") or "").strip()
                    for e in reversed(list(exc.build_log))
                    if e.get("error")
                ),
                str(exc),
            )
            raise EngineError(f"engine {engine}: building image {name} failed: {last}") from None
        except docker.errors.APIError as exc:
            raise EngineError(
                f"engine {engine}: building image {name} failed: {exc.explanation or exc}"
            ) from None
