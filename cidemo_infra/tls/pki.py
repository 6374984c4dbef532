"""The per-site TLS material: one CA, a server certificate per node, client certificates.

Everything lives under one directory of the site's state dir:

    ca.pem  ca-key.pem  client-cert.pem  client-key.pem
    nodes/<node>/server-cert.pem  nodes/<node>/server-key.pem
    clients/<component>/cert.pem  clients/<component>/key.pem

`client-cert.pem` is the operator's (the tool's: Docker's TLS API, etcd); each component that
talks to etcd has its own under `clients/` (CN `cidemo <site> <component>`).

`ensure_pki` is idempotent: it writes only what is missing or no longer right (a node whose
addresses changed, a certificate close to expiry or not signed by the current CA) and never
replaces the CA on its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cidemo_infra.errors import CidemoError

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=730)
RENEW_BEFORE = dt.timedelta(days=30)
# Certificates start a little in the past so a node whose clock lags still accepts them.
BACKDATE = dt.timedelta(minutes=5)

# Components that present a client certificate of their own to etcd (clients/<name>/).
ETCD_COMPONENTS = ("galera", "dbproxy", "router", "jenkins", "etcd-bridge")

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

San = tuple[str, str]


class PkiError(CidemoError):
    """TLS material that cannot be created or trusted; names the file and what to do."""


@dataclass(frozen=True)
class Pki:
    """Where a site's TLS files are; read the PEMs through `server_pems`."""

    tls_dir: Path
    site_name: str
    ca_cert: Path
    ca_key: Path
    client_cert: Path
    client_key: Path
    nodes: tuple[str, ...]

    def server_cert_path(self, node: str) -> Path:
        return self.tls_dir / "nodes" / node / "server-cert.pem"

    def server_key_path(self, node: str) -> Path:
        return self.tls_dir / "nodes" / node / "server-key.pem"

    def component_cert_path(self, component: str) -> Path:
        return self.tls_dir / "clients" / component / "cert.pem"

    def component_key_path(self, component: str) -> Path:
        return self.tls_dir / "clients" / component / "key.pem"

    def server_pems(self, node: str) -> tuple[str, str, str]:
        """(CA certificate, server certificate, server key) of `node`, as PEM text."""
        if node not in self.nodes:
            raise PkiError(f"no server certificate for node {node!r}; known: {list(self.nodes)}")
        return (
            self.ca_cert.read_text(),
            self.server_cert_path(node).read_text(),
            self.server_key_path(node).read_text(),
        )


def pki_paths(tls_dir: Path, site_name: str, nodes: Iterable[str] = ()) -> Pki:
    """Where the site's TLS files are, without creating or checking anything."""
    tls_dir = Path(tls_dir)
    return Pki(
        tls_dir=tls_dir,
        site_name=site_name,
        ca_cert=tls_dir / "ca.pem",
        ca_key=tls_dir / "ca-key.pem",
        client_cert=tls_dir / "client-cert.pem",
        client_key=tls_dir / "client-key.pem",
        nodes=tuple(nodes),
    )


