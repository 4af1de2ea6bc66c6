"""The library finds the Ray evaluator only through its entry point, and never imports Ray."""

from __future__ import annotations

import ast
from importlib.metadata import EntryPoints, entry_points
from pathlib import Path

import pytest

import optishear
from optishear import cli
from optishear.cli import search_cmd

LIBRARY = Path(optishear.__file__).parent


def test_ray_evaluator_is_registered_as_an_entry_point() -> None:
    (ep,) = entry_points(group=search_cmd.EVALUATOR_PLUGINS, name="ray")
    assert ep.value == "workers.pool:ray_evaluator"


def test_library_never_imports_ray_or_workers() -> None:
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{path.relative_to(LIBRARY)}: {n}"
                for n in names
                if n.split(".")[0] in ("ray", "workers", "service")
            ]
    assert offenders == []


def test_search_with_workers_but_no_plugin_is_a_clear_error(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(search_cmd, "entry_points", lambda **_: EntryPoints(()))
    args = [
        "search",
        "--model",
        str(tiny_model_dir / "model"),
        "--calib",
        str(tiny_model_dir / "calib.txt"),
        "--eval-text",
        str(tiny_model_dir / "eval.txt"),
        "--out",
        str(tmp_path / "out"),
    ]
    for extra in (["--workers", "2"], ["--ray-address", "ray://head:10001"]):
        assert cli.main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert "evaluator plugin" in err
        assert "optishear[workers]" in err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # it failed before any work
