"""Alembic: upgrade, downgrade and upgrade again on empty SQLite and Postgres databases, and
a migration on a database that already holds rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import inspect

from service import db
from service.repository import candidate_read
from service.schemas import SearchCreate
from service.tables import CandidateRow, Checkpoint, Search

TABLES = {
    "searches",
    "generations",
    "candidates",
    "checkpoints",
    "search_genomes",
    "runners",
    "measurements",
}


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    db.upgrade(url)
    assert _tables(url) == TABLES
    command.check(db.alembic_config(url))  # the models and the migrations agree
    db.downgrade(url)
    assert _tables(url) == set()
    db.upgrade(url)
    assert _tables(url) == TABLES


def test_sqlite_upgrade_downgrade_upgrade(tmp_path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_downgrade_upgrade(fresh_pg_url) -> None:
    _round_trip(fresh_pg_url)


def _columns_of(table: sa.Table, *skip: str) -> sa.TableClause:
    """A table's columns, with their types, less `skip` (those a revision had not added yet)."""
    return sa.table(table.name, *(sa.column(c.name, c.type) for c in table.c if c.name not in skip))


def _search_row(sid: uuid.UUID, request: dict, status: str, generations_done: int = 0) -> dict:
    """A searches row of model "m" with one generation in all (done or not), as the oldest
    revisions' columns hold it."""
    done = generations_done
    return {
        "id": sid,
        "model": "m",
        "request": request,
        "request_hash": sid.hex,
        "status": status,
        "total_generations": 1,
        "generations_done": done,
        "evaluations": done,
        "elapsed_s": 0.0,
        "attempts": done,
        "cancel_requested": False,
        "created_at": datetime.now(UTC),
    }


def _layer_sparsity_on_existing_rows(url: str) -> None:
    """0004 on a database holding a front: old rows read as per-block, new ones keep theirs."""
    db.upgrade(url, "0003")
    sid, cid = uuid.uuid4(), uuid.uuid4()
    genome = {"f1": "identity", "f2": "identity", "alpha": "one", "beta": "one", "index": 0}
    candidates = _columns_of(CandidateRow.__table__, "layer_sparsity")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                _columns_of(Search.__table__)
                .insert()
                .values(_search_row(sid, {"model": "m"}, "succeeded", generations_done=1))
            )
            conn.execute(
                candidates.insert().values(
                    id=cid,
                    search_id=sid,
                    generation=None,
                    key="0-uniform",
                    rank=0,
                    genome={**genome, "formula": "|W|"},
                    ratios=[0.5, 0.5],
                    error=0.25,
                    sparsity=0.5,
                    gap=0.0,
                    meets_target=True,
                    n_samples=2,
                    recommended=True,
                )
            )
        db.upgrade(url)
        command.check(db.alembic_config(url))
        with db.make_sessions(engine, write=True).begin() as session:
            old = session.get_one(CandidateRow, cid)
            assert old.layer_sparsity is None
            assert candidate_read(old).layer_sparsity == []  # the blocks decide
            old.layer_sparsity = [0.25, 0.75]
        with db.make_sessions(engine)() as session:
            assert session.get_one(CandidateRow, cid).layer_sparsity == [0.25, 0.75]
        db.downgrade(url, "0003")  # the column goes, the row stays
        columns = {c["name"] for c in inspect(engine).get_columns("candidates")}
        assert "layer_sparsity" not in columns
        with engine.connect() as conn:
            assert conn.execute(sa.select(candidates.c.key)).scalars().all() == ["0-uniform"]
    finally:
        engine.dispose()


