"""The real app served by uvicorn in a thread, on a socket bound before it starts (no port
race): for the browser tests and the contract fuzzer, which talk HTTP to it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from service.app import create_app
from service.settings import ServiceSettings


class LiveServer:
    """The API in a uvicorn thread, listening on a socket bound before it starts (no port race)."""

    def __init__(
        self, settings: ServiceSettings, start_runner: Callable[[], None] = lambda: None
    ) -> None:
        self.settings = settings
        self.start_runner = start_runner  # a runner beside it, for tests that start one late
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
