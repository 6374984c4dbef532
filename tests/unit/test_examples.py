"""The Ghost example: the Compose file validates, the Dockerfile builds Ghost 5 from npm on the
Debian base, and its entrypoint maps the 2015 variables.

These checks are static, except that the entrypoint script is run for real with a stand-in for
Ghost (`node` that prints the environment it was given). The image itself is built and run on the
platform by tests/integration/test_ghost.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, need

pytestmark = pytest.mark.unit

GHOST = REPO / "examples" / "ghost"
DOCKERFILE = GHOST / "Dockerfile"
ENTRYPOINT = GHOST / "cidemo-entrypoint.sh"
COMPOSE = GHOST / "compose.yaml"
PASSWORDS = {"DB_PASS": "test-db-pass", "MYSQL_ROOT_PASSWORD": "test-root-pass"}


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    need(binary is not None, "docker-compose (Debian package docker-compose)")
    clean = {k: v for k, v in os.environ.items() if k not in PASSWORDS}
    return subprocess.run(
        [str(binary), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid() -> None:
    result = _compose("config", "-q", env=PASSWORDS)
    assert result.returncode == 0, result.stderr


def test_compose_has_no_default_passwords() -> None:
    result = _compose("config", "-q", env={})
    assert result.returncode != 0
    assert "DB_PASS" in result.stderr or "MYSQL_ROOT_PASSWORD" in result.stderr


def test_compose_shape() -> None:
    data = yaml.safe_load(COMPOSE.read_text())
    assert "version" not in data
    assert set(data["services"]) == {"ghost", "mysql"}
    assert re.fullmatch(r"mysql:8(\.\d+)*", data["services"]["mysql"]["image"])
    ghost = data["services"]["ghost"]
    assert ghost["build"] == "."
    assert ghost["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert {"URL", "DB_HOST", "DB_USER", "DB_PASS", "DB_NAME"} <= set(ghost["environment"])


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    found: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line.strip()
        word, _, rest = current.partition(" ")
        found.append((word.upper(), rest.strip()))
        current = ""
    return found


def test_dockerfile_builds_ghost_5_from_npm_on_the_debian_base() -> None:
    steps = _instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"], froms
    assert ("ARG", "BASE_IMAGE=debian:bookworm-slim") in steps
    version = next(a for w, a in steps if w == "ARG" and a.startswith("GHOST_VERSION="))
    assert re.fullmatch(r"GHOST_VERSION=5\.\d+\.\d+", version), version
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert "apt-get install -y --no-install-recommends nodejs" in runs
    assert 'fetch-tarball "ghost/-/ghost-${GHOST_VERSION}.tgz" "$GHOST_INTEGRITY"' in runs
    assert "--omit=dev" in runs and "--ignore-scripts" in runs
    env = " ".join(a for w, a in steps if w == "ENV")
    assert "NODE_ENV=production" in env
    assert ("ENTRYPOINT", '["/usr/local/bin/cidemo-entrypoint.sh"]') in steps
    assert ("CMD", '["node", "index.js"]') in steps
    assert ("USER", "ghost") in steps
    assert [s for s in steps if s[0] == "EXPOSE"] == [("EXPOSE", "2368")]


def test_the_build_ca_stays_in_the_build_stage() -> None:
    """EXTRA_CA_CERTS (a proxy's CA for npm) is declared in the build stage only."""
    text = DOCKERFILE.read_text()
    build, _, final = text.partition("\nFROM ${BASE_IMAGE}\n")
    assert "ARG EXTRA_CA_CERTS" in build
    assert "EXTRA_CA_CERTS" not in final


def test_no_secret_is_baked_into_the_image() -> None:
    for word, args in _instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)pass|secret|key|token", args), args


@pytest.fixture
def entrypoint(tmp_path: Path) -> Path:
    script = tmp_path / "cidemo-entrypoint.sh"
    shutil.copy(ENTRYPOINT, script)
    stand_in = tmp_path / "bin" / "node"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\necho "args=node $*"\nenv\n')
    stand_in.chmod(0o755)
    return script


