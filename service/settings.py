"""Service settings, read from OPTISHEAR_* environment variables."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from optishear.core.settings import LibrarySettings

HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ServiceSettings(BaseSettings):
    """Where the queue and checkpoints live, how jobs are leased, and who may call the API."""

    model_config = SettingsConfigDict(env_prefix="OPTISHEAR_", extra="ignore")

    # Default: an SQLite file beside the model cache, so `optishear serve` needs no server.
    database_url: str = ""
    # Comma separated. Each entry is a key or "sha256:<hex digest>"; only digests are kept.
    # A search belongs to the key that made it; an admin key (also a valid API key) sees all.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    admin_keys: Annotated[tuple[str, ...], NoDecode] = ()
    # How long an Idempotency-Key returns the search it made (per API key).
    idempotency_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    # Server-side folders a request may name (model folders, calibration and evaluation
    # files), besides the cache and its data/ folder. Comma separated.
    data_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    checkpoint_dir: Path | None = None  # default <cache>/checkpoints
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0)  # runner's wait between empty claims
    workers: int = Field(default=0, ge=0)  # 0: evaluate in the runner; N: N Ray actors
    ray_address: str | None = None
    # `optishear serve` starts a runner process beside the API (None: only for SQLite).
    embedded_runner: bool | None = None
    # A runner process lowers its CPU priority by this much (0: not at all), so that the API's
    # answers never queue behind a search's torch threads on the same machine.
    runner_nice: int = Field(default=10, ge=0, le=19)
    # GET /api/searches/{id} answers from a copy this many seconds old at most
    # (service.status_cache): polls cost no database read in between. 0: always read.
    status_cache_seconds: float = Field(default=0.5, ge=0, le=60)
    # At start, `serve` and `worker` wait this long (with backoff) for the database.
    startup_wait_seconds: float = Field(default=60.0, ge=0)
    # A runner retries a write through a database outage this long, keeping its job.
    db_retry_seconds: float = Field(default=900.0, ge=0)
    # Retention of the checkpoint store (service.housekeeping), applied after each export
    # and by every sweep; None: no limit. Keep the newest N succeeded checkpoints, and/or
    # delete the oldest until their archives fit in this many bytes (the newest always stays).
    keep_checkpoints: int | None = Field(default=None, ge=1)
    store_max_bytes: int | None = Field(default=None, ge=1)
    # Measurements (service.measurements): a folder of local lm-eval task YAMLs that requests
    # may name besides the hub's tasks, and the device the runner measures on.
    task_path: Path | None = None
    measure_device: str = "auto"

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _hash_keys(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        out = []
        for raw in (str(i).strip() for i in items):
            if not raw:
                continue
            if raw.startswith(HASH_PREFIX):
                out.append(raw[len(HASH_PREFIX) :].lower())
            else:
                out.append(hash_key(raw))
        return tuple(out)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> tuple[Path, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        return tuple(Path(str(i).strip()) for i in items if str(i).strip())

    def resolved_data_roots(self) -> tuple[Path, ...]:
        """Where requests may point on this server: the cache, <cache>/data, data_roots."""
        cache = LibrarySettings().cache
        roots = (cache, cache / "data", *self.data_roots)
        return tuple(dict.fromkeys(r.expanduser().resolve() for r in roots))

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        cache = LibrarySettings().cache
        cache.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{cache / 'optishear.db'}"

    def resolved_checkpoint_dir(self) -> Path:
        path = self.checkpoint_dir or LibrarySettings().cache / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()

    def runs_embedded_runner(self) -> bool:
        if self.embedded_runner is not None:
            return self.embedded_runner
        return self.resolved_database_url().startswith("sqlite")


@lru_cache
def get_settings() -> ServiceSettings:
    return ServiceSettings()
