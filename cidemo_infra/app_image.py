"""The app image a local site builds for itself (`environments.build`), tagged by its sources.

The ref is a hash of the build directory's files (12 hex digits, like a short commit id), so the
same sources give the same image and an edit gives a new one. `provision` builds
`environments.image` for that ref when the engine lacks it; `cidemo env up` without `--ref` runs it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker
import docker.errors

from cidemo_infra import images
from cidemo_infra.console import Reporter
from cidemo_infra.engines import ENGINE_ERRORS, engine_error
from cidemo_infra.errors import UsageError
from cidemo_infra.site import Site


def build_dir(site: Site, site_path: str | Path) -> Path | None:
    """The directory `environments.build` names, relative to the site file; None without one."""
    build = site.environments.build
    if build is None or not build.source:
        return None
    return (Path(site_path).parent / build.source).resolve()


def source_ref(folder: Path) -> str:
    """A hash of the files under `folder` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_ref(site: Site, ref: str) -> str:
    """`environments.image` for `ref` (its placeholders are checked when the site is loaded)."""
    return site.environments.image.format(app=site.environments.app, sha=ref)


def built_ref(site: Site, site_path: str | Path) -> str:
    """The ref `env up` uses when none is given: the build directory's."""
    folder = build_dir(site, site_path)
    if folder is None:
        raise UsageError(
            f"--ref is required: site '{site.name}' has no environments.build, so there is no "
            "image built here to default to (give the commit the image was built from)"
        )
    return source_ref(folder)


def ensure_app_image(
    client: docker.DockerClient,
    engine: str,
    site: Site,
    site_path: str | Path,
    reporter: Reporter,
    *,
    dry_run: bool = False,
) -> str | None:
    """Build the site's app image on `client` when it is missing; its reference (None when the
    site builds no app)."""
    folder = build_dir(site, site_path)
    if folder is None:
        return None
    ref = source_ref(folder)
    tag = image_ref(site, ref)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    except ENGINE_ERRORS as exc:
        raise engine_error(engine, f"inspect image {tag}", exc) from None
    if dry_run:
        reporter.line(f"would build the app image {tag} from {folder}")
        return tag
    images.build_app_image(
        client,
        folder,
        tag,
        reporter,
        build_args={"APP_VERSION": ref},
        labels={"io.cidemo.app": site.environments.app, "org.opencontainers.image.revision": ref},
    )
    return tag
