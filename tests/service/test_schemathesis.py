"""Schemathesis over the live API: `--checks all`, every phase (stateful included), open on
SQLite and with keys on Postgres (each run takes about a minute here). Zero server errors
and zero contract violations, or the test fails with schemathesis's report. Examples are
bounded (and the seed fixed) for CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import LiveServer

from service import db
from service.settings import ServiceSettings
from service.tables import RunnerRow

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 25
KEY = "fuzz-key"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "keys"),
    [("sqlite", ()), pytest.param("postgres", (KEY,), marks=pytest.mark.postgres)],
    ids=["open-sqlite", "keys-postgres"],
)
def test_schemathesis_all_checks_all_phases(request, tmp_path, backend, keys) -> None:
    url = (
        f"sqlite:///{tmp_path / 'fuzz.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_pg_url")
    )
    # A heartbeat that stays fresh all along, so /readyz answers 200: its 503 means "no
    # runner", and no runner may work the searches the fuzzer queues (one could name a real
    # model).
    settings = ServiceSettings(
        database_url=url,
        checkpoint_dir=tmp_path / "checkpoints",
        api_keys=keys,
        heartbeat_seconds=3600.0,
    )
    server = LiveServer(settings).start()
    try:
        engine = db.make_engine(settings.resolved_database_url())
        with db.make_sessions(engine, write=True).begin() as session:
            session.merge(RunnerRow(id="fuzz-probe", hostname="fuzz", pid=0))
        engine.dispose()
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            *(["--header", f"X-API-Key: {KEY}"] if keys else []),
        ]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated, report[-3000:]
    assert generated.group(1) == generated.group(2)
    assert re.search(r"✅\s+Stateful", report), report[-3000:]