def ensure_pki(
    tls_dir: Path,
    site_name: str,
    nodes: Mapping[str, Sequence[str]],
    components: Sequence[str] = (),
) -> Pki:
    """Create or complete the site's CA, node server certificates and client certificates.

    `nodes` maps a node name to the addresses (IPs or DNS names) clients use to reach it; each
    server certificate carries them all, plus `localhost` and 127.0.0.1. `components` get a
    client certificate each (etcd's client-certificate authentication).
    """
    _check_name("site name", site_name)
    wanted: dict[str, frozenset[San]] = {}
    for node, addresses in nodes.items():
        _check_name("node name", node)
        wanted[node] = _sans(node, addresses)

    for component in components:
        _check_name("component name", component)
    tls_dir = Path(tls_dir)
    _ensure_dir(tls_dir)
    _ensure_dir(tls_dir / "nodes")
    pki = pki_paths(tls_dir, site_name, wanted)
    ca_cert, ca_key = _ensure_ca(pki)

    client_key = _ensure_key(pki.client_key)
    _ensure_leaf(
        pki.client_cert,
        ca_cert,
        ca_key,
        client_key,
        common_name=f"cidemo {site_name} client",
        usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        sans=None,
    )
    if components:
        _ensure_dir(tls_dir / "clients")
    for component in components:
        _ensure_dir(tls_dir / "clients" / component)
        key = _ensure_key(pki.component_key_path(component))
        _ensure_leaf(
            pki.component_cert_path(component),
            ca_cert,
            ca_key,
            key,
            common_name=f"cidemo {site_name} {component}",
            usage=(ExtendedKeyUsageOID.CLIENT_AUTH,),
            sans=None,
        )
    for node, sans in wanted.items():
        _ensure_dir(tls_dir / "nodes" / node)
        key = _ensure_key(pki.server_key_path(node))
        _ensure_leaf(
            pki.server_cert_path(node),
            ca_cert,
            ca_key,
            key,
            common_name=node,
            # clientAuth too: etcd members present their node certificate to their peers
            usage=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
            sans=sans,
        )
    return pki


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise PkiError(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _sans(node: str, addresses: Iterable[str]) -> frozenset[San]:
    if isinstance(addresses, str):
        raise PkiError(f"node {node!r}: addresses must be a list, not the string {addresses!r}")
    sans: set[San] = {("dns", "localhost"), ("ip", "127.0.0.1")}
    for raw in addresses:
        address = str(raw).strip()
        try:
            sans.add(("ip", str(ipaddress.ip_address(address))))
            continue
        except ValueError:
            pass
        name = address.lower().rstrip(".")
        labels = name.split(".")
        if len(name) > 253 or not all(_DNS_LABEL_RE.match(label) for label in labels):
            raise PkiError(f"node {node!r}: {raw!r} is neither an IP address nor a valid DNS name")
        sans.add(("dns", name))
    return frozenset(sans)


def _san_extension(sans: frozenset[San]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for kind, value in sorted(sans):
        if kind == "ip":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            names.append(x509.DNSName(value))
    return x509.SubjectAlternativeName(names)


def _cert_sans(cert: x509.Certificate) -> frozenset[San]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    ips = {("ip", str(ip)) for ip in ext.get_values_for_type(x509.IPAddress)}
    dns = {("dns", name.lower()) for name in ext.get_values_for_type(x509.DNSName)}
    return frozenset(ips | dns)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ensure_ca(pki: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    have_cert, have_key = pki.ca_cert.exists(), pki.ca_key.exists()
    if not have_cert and not have_key:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_ca(pki.site_name, key)
        _write_atomic(pki.ca_key, _key_pem(key), KEY_MODE)
        _write_atomic(pki.ca_cert, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
        return cert, key
    if have_cert != have_key:
        present, missing = (pki.ca_cert, pki.ca_key) if have_cert else (pki.ca_key, pki.ca_cert)
        raise PkiError(
            f"{present} exists but {missing} does not; refusing to replace the site CA: restore "
            f"{missing.name} or move {present.name} away to create a new CA (every node "
            "certificate will then be re-issued)"
        )
    _fix_mode(pki.ca_key, KEY_MODE)
    try:
        cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{pki.ca_cert}: not a PEM certificate ({exc})") from None
    key = _load_key(pki.ca_key)
    if cert.public_key() != key.public_key():
        raise PkiError(
            f"{pki.ca_cert} and {pki.ca_key} do not belong together; refusing to replace the "
            "site CA: restore the matching pair"
        )
    expected_cn = f"cidemo {pki.site_name} CA"
    actual_cn = _common_name(cert)
    if actual_cn != expected_cn:
        raise PkiError(
            f"{pki.ca_cert} is the CA {actual_cn!r}, not {expected_cn!r}: this TLS directory "
            "belongs to another site"
        )
    if cert.not_valid_after_utc <= _now():
        raise PkiError(
            f"the site CA {pki.ca_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
            "move ca.pem and ca-key.pem away to create a new CA and re-provision the nodes"
        )
    return cert, key


def _issue_ca(site_name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cidemo {site_name} CA")])
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _ensure_leaf(
    path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    usage: tuple[x509.ObjectIdentifier, ...],
    sans: frozenset[San] | None,
) -> None:
    current = _load_cert(path)
    if current is not None and _is_current(current, ca_cert, key, common_name, usage, sans):
        _fix_mode(path, CERT_MODE)
        return
    cert = _issue_leaf(ca_cert, ca_key, key, common_name, usage, sans)
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _is_current(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: tuple[x509.ObjectIdentifier, ...],
    sans: frozenset[San] | None,
) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.public_key() != key.public_key():
        return False
    if _common_name(cert) != common_name:
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE <= _now():
        return False
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if set(usage) != set(ekus):
        return False
    return sans is None or _cert_sans(cert) == sans


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: tuple[x509.ObjectIdentifier, ...],
    sans: frozenset[San] | None,
) -> x509.Certificate:
    now = _now()
    public = key.public_key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if sans is not None:
        builder = builder.add_extension(_san_extension(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _serial() -> int:
    # 159 random bits: positive and within the 20 octets RFC 5280 allows.
    return secrets.randbits(159) | 1


def _common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        _fix_mode(path, KEY_MODE)
        return _load_key(path)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_atomic(path, _key_pem(key), KEY_MODE)
    return key


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an ECDSA key, found {type(key).__name__}")
    return key


def _load_cert(path: Path) -> x509.Certificate | None:
    """A node or client certificate, or None when missing or unreadable: it is re-issued then."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _fix_mode(path, DIR_MODE)


def _fix_mode(path: Path, mode: int) -> None:
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
