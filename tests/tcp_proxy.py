"""A killable TCP proxy for fault tests: put it between a client and Postgres, then cut.

`cut()` closes every open connection and refuses new ones (the database is "down" to the
client: connection refused); `restore()` accepts again. Threads, no asyncio: tests drive it
from synchronous code while a runner or a subprocess talks through it.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self.cuts = 0

    # -- control ----------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        """Listen on 127.0.0.1:port (the same port after a cut, so URLs stay valid)."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        self._accepter = threading.Thread(target=self._accept, args=(server,), daemon=True)
        self._accepter.start()
        return self

    def cut(self) -> None:
        """Stop listening and drop every open connection, both ways."""
        self.cuts += 1
        self._drop()

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self._drop()  # not an outage: `cuts` counts only those

    def _drop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        if self._accepter is not None:
            self._accepter.join(timeout=5)

    def url(self, pg_url: str) -> str:
        """`pg_url` (postgresql+psycopg://user@host:port/db) routed through this proxy."""
        head, _, tail = pg_url.partition("@")
        _hostport, _, database = tail.partition("/")
        return f"{head}@127.0.0.1:{self.port}/{database}"

    # -- plumbing ---------------------------------------------------------------------------
    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is not server:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
