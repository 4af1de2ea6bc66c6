"""`optishear run`: queue a search, run it in this process, export its recommended checkpoint."""

from __future__ import annotations

import json
import re
import tarfile

import pytest
from sqlalchemy import select

from optishear.artifacts.export import MANIFEST_NAME
from optishear.cli import main
from service import db
from service.settings import get_settings
from service.tables import Checkpoint, JobStatus, Search


@pytest.fixture
def run_env(monkeypatch, database_url, tmp_path):
    """`optishear run` reads its settings from the environment, as on the command line."""
    monkeypatch.setenv("OPTISHEAR_DATABASE_URL", database_url)
    monkeypatch.setenv("OPTISHEAR_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("OPTISHEAR_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("OPTISHEAR_POLL_SECONDS", "0.1")
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_searches_exports_and_keeps_both_in_the_db(run_env, tiny_model_dir, capsys) -> None:
    code = main(
        [
            "run",
            "--model",
            str(tiny_model_dir / "model"),
            "--metric-space",
            "first_order",
            "--screen-rungs",
            "1x8",
            "--population",
            "4",
            "--generations",
            "1",
            "--calib",
            str(tiny_model_dir / "calib.txt"),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
            "--eval-text",
            str(tiny_model_dir / "eval.txt"),
            "--eval-seqlen",
            "32",
            "--eval-windows",
            "4",
            "--workers",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "generation 1/3 (metric screen)" in out  # the screen's one rung, then
    assert "generation 2/3 (metric 1/1)" in out  # one line per generation, both stages
    assert "generation 3/3 (layerwise 1/1)" in out
    assert re.search(r"recommended \(\*\): candidate [0-9a-f-]{36}", out)
    assert "Wanda" in out
    assert "OWL+Wanda" in out
    sha = re.search(r"sha256\s+([0-9a-f]{64})", out)
    assert sha, out

    engine = db.make_engine(run_env)
    try:
        with db.make_sessions(engine)() as session:
            search = session.scalars(select(Search)).one()
            ckpt = session.scalars(select(Checkpoint)).one()
    finally:
        engine.dispose()
    assert search.status == JobStatus.SUCCEEDED
    assert search.request["population"] == 4
    assert [b["name"] for b in search.result["baselines"]] == ["Wanda", "OWL+Wanda"]
    assert ckpt.status == JobStatus.SUCCEEDED
    assert ckpt.search_id == search.id
    assert ckpt.sha256 == sha.group(1)
    assert (get_settings().resolved_checkpoint_dir() / ckpt.file_name).is_file()
    assert f"/api/searches/{search.id}" in out
    assert f"/#/search/{search.id}" in out

    # On by default in `run`: held-out perplexity beside Wanda's and SparseGPT's, stored with
    # the search, equal to the exported checkpoint's, and carried in its manifest.
    assert search.request["compare_baselines"] is True
    held_out = search.result["held_out"]
    rows = {r["name"]: r["perplexity"] for r in held_out["rows"]}
    assert list(rows) == ["dense", "searched", "wanda", "sparsegpt", "owl+sparsegpt"]
    assert rows["searched"] == pytest.approx(ckpt.perplexity, rel=1e-6)
    assert "held-out perplexity, measured in this run" in out
    for name in ("wanda", "sparsegpt", "owl+sparsegpt"):
        assert f"{held_out['gains'][name] * 100:+.1f}% vs {name}" in out
    with tarfile.open(get_settings().resolved_checkpoint_dir() / ckpt.file_name) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(MANIFEST_NAME))
        manifest = json.load(tar.extractfile(member))
    assert manifest["held_out_comparison"]["gains"] == held_out["gains"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "smollm2-135m", "--sparsity", "1.5"], "sparsity: Input should be less"),
        (["--model", "smollm2-135m", "--population", "2"], "population: Input should be"),
        (["--model", "smollm2-135m", "--workers", "-1"], "--workers must be >= 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_env, capsys, argv, message) -> None:
    assert main(["run", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("optishear: error: ")
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
