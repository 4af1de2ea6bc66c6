"""Service latency under concurrent clients while a search runs, and its persistence share.

Starts the API (`optishear serve --runner no`) and one runner (`optishear worker`) as
separate processes on loopback, submits one search, and while the runner works on it:
N concurrent clients poll GET /api/searches/{id} for --seconds (status-poll latency) while,
at the same time, N other clients each submit --submits searches (submit latency; those are
cancelled afterwards, so the runner never starts them). `--submits 0`: pollers alone;
`--interval S`: each poller waits S seconds between its polls (0: back to back);
`--runner-nice N`: the runner's OPTISHEAR_RUNNER_NICE; `--status-cache S`: the API's
OPTISHEAR_STATUS_CACHE_SECONDS (0: every poll reads the database); `--poller wrk`: the pollers are wrk's
connections instead of Python coroutines (which share the cores and queue on their own loop).
When the search ends, the share of its time spent persisting is read from its result: the
seconds inside the per-generation DB transaction (generation row, front, serialized search
state) over the runner's wall time for the search.

    .venv/bin/python bench/service_bench.py --backend postgres --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import build_tiny, tiny_tokenizer, word_text

from service import db

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _summary(ms: list[float], seconds: float) -> dict[str, Any]:
    return {
        "requests": len(ms),
        "p50_ms": round(_pct(ms, 50), 2),
        "p99_ms": round(_pct(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
        "requests_per_s": round(len(ms) / seconds, 1),
    }


async def _poll_load(
    base: str, sid: str, clients: int, seconds: float, interval: float = 0.0
) -> dict[str, Any]:
    """`clients` pollers; each waits `interval` s between its polls (0: back to back)."""
    ms: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one(client: httpx.AsyncClient, c: int) -> None:
        nonlocal errors
        await asyncio.sleep(interval * c / clients)  # spread the paced pollers out
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await client.get(f"/api/searches/{sid}")
            ms.append((time.perf_counter() - t) * 1000)
            errors += r.status_code != 200
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(one(client, c) for c in range(clients)))
    return {**_summary(ms, time.perf_counter() - start), "errors": errors}


async def _submit_load(
    base: str, body: dict[str, Any], clients: int, per_client: int
) -> tuple[dict[str, Any], list[str]]:
    ms: list[float] = []
    ids: list[str] = []
    errors = 0

    async def one(client: httpx.AsyncClient, c: int) -> None:
        nonlocal errors
        for i in range(per_client):
            payload = {**body, "seed": 1000 + c * per_client + i}
            t = time.perf_counter()
            r = await client.post(
                "/api/searches", json=payload, headers={"Idempotency-Key": uuid.uuid4().hex}
            )
            ms.append((time.perf_counter() - t) * 1000)
            if r.status_code == 201:
                ids.append(r.json()["id"])
            else:
                errors += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(one(client, c) for c in range(clients)))
    return {**_summary(ms, time.perf_counter() - start), "errors": errors}, ids


_WRK_LINE = re.compile(r"^\s*(50|99)%\s+([0-9.]+)(us|ms|s)\s*$")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_polls(base: str, sid: str, clients: int, seconds: float) -> dict[str, Any]:
    """The same back-to-back polls from wrk (C, one thread, `clients` connections): the
    server's latency without a Python load generator's own queueing on the shared cores."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{seconds:g}s",
            "--latency",
            f"{base}/api/searches/{sid}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct = {
        m[1]: float(m[2]) * _UNIT_MS[m[3]]
        for line in out.splitlines()
        if (m := _WRK_LINE.match(line))
    }
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": total,
        "p50_ms": round(pct["50"], 2),
        "p99_ms": round(pct["99"], 2),
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), 1),
        "errors": int(errors.group(1)) if errors else 0,
        "load": "wrk",
    }


async def _load(
    base: str, sid: str, body: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, Any], tuple[dict[str, Any], list[str]]]:
    """Pollers and submitters at the same time, N clients each."""
    if not args.submits and args.poller == "wrk":
        return _wrk_polls(base, sid, args.clients, args.seconds), ({}, [])
    if not args.submits:  # pollers alone
        polls = await _poll_load(base, sid, args.clients, args.seconds, args.interval)
        return polls, ({}, [])
    return await asyncio.gather(
        _poll_load(base, sid, args.clients, args.seconds),
        _submit_load(base, body, args.clients, args.submits),
    )


