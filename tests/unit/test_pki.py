"""The per-site CA and certificates: contents, file modes, idempotence and a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cidemo_infra.tls import Pki, PkiError, ensure_pki
from cidemo_infra.tls.pki import ETCD_COMPONENTS

pytestmark = pytest.mark.unit

NODES = {
    "deis-1": ["10.42.0.11", "203.0.113.11", "deis-1.ci-demo.example.com"],
    "deis-2": ["10.42.0.12", "203.0.113.12"],
    "deis-3": ["10.42.0.13"],
    "standalone": ["10.42.0.14", "Standalone.CI-Demo.example.com."],
}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _snapshot(tls_dir: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(tls_dir)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(tls_dir.rglob("*"))
        if p.is_file()
    }


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    # Raises InvalidSignature when the CA did not sign this certificate.
    public.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    cert.verify_directly_issued_by(ca)


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    return ensure_pki(tmp_path / "tls", "demo", NODES)


def test_files_and_modes(pki: Pki) -> None:
    tls = pki.tls_dir
    expected = {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "client-cert.pem": 0o644,
        "client-key.pem": 0o600,
    }
    for node in NODES:
        expected[f"nodes/{node}/server-cert.pem"] = 0o644
        expected[f"nodes/{node}/server-key.pem"] = 0o600
    files = {str(p.relative_to(tls)): p for p in tls.rglob("*") if p.is_file()}
    assert set(files) == set(expected), "no stray or temporary files are left behind"
    for name, mode in expected.items():
        assert files[name].stat().st_mode & 0o777 == mode, name
    for directory in [tls, tls / "nodes", *(tls / "nodes" / n for n in NODES)]:
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert pki.ca_cert == tls / "ca.pem"
    assert pki.client_key == tls / "client-key.pem"
    assert pki.server_key_path("deis-1") == tls / "nodes/deis-1/server-key.pem"
    assert pki.nodes == tuple(NODES)


def test_ca_certificate(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cidemo demo CA"
    assert ca.issuer == ca.subject
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    _verify_signed_by(ca, ca)


def test_server_certificates(pki: Pki) -> None:
    ca = _cert(pki.ca_cert)
    for node, addresses in NODES.items():
        cert = _cert(pki.server_cert_path(node))
        _verify_signed_by(cert, ca)
        normalised = {a.lower().rstrip(".") for a in addresses}
        assert _sans(cert) == normalised | {"localhost", "127.0.0.1"}, node
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in ekus
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert dt.timedelta(days=729) < lifetime < dt.timedelta(days=731)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
    ip_sans = (
        _cert(pki.server_cert_path("deis-1"))
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value.get_values_for_type(x509.IPAddress)
    )
    assert {str(ip) for ip in ip_sans} == {"10.42.0.11", "203.0.113.11", "127.0.0.1"}, (
        "IP addresses are IPAddress SANs, not DNS names"
    )


def test_client_certificate(pki: Pki) -> None:
    cert = _cert(pki.client_cert)
    _verify_signed_by(cert, _cert(pki.ca_cert))
    ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in ekus
    assert ExtendedKeyUsageOID.SERVER_AUTH not in ekus


def test_each_component_has_a_client_certificate_and_nodes_may_be_etcd_peers(
    tmp_path: Path,
) -> None:
    made = ensure_pki(tmp_path / "tls", "site-c", {"deis-1": ["10.0.0.5"]}, ETCD_COMPONENTS)
    ca = _cert(made.ca_cert)
    for component in ETCD_COMPONENTS:
        cert = _cert(made.component_cert_path(component))
        _verify_signed_by(cert, ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == f"cidemo site-c {component}"
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(ekus) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert made.component_key_path(component).stat().st_mode & 0o777 == 0o600
    node = _cert(made.server_cert_path("deis-1"))
    ekus = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(ekus) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_server_pems_reads_the_node_files(pki: Pki) -> None:
    ca, cert, key = pki.server_pems("deis-2")
    assert ca == pki.ca_cert.read_text()
    assert cert == pki.server_cert_path("deis-2").read_text()
    assert key.startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(PkiError, match="deis-9"):
        pki.server_pems("deis-9")


def test_second_call_changes_no_file(pki: Pki) -> None:
    before = _snapshot(pki.tls_dir)
    again = ensure_pki(pki.tls_dir, "demo", NODES)
    assert _snapshot(pki.tls_dir) == before
    assert again == pki


def test_changed_addresses_reissue_only_that_node(pki: Pki) -> None:
    before = _snapshot(pki.tls_dir)
    changed = {**NODES, "deis-2": ["10.42.0.12", "203.0.113.99"]}
    ensure_pki(pki.tls_dir, "demo", changed)
    after = _snapshot(pki.tls_dir)
    differing = {name for name in before if before[name] != after[name]}
    assert differing == {"nodes/deis-2/server-cert.pem"}
    assert "203.0.113.99" in _sans(_cert(pki.server_cert_path("deis-2")))
    assert "203.0.113.12" not in _sans(_cert(pki.server_cert_path("deis-2")))
    _verify_signed_by(_cert(pki.server_cert_path("deis-2")), _cert(pki.ca_cert))


def test_new_node_adds_only_its_files(pki: Pki) -> None:
    before = _snapshot(pki.tls_dir)
    ensure_pki(pki.tls_dir, "demo", {**NODES, "deis-4": ["10.42.0.15"]})
    after = _snapshot(pki.tls_dir)
    assert set(after) - set(before) == {
        "nodes/deis-4/server-cert.pem",
        "nodes/deis-4/server-key.pem",
    }
    assert all(after[name] == before[name] for name in before)


def test_ca_key_missing_is_an_error_not_a_new_ca(pki: Pki) -> None:
    ca_before = pki.ca_cert.read_bytes()
    pki.ca_key.unlink()
    with pytest.raises(PkiError, match="refusing to replace the site CA"):
        ensure_pki(pki.tls_dir, "demo", NODES)
    assert pki.ca_cert.read_bytes() == ca_before
    assert not pki.ca_key.exists()


def test_mismatched_ca_pair_is_an_error(pki: Pki, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "other", "demo", {})
    shutil.copy(other.ca_key, pki.ca_key)
    with pytest.raises(PkiError, match="do not belong together"):
        ensure_pki(pki.tls_dir, "demo", NODES)


def test_ca_of_another_site_is_an_error(pki: Pki) -> None:
    with pytest.raises(PkiError, match="belongs to another site"):
        ensure_pki(pki.tls_dir, "prod", NODES)


@pytest.mark.parametrize(
    ("nodes", "needle"),
    [
        ({"../evil": ["10.0.0.1"]}, "invalid node name"),
        ({"deis-1": ["not an address!"]}, "neither an IP address nor a valid DNS name"),
        ({"deis-1": "10.0.0.1"}, "must be a list"),
    ],
)
def test_bad_input_is_rejected(tmp_path: Path, nodes: dict[str, Any], needle: str) -> None:
    with pytest.raises(PkiError, match=needle):
        ensure_pki(tmp_path / "tls", "demo", nodes)


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[BaseException | None, bytes | BaseException]:
    """(server-side error or None, what the client read or the error it got)."""
    outcome: dict[str, BaseException | None] = {"server": None}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(5)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                outcome["server"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                received: bytes | BaseException = tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            received = exc
        thread.join(timeout=10)
        assert not thread.is_alive(), "the TLS server thread did not finish"
    return outcome["server"], received


def _server_context(pki: Pki, node: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert_path(node), pki.server_key_path(node))
    ctx.load_verify_locations(cafile=pki.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    return ctx


def test_tls_handshake_accepts_the_site_client(pki: Pki) -> None:
    client = _client_context(pki.ca_cert, pki.client_cert, pki.client_key)
    for hostname in ("127.0.0.1", "localhost"):
        server_error, received = _handshake(_server_context(pki, "deis-1"), client, hostname)
        assert server_error is None
        assert received == b"ok"


def test_tls_handshake_rejects_a_client_of_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "other", "other", {})
    # The client trusts the right CA, so only its own certificate can be the problem.
    client = _client_context(pki.ca_cert, other.client_cert, other.client_key)
    server_error, received = _handshake(_server_context(pki, "deis-1"), client, "127.0.0.1")
    assert isinstance(server_error, ssl.SSLError)
    assert "certificate" in str(server_error).lower()
    assert received != b"ok"


def test_tls_handshake_rejects_a_server_of_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "other", "other", {"deis-1": ["10.42.0.11"]})
    client = _client_context(pki.ca_cert, pki.client_cert, pki.client_key)
    server_error, received = _handshake(_server_context(other, "deis-1"), client, "127.0.0.1")
    assert isinstance(received, ssl.SSLCertVerificationError)
    assert server_error is not None
