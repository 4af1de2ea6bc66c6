"""A PEP 503 index on loopback for image builds that must not download CUDA torch.

`/simple/torch/` lists only the local wheel(s) in WHEEL_DIR; every other project's page is a
redirect to PyPI (its files then come from PyPI as usual). The Dockerfile's
`pip install --index-url "$TORCH_INDEX" torch==...` thus gets the CPU wheel from this disk and
torch's small dependencies from PyPI.

    python3 torch-index.py WHEEL_DIR PORT [UPSTREAM]    # serves on 127.0.0.1:PORT
"""

from __future__ import annotations

import html
import re
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

UPSTREAM = "https://pypi.org/simple"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Handler(SimpleHTTPRequestHandler):
    def __init__(self, *args, wheels: Path, upstream: str, **kwargs):  # type: ignore[no-untyped-def]
        self.wheels = wheels
        self.upstream = upstream
        super().__init__(*args, directory=str(wheels), **kwargs)

    def local_files(self, project: str) -> list[Path]:
        return sorted(
            p for p in self.wheels.iterdir()
            if p.suffix == ".whl" and normalize(p.name.split("-")[0]) == project
        )  # fmt: skip

    def do_GET(self) -> None:
        path = unquote(self.path.split("?")[0])
        parts = [p for p in path.split("/") if p]
        if len(parts) == 2 and parts[0] == "simple":
            project = normalize(parts[1])
            files = self.local_files(project)
            if not files:
                self.send_response(302)
                self.send_header("Location", f"{self.upstream}/{project}/")
                self.end_headers()
                return
            links = "".join(
                f'<a href="/files/{quote(f.name)}">{html.escape(f.name)}</a><br>\n' for f in files
            )
            body = f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if len(parts) == 2 and parts[0] == "files":
            self.path = "/" + quote(parts[1])
            super().do_GET()
            return
        self.send_error(404)

    def do_HEAD(self) -> None:
        self.send_error(405)

    def log_message(self, format: str, *args) -> None:  # type: ignore[no-untyped-def]
        sys.stderr.write("torch-index: " + format % args + "\n")


def main() -> None:
    wheels, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    upstream = (sys.argv[3] if len(sys.argv) > 3 else UPSTREAM).rstrip("/")
    handler = partial(Handler, wheels=wheels, upstream=upstream)
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


if __name__ == "__main__":
    main()