def _tiny_model(root: Path, hidden: int, layers: int) -> None:
    build_tiny("llama", hidden=hidden, layers=layers).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(word_text(20000, seed=1))
    (root / "eval.txt").write_text(word_text(5000, seed=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="status-poll phase")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after the claim")
    p.add_argument(
        "--interval", type=float, default=0.0, help="seconds between a poller's polls (0: none)"
    )
    p.add_argument("--submits", type=int, default=10, help="submits per client (0: polls only)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=64)
    p.add_argument(
        "--runner-nice", type=int, default=None, help="OPTISHEAR_RUNNER_NICE of the runner"
    )
    p.add_argument(
        "--poller",
        choices=("httpx", "wrk"),
        default="httpx",
        help="the status pollers: Python coroutines (httpx) or wrk (Debian's package)",
    )
    p.add_argument(
        "--status-cache",
        type=float,
        default=None,
        help="OPTISHEAR_STATUS_CACHE_SECONDS of the API (default: the API's default)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="optishear-bench-"))
    _tiny_model(tmp, args.hidden, args.layers)
    admin = None
    if args.backend == "postgres":
        name = f"optishear_bench_{uuid.uuid4().hex[:10]}"
        admin = db.make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    env = {
        **os.environ,
        "OPTISHEAR_DATABASE_URL": url,
        "OPTISHEAR_CACHE": str(tmp / "cache"),
        "OPTISHEAR_CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "OPTISHEAR_DATA_ROOTS": str(tmp),  # the tiny model and texts
    }
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "optishear.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    cache = (
        {}
        if args.status_cache is None
        else {"OPTISHEAR_STATUS_CACHE_SECONDS": str(args.status_cache)}
    )
    api = subprocess.Popen(
        [*cli, "serve", "--runner", "no", "--port", str(port)],
        env=env | cache,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nice = {} if args.runner_nice is None else {"OPTISHEAR_RUNNER_NICE": str(args.runner_nice)}
    worker = subprocess.Popen(
        [*cli, "worker"], env=env | nice, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        body = {
            "model": str(tmp / "model"),
            "population": args.population,
            "generations": args.generations,
            "stages": "both",
            "calibration": {
                "source": str(tmp / "calib.txt"),
                "n_samples": args.nsamples,
                "seq_len": args.seqlen,
            },
            "evaluation": {"text": str(tmp / "eval.txt"), "seq_len": 64, "windows": 8},
        }
        sid = httpx.post(f"{base}/api/searches", json=body).json()["id"]
        # From the moment a runner works on it (the opening screen included, which stores no
        # generation row until its first rung ends), plus the model's loading.
        while httpx.get(f"{base}/api/searches/{sid}").json()["status"] != "running":
            time.sleep(0.1)
        time.sleep(args.warmup)
        polls, (submits, ids) = asyncio.run(_load(base, sid, body, args))
        mid = httpx.get(f"{base}/api/searches/{sid}").json()
        for queued in ids:
            httpx.post(f"{base}/api/searches/{queued}/cancel")
        while (done := httpx.get(f"{base}/api/searches/{sid}").json())["status"] in (
            "queued",
            "running",
        ):
            time.sleep(0.2)
        gens = httpx.get(f"{base}/api/searches/{sid}/generations").json()
    finally:
        for proc in (worker, api):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker, api):
            proc.wait(timeout=120)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    result = done["result"] or {}
    report = {
        "backend": args.backend,
        "clients": args.clients,
        "runner_nice": args.runner_nice,
        "poll_interval_s": args.interval,
        "poller": args.poller,
        "status_cache_s": args.status_cache,
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "search": {
            "status": done["status"],
            "generations": len(gens),
            "search_seconds": round(result.get("attempt_seconds", 0.0), 2),
            "persist_seconds": round(result.get("persist_seconds", 0.0), 4),
            "persist_share": round(
                result.get("persist_seconds", 0.0) / max(result.get("attempt_seconds", 1.0), 1e-9),
                4,
            ),
            "still_running_after_the_load": mid["status"] == "running",
        },
        "status_polls": polls,
        "submits": submits,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
