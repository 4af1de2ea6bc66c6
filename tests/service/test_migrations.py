"""Alembic: upgrade, downgrade and upgrade again on empty SQLite and Postgres databases."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect

from service import db

TABLES = {"searches", "generations", "candidates", "checkpoints", "runners"}


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
