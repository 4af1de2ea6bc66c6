"""The housekeeping migration (0008) on SQLite and Postgres, and `optishear store` (list, delete,
sweep, stats, measure) end to end."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import inspect
from store_checks import (
    dispose_engines,
    seed_exports,
    set_row,
    store_dir,
    store_files,
)

from service import db
from service.commands import main as service_main
from service.settings import get_settings
from service.tables import (
    CandidateRow,
    Checkpoint,
    JobStatus,
    Search,
)


@pytest.fixture(autouse=True)
def _engines():
    yield
    dispose_engines()


def _housekeeping_migration(url: str) -> None:
    db.upgrade(url, "0007")
    engine = db.make_engine(url)
    try:
        cols = {c["name"] for c in inspect(engine).get_columns("checkpoints")}
        assert "deleting_at" not in cols
        db.upgrade(url)
        command.check(db.alembic_config(url))
        inspector = inspect(engine)
        assert "deleting_at" in {c["name"] for c in inspector.get_columns("searches")}
        assert {"deleting_at", "compact_bytes", "compact_sha256"} <= {
            c["name"] for c in inspector.get_columns("checkpoints")
        }
        # A checkpoint being deleted no longer holds its candidate's one live export.
        sid, cid = uuid.uuid4(), uuid.uuid4()
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(
                sa.insert(Search.__table__).values(
                    id=sid, owner="", model="m", request={}, request_hash="h", status="succeeded",
                    total_generations=1, generations_done=1, evaluations=1, elapsed_s=0.0,
                    attempts=1, cancel_requested=False, created_at=now,
                )
            )  # fmt: skip
            conn.execute(
                sa.insert(CandidateRow.__table__).values(
                    id=cid, search_id=sid, generation=None, key="0-u", rank=0, genome={},
                    ratios=[0.5], error=0.1, sparsity=0.5, gap=0.0, meets_target=True,
                    n_samples=1, recommended=True,
                )
            )  # fmt: skip
            for deleting in (now, None):
                conn.execute(
                    sa.insert(Checkpoint.__table__).values(
                        id=uuid.uuid4(), search_id=sid, candidate_id=cid, status="succeeded",
                        attempts=1, created_at=now, deleting_at=deleting,
                    )
                )  # fmt: skip
        with pytest.raises(RuntimeError, match="optishear store sweep"):
            db.downgrade(url, "0007")  # a row still marked would come back as it was
        with engine.begin() as conn:
            conn.execute(sa.delete(Checkpoint.__table__).where(Checkpoint.deleting_at.is_not(None)))
        db.downgrade(url, "0007")
        assert "deleting_at" not in {c["name"] for c in inspect(engine).get_columns("checkpoints")}
        with engine.connect() as conn:  # the row survives the round trip
            assert conn.execute(sa.text("SELECT count(*) FROM checkpoints")).scalar_one() == 1
        db.upgrade(url)
        command.check(db.alembic_config(url))
    finally:
        engine.dispose()


def test_sqlite_housekeeping_migration(tmp_path) -> None:
    _housekeeping_migration(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_housekeeping_migration(fresh_pg_url) -> None:
    _housekeeping_migration(fresh_pg_url)


# -- optishear store ----------------------------------------------------------------------------
@pytest.fixture
def store_env(monkeypatch, settings):
    monkeypatch.setenv("OPTISHEAR_DATABASE_URL", settings.resolved_database_url())
    monkeypatch.setenv("OPTISHEAR_CHECKPOINT_DIR", str(settings.checkpoint_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_store_command_lists_deletes_sweeps_and_measures(store_env, capsys) -> None:
    settings = store_env
    sid, (ck, _ck2) = seed_exports(settings, ["succeeded", "succeeded"])
    other_sid, (other,) = seed_exports(settings, ["succeeded"])
    size = (store_dir(settings) / f"{ck}.tar").stat().st_size

    assert service_main(["store", "list"]) == 0
    out = capsys.readouterr().out
    assert f"search {sid}  succeeded" in out
    assert f"checkpoint {ck}  succeeded  {size / 1e6:.1f} MB" in out
    assert "2 searches, 3 checkpoints" in out

    assert service_main(["store", "delete-checkpoint", str(ck)]) == 0
    assert f"deleted checkpoint {ck}: 1 checkpoint, 1 file, " in capsys.readouterr().out
    assert not (store_dir(settings) / f"{ck}.tar").exists()
    assert service_main(["store", "delete-search", str(sid)]) == 0
    assert f"deleted search {sid}: 1 checkpoint, 1 file" in capsys.readouterr().out
    assert store_files(settings) == {f"{other}.tar"}

    # Unknown ids, bad ids and running jobs: one line on stderr, exit 2, nothing deleted.
    set_row(settings, Checkpoint, other, status=JobStatus.RUNNING)
    for argv, message in (
        (["delete-search", str(sid)], f"search {sid} not found"),
        (["delete-checkpoint", str(uuid.uuid4())], "not found"),
        (["delete-checkpoint", "nope"], "'nope' is not a checkpoint id"),
        (["delete-checkpoint", str(other)], "wait for the export to finish"),
        (["delete-search", str(other_sid)], "export in progress"),
    ):
        assert service_main(["store", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err, captured.err
        assert "Traceback" not in captured.err
    assert store_files(settings) == {f"{other}.tar"}
    set_row(settings, Checkpoint, other, status=JobStatus.SUCCEEDED)

    orphan = store_dir(settings) / f"{uuid.uuid4()}.tar"
    orphan.write_bytes(b"x" * 10)
    assert service_main(["store", "sweep"]) == 0
    assert "orphan files removed: 1" in capsys.readouterr().out
    assert not orphan.exists()

    assert service_main(["store", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["store"]["archives"] == 1
    assert stats["searches"]["succeeded"] == 1
    assert service_main(["store", "stats"]) == 0
    text = capsys.readouterr().out
    assert "retention    off" in text
    assert "checkpoints  queued 0, running 0, succeeded 1" in text