def _run(script: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": f"{script.parent / 'bin'}:/usr/bin:/bin",
        "paths__contentPath": str(script.parent),
    }
    return subprocess.run(
        ["sh", str(script), "node", "index.js"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=30,
        check=False,
    )


def _env(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_entrypoint_maps_the_2015_names(entrypoint: Path) -> None:
    result = _run(
        entrypoint,
        URL="http://pr-11-ghost.cidemo.test",
        DB_HOST="10.213.7.20",
        DB_USER="pr_11_ghost",
        DB_PASS="s3cret-db",
        DB_NAME="pr_11_ghost",
        PORT="5000",
        HOST="0.0.0.0",
    )
    assert result.returncode == 0, result.stderr
    env = _env(result.stdout)
    assert env["args"] == "node index.js"
    assert env["url"] == "http://pr-11-ghost.cidemo.test"
    assert env["database__client"] == "mysql"
    assert env["database__connection__host"] == "10.213.7.20"
    assert env["database__connection__port"] == "3306"
    assert env["database__connection__user"] == "pr_11_ghost"
    assert env["database__connection__password"] == "s3cret-db"
    assert env["database__connection__database"] == "pr_11_ghost"
    assert (env["server__port"], env["server__host"]) == ("5000", "0.0.0.0")
    assert "DB_PASS" not in env
    assert not any(k.startswith("storage__") for k in env)


def test_entrypoint_refuses_a_database_without_password(entrypoint: Path) -> None:
    result = _run(entrypoint, DB_HOST="mysql", DB_USER="ghost")
    assert result.returncode != 0
    assert "DB_PASS is required" in result.stderr
    assert "args=" not in result.stdout


def test_entrypoint_reads_secrets_from_files(entrypoint: Path) -> None:
    """The swarm platform hands DB_PASS and app secrets over as <NAME>_FILE (Swarm secrets)."""
    secrets_dir = entrypoint.parent / "run-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "db_pass").write_text("from-a-file")
    (secrets_dir / "s3_key").write_text("wJalrFROMFILE")
    result = _run(
        entrypoint,
        DB_HOST="cidemo-demo-dbproxy",
        DB_USER="pr_11_ghost",
        DB_PASS_FILE=str(secrets_dir / "db_pass"),
        S3_ACCESS_KEY_ID="AKIAEXAMPLE",
        S3_ACCESS_KEY_FILE=str(secrets_dir / "s3_key"),
    )
    assert result.returncode == 0, result.stderr
    env = _env(result.stdout)
    assert env["database__connection__password"] == "from-a-file"
    assert env["storage__s3__secretAccessKey"] == "wJalrFROMFILE"
    assert not {"DB_PASS", "DB_PASS_FILE", "S3_ACCESS_KEY", "S3_ACCESS_KEY_FILE"} & set(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DB_PASS": "x", "DB_PASS_FILE": "/dev/null"}, "both DB_PASS and DB_PASS_FILE are set"),
        ({"DB_PASS_FILE": "/nonexistent/db_pass"}, "DB_PASS_FILE=/nonexistent/db_pass is not a"),
    ],
)
def test_entrypoint_refuses_an_ambiguous_or_missing_secret_file(
    entrypoint: Path, env: dict[str, str], message: str
) -> None:
    result = _run(entrypoint, DB_HOST="mysql", DB_USER="ghost", **env)
    assert result.returncode == 1
    assert message in result.stderr
    assert "args=" not in result.stdout


def test_entrypoint_maps_s3_keys_and_needs_an_adapter(entrypoint: Path) -> None:
    keys = {"S3_ACCESS_KEY_ID": "AKIAEXAMPLE", "S3_ACCESS_KEY": "wJalrEXAMPLEKEY"}
    without = _run(entrypoint, **keys)
    env = _env(without.stdout)
    assert env["storage__s3__accessKeyId"] == "AKIAEXAMPLE"
    assert env["storage__s3__secretAccessKey"] == "wJalrEXAMPLEKEY"
    assert "storage__active" not in env
    assert "no s3 storage adapter" in without.stderr
    (entrypoint.parent / "adapters" / "storage" / "s3").mkdir(parents=True)
    assert _env(_run(entrypoint, **keys).stdout)["storage__active"] == "s3"


def test_makefile_has_the_2015_aliases() -> None:
    targets = set(re.findall(r"^([a-z]+):", (GHOST / "Makefile").read_text(), re.M))
    assert {"dc", "npm", "up", "build", "test"} <= targets


def test_app_builds_get_the_machines_added_certificate_authorities(tmp_path: Path) -> None:
    """build_app_image passes what update-ca-certificates added (a TLS-inspecting proxy's CA)
    as EXTRA_CA_CERTS; anything that is not a PEM certificate is left out."""
    from cidemo_infra.images import local_ca_certificates

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    (tmp_path / "proxy.crt").write_text(pem + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.crt").write_text(pem.replace("MIIB", "MIIC"))
    (tmp_path / "notes.crt").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text(pem)
    assert local_ca_certificates(tmp_path) == pem + "\n" + pem.replace("MIIB", "MIIC")
    assert local_ca_certificates(tmp_path / "missing") == ""
