"""The tool's MySQL connections never hand root's password to a server that asks for it in clear.

The server here is an ATTACKER'S STAND-IN (not MariaDB): what a hijacked proxy backend would be.
It speaks the handshake of MySQL protocol 10, then asks the client to switch to
`mysql_clear_password`, and records every byte the client sends."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pymysql
import pytest

from cidemo_infra.databases.database import DatabaseError, connect

pytestmark = pytest.mark.unit

PASSWORD = "root-password-0123456789"
PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH, SSL = 0x200, 0x8000, 0x80000, 0x800


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


class AttackerMysqlStandIn:
    """One connection: greet (no TLS offered), read the client's answer, ask for the password
    in clear, record what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        caps = 1 | PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH
        salt = b"abcdefgh" + b"ijklmnopqrst"
        greeting = (
            b"\x0a5.5.5-10.11.0-attacker-stand-in\x00"
            + struct.pack("<I", 7)
            + salt[:8]
            + b"\x00"
            + struct.pack("<H", caps & 0xFFFF)
            + bytes([45])
            + struct.pack("<H", 2)
            + struct.pack("<H", caps >> 16)
            + bytes([21])
            + b"\x00" * 10
            + salt[8:]
            + b"\x00"
            + b"mysql_native_password\x00"
        )
        try:
            conn.sendall(_packet(0, greeting))
            self.received += conn.recv(65536)
            conn.sendall(_packet(2, b"\xfemysql_clear_password\x00"))
            while chunk := conn.recv(65536):
                self.received += chunk
        except OSError:
            pass
        finally:
            conn.close()
            self.sock.close()

    def got_password(self) -> bool:
        self.thread.join(10)
        return PASSWORD.encode() in self.received


def test_the_stand_in_does_get_the_password_from_plain_pymysql() -> None:
    """The control: without the guard, pymysql answers the switch with the password in clear."""
    server = AttackerMysqlStandIn()
    with pytest.raises(pymysql.MySQLError):
        pymysql.connect(
            host="127.0.0.1", port=server.port, user="root", password=PASSWORD, connect_timeout=5
        )
    assert server.got_password()


def test_connect_refuses_the_switch_to_mysql_clear_password() -> None:
    server = AttackerMysqlStandIn()
    with pytest.raises(DatabaseError, match="mysql_clear_password"):
        connect("127.0.0.1", server.port, "root", PASSWORD)
    assert not server.got_password()


def test_connect_with_the_site_ca_refuses_a_server_without_tls(tmp_path: Path) -> None:
    from cidemo_infra.tls.pki import ensure_pki

    pki = ensure_pki(tmp_path / "tls", "nocleartext", {"deis-1": ["127.0.0.1"]})
    server = AttackerMysqlStandIn()
    with pytest.raises(DatabaseError, match="SSL is required"):
        connect("127.0.0.1", server.port, "root", PASSWORD, tls_ca=pki.ca_cert)
    assert not server.got_password()
