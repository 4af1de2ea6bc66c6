"""The dashboard says what a running search does inside a step, as the runner wrote it."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import update

from service import db
from service.tables import JobStatus, Search

pytestmark = pytest.mark.browser

# What service.runner.search_job's activity writer stores during a layer-wise rung.
ACTIVITY = {
    "what": "stage metric, screen rung 1/2: scoring 324 candidates (layer-wise proxy)",
    "done": 128,
    "total": 324,
    "best_error": 0.025678,
    "elapsed_s": 9.0,
    "eta_s": 14.2,
    "at": "2026-12-07T02:40:00Z",
}


def test_a_running_search_shows_its_activity_and_a_finished_one_does_not(
    make_service, page, expect, tiny_model_dir
) -> None:
    server = make_service(runner=False)  # nobody runs it: the row says what the runner would
    with httpx.Client(base_url=server.url, timeout=30) as api:
        body = {"model": str(tiny_model_dir / "model"), "stages": "metric", "population": 4}
        sid = api.post("/api/searches", json=body).json()["id"]
    engine = db.make_engine(server.settings.resolved_database_url())
    try:

        def set_row(**values) -> None:
            with engine.begin() as conn:
                conn.execute(update(Search).where(Search.id == uuid.UUID(sid)).values(**values))

        set_row(status=JobStatus.RUNNING, activity=ACTIVITY)
        page.goto(f"{server.url}/#/search/{sid}")
        line = page.locator("#d-activity")
        expect(line).to_have_text(
            "stage metric, screen rung 1/2: scoring 324 candidates (layer-wise proxy): "
            "128 of 324 done, best error 0.02568, about 14 s left"
        )
        expect(line.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "128")
        set_row(status=JobStatus.CANCELLED)  # over: what it did last is no longer shown
        expect(page.locator("#d-head .badge")).to_have_text("cancelled", timeout=10_000)
        expect(line).to_have_count(0)
    finally:
        engine.dispose()
