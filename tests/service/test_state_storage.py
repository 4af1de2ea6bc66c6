"""Stored search states: plain JSON only, refused clearly when damaged or pickled, never run."""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import update

from optishear.search.evaluator import InProcessEvaluator
from service import db
from service.tables import Generation, JobStatus, Search


def _set_state(settings, search_id: str, state: bytes) -> None:
    engine = db.make_engine(settings.resolved_database_url())
    try:
        with db.make_sessions(engine, write=True).begin() as session:
            session.execute(
                update(Search).where(Search.id == uuid.UUID(search_id)).values(state=state)
            )
    finally:
        engine.dispose()


class _Exploding:
    """A pickle payload that would leave a trace if anything unpickled it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("PWNED: a stored state was unpickled",))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (b"{not json", "is not a search state"),
        (b'{"format": "something else", "version": 1}', "is not an OptiShear search state"),
        (b'{"format": "optishear.search-state", "version": 99}', "state format version 99"),
        (pickle.dumps(_Exploding()), "old pickle format"),
    ],
)
def test_a_bad_stored_state_fails_the_search_with_its_reason_and_runs_nothing(
    client, search_body, settings, thread_runner, poll, monkeypatch, capsys, state, message
) -> None:
    sid = client.post("/api/searches", json=search_body()).json()["id"]
    _set_state(settings, sid, state)
    evaluated: list[int] = []
    original = InProcessEvaluator.evaluate

    def counting(self, candidates, n_samples=None):  # type: ignore[no-untyped-def]
        evaluated.append(len(candidates))
        return original(self, candidates, n_samples)

    monkeypatch.setattr(InProcessEvaluator, "evaluate", counting)
    with thread_runner():
        done = poll(client, f"/api/searches/{sid}")
    assert done["status"] == "failed"
    assert message in done["error"]
    assert evaluated == []  # refused before any candidate was evaluated
    assert "PWNED" not in capsys.readouterr().out


def test_migration_fails_unfinished_searches_saved_as_pickles(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url, "0002")
    engine = db.make_engine(url)
    now = datetime.now(UTC)
    rows = {
        "pickled": (JobStatus.QUEUED, pickle.dumps({"any": "state"})),
        "json": (JobStatus.RUNNING, b'{"format": "optishear.search-state"}'),
        "finished": (JobStatus.SUCCEEDED, pickle.dumps({"any": "state"})),
    }
    ids = {name: uuid.uuid4() for name in rows}
    # The table as it was then: `owner` came with revision 0006.
    before_owners = sa.table(
        "searches", *(sa.column(c.name, c.type) for c in Search.__table__.c if c.name != "owner")
    )
    try:
        with engine.begin() as conn:
            for name, (status, state) in rows.items():
                conn.execute(
                    before_owners.insert().values(
                        id=ids[name],
                        model="m",
                        request={},
                        request_hash="h",
                        total_generations=1,
                        status=status,
                        generations_done=1,
                        evaluations=1,
                        elapsed_s=0.0,
                        attempts=1,
                        cancel_requested=False,
                        created_at=now,
                        state=state,
                    )
                )
        db.upgrade(url)
        with engine.connect() as conn:
            got = {r.id: (r.status, r.error) for r in conn.execute(Search.__table__.select()).all()}
    finally:
        engine.dispose()
    status, error = got[ids["pickled"]]
    assert status == JobStatus.FAILED
    assert "old pickle state format" in error
    assert got[ids["json"]] == (JobStatus.RUNNING, None)  # a JSON state is resumed as it is
    assert got[ids["finished"]] == (JobStatus.SUCCEEDED, None)


def test_the_api_imports_no_torch() -> None:
    code = (
        "import sys, service.app; "
        "heavy = [m for m in ('torch', 'transformers', 'pymoo', 'ray') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_results_stored_before_the_one_schema_are_still_served(client, settings) -> None:
    """Rows written by the previous release (flat baselines and populations) read as today's."""
    sid = uuid.uuid4()
    genome = {"f1": "identity", "f2": "identity", "alpha": "one", "beta": "one", "index": 0}
    genome["formula"] = "|W| * sqrt(X)"
    flat = {"key": "0-uniform", "genome": genome, "ratios": [0.5, 0.5], "error": 0.25}
    legacy_result = {
        "recommended_id": str(uuid.uuid4()),
        "recommended_key": "0-uniform",
        "evaluations": 4,
        "cache_hits": 1,
        "search_seconds": 2.0,
        "persist_seconds": 0.1,
        "attempt_seconds": 3.0,
        "stages": [{"stage": "metric", "front_size": 1}],
        "refitted": [{"key": "0-uniform", "error": 0.2, "sparsity": 0.5}],
        "rescored": [],
        "baselines": [{**flat, "name": "Wanda", "sparsity": 0.5, "gap": 0.0}],
    }
    member = {"sparsity": 0.5, "gap": 0.0, "meets_target": True, "n_samples": 2}
    engine = db.make_engine(settings.resolved_database_url())
    try:
        with db.make_sessions(engine, write=True).begin() as session:
            session.add(
                Search(
                    id=sid,
                    model="m",
                    request={"model": "m", "sparsity": None, "population": 4, "generations": 1},
                    request_hash="h",
                    total_generations=1,
                    status=JobStatus.SUCCEEDED,
                    generations_done=1,
                    evaluations=4,
                    elapsed_s=1.0,
                    attempts=1,
                    cancel_requested=False,
                    created_at=datetime.now(UTC),
                    result=legacy_result,
                )
            )
            session.flush()  # the search row first: the generation refers to it
            session.add(
                Generation(
                    search_id=sid,
                    number=1,
                    stage="metric",
                    stage_generation=1,
                    evaluations=4,
                    total_evaluations=4,
                    best_error=0.25,
                    seconds=1.0,
                    elapsed_s=1.0,
                    population=[
                        {
                            **flat,
                            "sparsity": 0.5,
                            "gap": 0.0,
                            "meets_target": True,
                            "n_samples": 2,
                            "on_front": True,
                        }
                    ],
                )
            )
    finally:
        engine.dispose()
    search = client.get(f"/api/searches/{sid}")
    assert search.status_code == 200, search.text
    assert search.json()["request"]["sparsity"] == 0.5  # the default rule, applied on read
    result = search.json()["result"]
    assert result["refitted"] == []  # kept only key and error then: not a scored candidate
    [wanda] = result["baselines"]
    assert wanda["name"] == "Wanda"
    assert wanda["objectives"] == {"error": 0.25, "gap": 0.0}
    assert wanda["block_sparsity"] == [0.5, 0.5]
    assert wanda["layer_sparsity"] == []  # written before the allocation stage
    front = client.get(f"/api/searches/{sid}/front").json()
    assert front["baselines"] == [wanda]
    [member] = client.get(f"/api/searches/{sid}/candidates").json()["candidates"]
    assert member["objectives"]["error"] == 0.25
    assert member["on_front"] is True
    assert member["layer_sparsity"] == []
