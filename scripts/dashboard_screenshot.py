"""The README's dashboard screenshot, from a real finished search (after `make demo`).

Starts `optishear serve` on the configured database (the demo's SQLite file by default), finds
the newest succeeded search and its recommended export, measures that checkpoint on the
offline local lm-eval task when it has no task measurement yet (the server's embedded runner
does it), then opens the dashboard in Debian's headless Chromium and saves a full-page
screenshot with the held-out comparison and the task accuracies in view.

  .venv/bin/python scripts/dashboard_screenshot.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "data" / "lm_eval_tasks"
CHROMIUM = "/usr/bin/chromium"


def wait(client: httpx.Client, url: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if body["status"] not in ("queued", "running"):
            return body
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not finished after {timeout:.0f} s")
        time.sleep(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tasks", default="optishear_cloze")
    args = p.parse_args()
    env = {**os.environ, "OPTISHEAR_TASK_PATH": str(TASKS), "OPTISHEAR_MEASURE_DEVICE": "cpu"}
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "optishear", "serve", "--port", str(args.port)], env=env
    )
    try:
        client = httpx.Client(base_url=base, timeout=30)
        for _ in range(120):
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        searches = client.get("/api/searches", params={"status": "succeeded"}).json()["items"]
        if not searches:
            raise SystemExit("no succeeded search in this database: run `make demo` first")
        search = searches[0]
        checkpoints = [
            c for c in client.get(f"/api/searches/{search['id']}/checkpoints").json()
            if c["status"] == "succeeded"
        ]  # fmt: skip
        if not checkpoints:
            raise SystemExit(f"search {search['id']} has no succeeded export")
        ck = checkpoints[-1]
        url = f"/api/checkpoints/{ck['id']}/measurements"
        done = [m for m in client.get(url).json() if m["kind"] == "tasks"]
        if not any(m["status"] == "succeeded" for m in done):
            m = client.post(url, json={"kind": "tasks", "tasks": args.tasks.split(",")}).json()
            m = wait(client, f"/api/measurements/{m['id']}")
            if m["status"] != "succeeded":
                raise SystemExit(f"task measurement {m['status']}: {m['error']}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/#/search/{search['id']}")
            page.locator("#heldout").wait_for()
            page.locator('.measurement[data-kind="tasks"] .badge').first.wait_for()
            page.wait_for_timeout(500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"screenshot of search {search['id']} (checkpoint {ck['id']}) in {args.out}")  # noqa: T201
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
