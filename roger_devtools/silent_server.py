"""A TCP server that accepts connections and never answers: a broker that hangs.

A dead broker refuses connections at once; a hung one (a stuck node, a half-open load
balancer, a firewall that drops replies) accepts them and then says nothing, which is what
holds a caller's thread until its own timeouts fire. Tests use this to prove that one hung
broker does not delay the work of others.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from roger_devtools.ports import free_port


class SilentServer:
    """Listens on 127.0.0.1:``port``; keeps every accepted socket open and silent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self._thread.start()

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()
