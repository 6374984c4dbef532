"""Reach a node-private TCP service through the node's Docker engine (exec + socat).

On a cloud node the services listen on the private address only, and only the Docker API (TLS
with the site's client certificate, or ssh) is open to the operator. A tunnel listens on
127.0.0.1 here and carries each connection over `docker exec <gateway> socat - TCP:host:port`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from typing import Any

import docker

from cidemo_infra.engines import ENGINE_ERRORS, engine_error

_STDOUT = 1


class ExecTunnel:
    def __init__(self, client: docker.DockerClient, container: str, target: str, node: str) -> None:
        self.client = client
        self.container = container
        self.target = target  # host:port as seen from the container
        self.node = node
        self._server = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, name=f"tunnel-{target}", daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(local,), daemon=True).start()

    def _serve(self, local: socket.socket) -> None:
        try:
            remote = _raw(self._open())
        except Exception:
            local.close()
            return
        try:
            _pump(local, remote)
        except OSError:
            pass
        finally:
            for sock in (local, remote):
                with contextlib.suppress(OSError):
                    sock.close()

    def _open(self) -> Any:
        api = self.client.api
        try:
            exec_id = api.exec_create(
                self.container,
                ["socat", "-", f"TCP:{self.target}"],
                stdin=True,
                stdout=True,
                stderr=False,
                tty=False,
            )
            return api.exec_start(exec_id, socket=True, tty=False)
        except ENGINE_ERRORS as exc:
            raise engine_error(self.node, f"tunnel to {self.target}", exc) from None


def _raw(sock: Any) -> Any:
    """The socket under docker-py's SocketIO wrapper (unix and tcp transports)."""
    return getattr(sock, "_sock", sock)


def _pump(local: socket.socket, remote: Any) -> None:
    """Carry bytes both ways from ONE thread: a TLS socket must never be read and written at once
    (OpenSSL state is per connection; two threads corrupt it: "bad record MAC")."""
    pending = b""  # multiplexed frames from the engine: 8-byte header, then the payload
    local_open = True
    while True:
        waiting = remote.pending() if hasattr(remote, "pending") else 0
        readable = [remote] if waiting else []
        if not readable:
            watch = [remote, local] if local_open else [remote]
            readable, _, _ = select.select(watch, [], [], 60)
            if not readable:
                continue
        if local in readable:
            data = local.recv(65536)
            if data:
                remote.sendall(data)
            else:  # the client is done sending: end socat's input, keep reading its output
                local_open = False
                with contextlib.suppress(OSError):
                    remote.shutdown(socket.SHUT_WR)
        if remote in readable:
            chunk = remote.recv(65536)
            if not chunk:
                return
            pending += chunk
            while len(pending) >= 8:
                stream, size = struct.unpack(">BxxxL", pending[:8])
                if len(pending) < 8 + size:
                    break
                if stream == _STDOUT:
                    local.sendall(pending[8 : 8 + size])
                pending = pending[8 + size :]
