"""File helpers shared by the asset cache and checkpoint export: checksums, atomic folders."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from optishear.core.errors import ConfigError, OptiShearError

_CHUNK = 1 << 20


def user_path(text: str, error: type[OptiShearError] = ConfigError) -> Path:
    """Path(text) with a leading ~ or ~user expanded; a user without a home is `error`
    (Path.expanduser raises RuntimeError, which nobody expects from a path)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        user = text[1:].split("/", 1)[0]
        raise error(f"{text!r}: there is no user {user!r} to expand '~{user}' for") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A scratch folder beside `final` that replaces it only if the block completes.

    A crash or interrupt leaves `final` as it was (and no half-written folder in its place);
    scratch folders left by an earlier interruption are removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
