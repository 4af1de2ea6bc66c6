"""Engine and sessions for Postgres or SQLite, and running the Alembic migrations."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, TypeDecorator, create_engine, event, make_url, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from optishear.core.errors import OptiShearError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on both backends (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares these as text: one fixed, offset-free format keeps the order right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that SQLAlchemy's "begin" below emits our BEGIN.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the runner's writes
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


WRITE = "optishear_write"  # execution option: this transaction will write


def _sqlite_begin(conn: Any) -> None:
    # Writers BEGIN IMMEDIATE: the write lock is taken up front, so a claim (read, then
    # conditional update) cannot interleave with another runner's, and a read-then-write
    # transaction never fails on a stale snapshot. Readers stay deferred: under WAL they
    # neither wait for writers nor hold up each other.
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with pre-ping; SQLite gets WAL, a busy timeout and immediate transactions."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessions(engine: Engine, *, write: bool = False) -> sessionmaker[Session]:
    """Sessions for reading, or (write=True) for transactions that write (see _sqlite_begin)."""
    bind = engine.execution_options(**{WRITE: True}) if write else engine
    return sessionmaker(bind, expire_on_commit=False)


def for_writing(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """The write flavour of a session factory made by make_sessions (same engine and pool)."""
    bind = sessions.kw["bind"]
    return make_sessions(bind.engine if hasattr(bind, "engine") else bind, write=True)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic is the only schema authority)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


# -- waiting for the database at start-up -------------------------------------------------------
CONNECT_TIMEOUT_SECONDS = 3  # per attempt: a blackholed host must not eat the whole wait
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 5.0


class DatabaseUnavailableError(OptiShearError):
    """The database cannot be reached (the CLI prints the message, not a traceback)."""


def shown_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def short_reason(exc: BaseException) -> str:
    """One line from a driver error: 'connection refused', 'database "x" does not exist'."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    if not lines:
        return type(orig).__name__
    line = lines[0]
    # psycopg: 'connection failed: connection to server at "h", port p failed: <why>'
    line = line.rsplit("failed: ", 1)[-1]
    line = re.sub(r"^(FATAL|ERROR):\s*", "", line)
    line = " ".join(line.split())
    if line[:1].isupper() and line[1:2].islower():  # "Connection refused" reads as a clause
        line = line[0].lower() + line[1:]
    return line if len(line) <= 160 else line[:157] + "..."


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - progress of a starting command


def wait_for_database(
    url: str,
    timeout: float,
    *,
    say: Callable[[str], None] = _stderr,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return once the database answers `SELECT 1`, retrying with backoff (0.5 s doubling to
    5 s, one line per retry through `say`) for up to `timeout` seconds; then raise
    DatabaseUnavailableError. SQLite needs no server: it returns at once."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if backend == "postgresql" else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    deadline = clock() + timeout
    delay = FIRST_DELAY_SECONDS
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except DBAPIError as exc:  # the driver's errors; a bad URL or driver still raises
                reason = short_reason(exc)
            left = deadline - clock()
            if left <= 0:
                raise DatabaseUnavailableError(
                    f"database {shown_url(url)} is unreachable ({reason}); "
                    f"gave up after {timeout:g} s (OPTISHEAR_STARTUP_WAIT_SECONDS)"
                )
            pause = min(delay, left)
            say(
                f"optishear: database {shown_url(url)} is unreachable ({reason}); "
                f"retrying in {pause:.1f} s"
            )
            sleep(pause)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
    finally:
        engine.dispose()


@contextlib.contextmanager
def unreachable_as_error(url: str) -> Iterator[None]:
    """Turn a lost connection inside the block into DatabaseUnavailableError (one line)."""
    try:
        yield
    except OperationalError as exc:
        raise DatabaseUnavailableError(
            f"database {shown_url(url)} is unreachable ({short_reason(exc)})"
        ) from exc
