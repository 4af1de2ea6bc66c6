"""What a test needs from the machine (PostgreSQL, Chromium, the bundled assets): missing, the
test skips on a developer's machine but fails under CI (CI=true), where a skipped test would be
an untested feature."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def cannot_run(reason: str) -> NoReturn:
    """Skip locally, fail under CI."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: this test must run)", pytrace=False)
    pytest.skip(reason)
