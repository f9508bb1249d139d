"""A TCP forwarder to a loopback port that a test can cut and restore: a broker outage seen
by one client only, while the shared broker keeps running for everyone else. Run as a
program, it also gives the real node's Pods (hack/node.sh) their way to the broker: it
listens on the node's bridge address, which the Pods' network reaches, and forwards to
127.0.0.1.

    python -m roger_devtools.tcpproxy --listen 10.213.0.1:5672 --target 5672
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import threading

from roger_devtools.ports import free_port


class TcpProxy:
    """Forwards ``host:port`` (loopback unless told) to ``127.0.0.1:target``. ``cut()``
    closes the listener and every forwarded connection (clients see the peer gone and cannot
    reconnect); ``restore()`` listens again on the same port."""

    def __init__(self, target: int, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def restore(self) -> TcpProxy:
        listener = socket.create_server((self.host, self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    start = restore

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    parser.add_argument("--target", required=True, type=int, help="port on 127.0.0.1")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    proxy = TcpProxy(args.target, int(port), host).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