def test_sqlite_layer_sparsity_migration_keeps_existing_candidates(tmp_path) -> None:
    _layer_sparsity_on_existing_rows(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_postgres_layer_sparsity_migration_keeps_existing_candidates(fresh_pg_url) -> None:
    _layer_sparsity_on_existing_rows(fresh_pg_url)


def _owners_on_existing_rows(url: str) -> None:
    """0006 on a database holding a search with duplicate exports (concurrent requests could
    make them): every row survives, the search is the open owner's, one export stays live."""
    db.upgrade(url, "0005")
    sid, cid = uuid.uuid4(), uuid.uuid4()
    ck = [uuid.uuid4() for _ in range(3)]
    now = datetime.now(UTC)
    searches = _columns_of(Search.__table__, "owner")  # owner came with 0006
    candidates = _columns_of(CandidateRow.__table__)
    checkpoints = _columns_of(Checkpoint.__table__)
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            row = _search_row(sid, {"model": "m"}, "succeeded", generations_done=1)
            conn.execute(searches.insert().values(**row, idempotency_key="k"))
            conn.execute(
                candidates.insert().values(
                    id=cid,
                    search_id=sid,
                    generation=None,
                    key="0-uniform",
                    rank=0,
                    genome={"index": 0},
                    ratios=[0.5],
                    layer_sparsity=None,
                    error=0.1,
                    sparsity=0.5,
                    gap=0.0,
                    meets_target=True,
                    n_samples=2,
                    recommended=True,
                )
            )
            for i, (ident, status) in enumerate(
                zip(ck, ("queued", "succeeded", "succeeded"), strict=True)
            ):
                conn.execute(
                    checkpoints.insert().values(
                        id=ident,
                        search_id=sid,
                        candidate_id=cid,
                        status=status,
                        attempts=1,
                        created_at=now + timedelta(seconds=i),
                    )
                )
        db.upgrade(url)
        command.check(db.alembic_config(url))
        with engine.connect() as conn:
            assert conn.execute(sa.select(Search.__table__.c.owner)).scalars().all() == [""]
            assert conn.execute(sa.select(candidates.c.id)).scalars().all() == [cid]
            status = dict(conn.execute(sa.select(checkpoints.c.id, checkpoints.c.status)).all())
        # The first succeeded one stays; the others are kept as cancelled duplicates.
        assert status == {ck[0]: "cancelled", ck[1]: "succeeded", ck[2]: "cancelled"}
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(
                checkpoints.insert().values(
                    id=uuid.uuid4(),
                    search_id=sid,
                    candidate_id=cid,
                    status="queued",
                    attempts=0,
                    created_at=now,
                )
            )
        db.downgrade(url, "0005")
        with engine.connect() as conn:
            assert conn.execute(sa.select(candidates.c.id)).scalars().all() == [cid]
    finally:
        engine.dispose()


def test_sqlite_owners_migration_keeps_rows_and_dedupes_exports(tmp_path) -> None:
    _owners_on_existing_rows(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_postgres_owners_migration_keeps_rows_and_dedupes_exports(fresh_pg_url) -> None:
    _owners_on_existing_rows(fresh_pg_url)


def _requests_say_how_they_ran(url: str) -> None:
    """0010: requests stored before validation sequences and fallback baselines now say that
    they ran without them; requests that name them keep theirs."""
    db.upgrade(url, "0009")
    old = SearchCreate(model="m").model_dump(mode="json")
    del old["calibration"]["validation_share"], old["fallback_baselines"]
    new = SearchCreate(model="m", calibration={"validation_share": 0.25}).model_dump(mode="json")
    searches = _columns_of(Search.__table__)
    engine = db.make_engine(url)
    ids = [uuid.uuid4(), uuid.uuid4()]
    try:
        with engine.begin() as conn:
            for sid, request in zip(ids, (old, new), strict=True):
                conn.execute(searches.insert().values(_search_row(sid, request, "queued")))
        db.upgrade(url)
        with db.make_sessions(engine)() as session:
            before, after = (
                SearchCreate.model_validate(session.get_one(Search, i).request) for i in ids
            )
        assert before.calibration.validation_share == 0.0
        assert before.fallback_baselines is False
        assert after.calibration.validation_share == 0.25
        assert after.fallback_baselines is True
    finally:
        engine.dispose()


def test_sqlite_requests_say_how_they_ran(tmp_path) -> None:
    _requests_say_how_they_ran(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_requests_say_how_they_ran(fresh_pg_url) -> None:
    _requests_say_how_they_ran(fresh_pg_url)
