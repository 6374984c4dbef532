"""The etcd (v2) key layout, shared with the images, and a small reader over python-etcd.

Registrations follow the 2015 percona-galera/registrator layout so existing tooling keeps working:
`<prefix>/services/<service>/<host>:<container>:<port>` = `<ip>:<port>`, each with a TTL.

etcd serves https only and asks every client for a certificate of the site CA: `Registry` is the
one place the tool builds its etcd client; its connection pool keeps TLS connections open, so a
session pays for one handshake, not one per request.
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd

from cidemo_infra.errors import RegistrationError

DATABASE_SERVICES = ("database_port", "database_sst", "database_mon", "database_ssi")
PROXY_SERVICES = ("lb_rw", "lb_read")
JENKINS_SERVICE = "jenkins"


def service_dir(prefix: str, service: str) -> str:
    return f"{prefix}/services/{service}"


def guard_key(prefix: str, cluster: str) -> str:
    """The one key whose creation (prevExist=false) decides who bootstraps the cluster."""
    return f"{prefix}/cidemo/galera/{cluster}/bootstrap"


def positions_dir(prefix: str, cluster: str) -> str:
    """Where members publish their recovered positions (TTL) while no Primary component lives."""
    return f"{prefix}/cidemo/galera/{cluster}/positions"


@dataclass(frozen=True)
class Registration:
    service: str
    key_id: str  # <host>:<container>:<port>
    value: str  # <ip>:<port>
    ttl: int | None

    @property
    def container(self) -> str:
        parts = self.key_id.split(":")
        return parts[1] if len(parts) == 3 else ""


@dataclass(frozen=True)
class EtcdTls:
    """The files the tool presents to etcd: the site CA and its own client certificate."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, tls_dir: Path) -> EtcdTls:
        return cls(tls_dir / "ca.pem", tls_dir / "client-cert.pem", tls_dir / "client-key.pem")


class Registry:
    def __init__(
        self, url: str, prefix: str = "", timeout: float = 5.0, tls: EtcdTls | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self.prefix = prefix
        if parsed.scheme == "https" and tls is None:
            raise RegistrationError(f"etcd {url}: https needs the site's CA and client certificate")
        kwargs: dict[str, Any] = {}
        if tls is not None:
            missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
            if missing:
                raise RegistrationError(
                    f"etcd {url}: TLS files missing: {', '.join(missing)} (run cidemo provision)"
                )
            kwargs = {"ca_cert": str(tls.ca), "cert": (str(tls.cert), str(tls.key))}
        self.client = etcd.Client(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 2379,
            protocol=parsed.scheme or "http",
            read_timeout=timeout,
            allow_reconnect=False,
            **kwargs,
        )

    def is_healthy(self) -> tuple[bool, str]:
        """etcd answers and serves the v2 API (etcd >= 3.4 needs --enable-v2)."""
        try:
            version = self.client.version
            self.client.read("/")
        except etcd.EtcdException as exc:
            return False, f"{self.url}: {exc}"
        except Exception as exc:
            return False, f"{self.url}: {type(exc).__name__}: {exc}"
        return True, f"etcd {version} at {self.url}, v2 API served"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ok, detail = self.is_healthy()
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, detail = self.is_healthy()
        if not ok:
            raise RegistrationError(f"etcd did not answer within {timeout:.0f} s: {detail}")

    def services(self, service: str) -> list[Registration]:
        """Live registrations of `service` (etcd drops expired keys itself)."""
        try:
            result = self.client.read(service_dir(self.prefix, service), recursive=True)
        except etcd.EtcdKeyNotFound:
            return []
        out = []
        for leaf in result.leaves:
            if leaf.dir or leaf.key == result.key:
                continue
            out.append(
                Registration(service, leaf.key.rsplit("/", 1)[-1], leaf.value or "", leaf.ttl)
            )
        return sorted(out, key=lambda r: r.key_id)

    def all_services(self) -> dict[str, list[Registration]]:
        """Every live registration, by service, in one read of `<prefix>/services`."""
        base = service_dir(self.prefix, "")
        try:
            result = self.client.read(base.rstrip("/"), recursive=True)
        except etcd.EtcdKeyNotFound:
            return {}
        found: dict[str, list[Registration]] = {}
        for leaf in result.leaves:
            if leaf.dir or leaf.key == result.key or not leaf.key.startswith(base):
                continue
            service, _, key_id = leaf.key[len(base) :].rpartition("/")
            if service and "/" not in service:
                found.setdefault(service, []).append(
                    Registration(service, key_id, leaf.value or "", leaf.ttl)
                )
        return {s: sorted(regs, key=lambda r: r.key_id) for s, regs in found.items()}

    def children(self, path: str) -> dict[str, str]:
        """The live keys directly under `path`: last path element -> value."""
        try:
            result = self.client.read(path, recursive=False)
        except etcd.EtcdKeyNotFound:
            return {}
        return {
            leaf.key.rsplit("/", 1)[-1]: leaf.value or ""
            for leaf in result.leaves
            if not leaf.dir and leaf.key != result.key
        }

    def get(self, key: str) -> str | None:
        try:
            return self.client.read(key).value
        except etcd.EtcdKeyNotFound:
            return None

    def compare_and_swap(self, key: str, value: str, prev: str | None) -> bool:
        try:
            if prev is None:
                self.client.write(key, value, prevExist=False)
            else:
                self.client.write(key, value, prevValue=prev)
        except (etcd.EtcdCompareFailed, etcd.EtcdAlreadyExist):
            return False
        return True

    def delete_tree(self, path: str) -> None:
        with contextlib.suppress(etcd.EtcdKeyNotFound):
            self.client.delete(path, recursive=True, dir=True)
