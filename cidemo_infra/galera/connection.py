"""The tool's MySQL connections to the site's servers: TLS verified against the site CA, and
never an authentication that hands the password to the server in clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymysql

# Plugins that never put the password on the wire, whatever the transport; the others
# (caching_sha2_password's full path, sha256_password) send it in clear or to a key the server
# chooses, so only inside TLS verified against the site CA; mysql_clear_password and dialog never.
CHALLENGE_PLUGINS = frozenset({"", "mysql_native_password", "client_ed25519"})
TLS_ONLY_PLUGINS = frozenset({"caching_sha2_password", "sha256_password"})


class GuardedConnection(pymysql.connections.Connection):
    """pymysql's connection, refusing any authentication that would reveal the password to a
    server that is not the site's: a server asking for mysql_clear_password (an attacker's
    stand-in, a hijacked proxy backend) gets nothing."""

    def _allowed(self, plugin: str) -> bool:
        return plugin in CHALLENGE_PLUGINS or (plugin in TLS_ONLY_PLUGINS and self._ssl_required)

    def _request_authentication(self) -> None:
        if not self._allowed(self._auth_plugin_name):
            raise pymysql.err.OperationalError(
                2059, f"refusing the server's authentication plugin {self._auth_plugin_name!r}"
            )
        super()._request_authentication()

    def _process_auth(self, plugin_name: bytes, auth_packet: Any, handler: Any = None) -> Any:
        name = plugin_name.decode("ascii", "replace")
        if not self._allowed(name):
            raise pymysql.err.OperationalError(
                2059, f"refusing the server's switch to authentication plugin {name!r}"
            )
        return super()._process_auth(plugin_name, auth_packet, handler)


def guarded_connection(*, tls_ca: Path | None = None, **kwargs: Any) -> GuardedConnection:
    """pymysql.connect's arguments; with `tls_ca`, TLS is required and the server's certificate
    is verified against it and the host name (a server without TLS is refused)."""
    if tls_ca is not None:
        kwargs.update(ssl_ca=str(tls_ca), ssl_verify_cert=True, ssl_verify_identity=True)
    return GuardedConnection(**kwargs)
