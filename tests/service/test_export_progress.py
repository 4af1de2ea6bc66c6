"""An export's progress (blocks pruned and refit, stage, ETA) reaches the API while it runs."""

from __future__ import annotations

import time
import uuid

from seeding import seed_front_search
from sqlalchemy import select

from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from service import db
from service.runner import QueueRunner
from service.runner.export_job import ExportProgressWriter
from service.tables import Checkpoint, JobStatus


def test_progress_is_stored_paced_and_shown_while_running(client, settings) -> None:
    front = [Scored(Candidate(Genome.from_index(0), (0.5, 0.5)), Evaluation(0.1, 0.5, 4, 0.1), 0.0)]
    _sid, _rows = seed_front_search(
        settings, front, checkpoints=[(0, JobStatus.RUNNING, None, None)]
    )
    engine = db.make_engine(settings.resolved_database_url())
    runner = QueueRunner(settings, db.make_sessions(engine), runner_id="progress-test")
    with runner.sessions.begin() as session:
        ckpt = session.scalars(select(Checkpoint)).one()
        ckpt.lease_owner = runner.id
        ckpt_id = ckpt.id
    url = f"/api/checkpoints/{ckpt_id}"
    assert client.get(url).json()["progress"] is None  # nothing reported yet

    write = ExportProgressWriter(runner, ckpt_id, " + refit", every=0.0)
    write(1, 4, "pruning with meta")
    shown = client.get(url).json()["progress"]
    assert shown == {"stage": "pruning with meta + refit", "done": 1, "total": 4, "eta_s": None}
    time.sleep(0.05)
    write(3, 4, "pruning with meta")
    shown = client.get(url).json()["progress"]
    assert (shown["done"], shown["total"]) == (3, 4)
    assert 0 < shown["eta_s"] < 1  # one more block at the pace of the last two

    # Paced: a report within `every` seconds of the last is not written, the last step is.
    paced = ExportProgressWriter(runner, ckpt_id, every=60.0)
    paced(1, 30, "pruning with wanda")
    paced(2, 30, "pruning with wanda")
    assert client.get(url).json()["progress"]["done"] == 1
    paced(30, 30, "pruning with wanda")
    assert client.get(url).json()["progress"]["done"] == 30

    # Another runner's job is never written; and a finished export shows no progress.
    stranger = ExportProgressWriter(
        QueueRunner(settings, db.make_sessions(engine), runner_id="other"), ckpt_id, every=0.0
    )
    stranger(5, 30, "pruning with wanda")
    assert client.get(url).json()["progress"]["done"] == 30
    with runner.sessions.begin() as session:
        session.get_one(Checkpoint, ckpt_id).status = JobStatus.SUCCEEDED
    assert client.get(url).json()["progress"] is None
    engine.dispose()


def test_a_real_export_reports_every_block(client, search_body, thread_runner, poll) -> None:
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    with thread_runner():
        assert poll(client, f"/api/searches/{sid}")["status"] == "succeeded"
        ck = client.post(f"/api/searches/{sid}/checkpoints").json()
        assert poll(client, f"/api/checkpoints/{ck['id']}")["status"] == "succeeded"
    engine = db.make_engine(client.app.state.settings.resolved_database_url())
    with db.make_sessions(engine)() as session:
        row = session.get_one(Checkpoint, uuid.UUID(ck["id"]))
        # the tiny model's two blocks, the last one always written
        assert (row.progress_done, row.progress_total) == (2, 2)
        assert row.progress_stage.startswith("pruning")
    engine.dispose()
