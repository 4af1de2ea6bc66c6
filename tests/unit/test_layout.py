"""The layout holds: every package says what it owns, no module passes 400 lines, and the
README's module map is the tree's."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400  # lines: a module one can read in a sitting, split along a responsibility beyond


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in out]


def test_no_module_passes_the_line_limit() -> None:
    files = _tracked("optishear", "workers", "service", "tests", "bench", "scripts")
    sources = [p for p in files if p.suffix in (".py", ".js")]
    assert len(sources) > 100
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in sources
        if (n := len(p.read_text().splitlines())) > LIMIT
    }
    assert long == {}


@pytest.mark.parametrize("top", ["optishear", "workers", "service"])
def test_every_package_says_what_it_owns(top: str) -> None:
    inits = sorted((ROOT / top).rglob("__init__.py"))
    assert inits
    silent = [p.parent.name for p in inits if not ast.get_docstring(ast.parse(p.read_text()))]
    assert silent == []


def test_the_readme_module_map_is_drawn_from_the_tree() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "module_map.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_the_results_tables_match_their_committed_outputs() -> None:
    """bench/RESULTS.md's marked tables, recomputed from bench/results/ (bench/verify.py)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "verify.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ", 0 failures" in done.stdout


def test_verify_fails_on_a_table_without_a_marker_or_with_a_wrong_figure(tmp_path: Path) -> None:
    """A table without its marker, or one figure changed in a marked table, fails the check."""
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    lines = results.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("<!-- verify:")) + 3
    cases = {
        "unmarked": results + "\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        "changed": "\n".join([*lines[:row], lines[row].replace("|", "| 9", 1), *lines[row + 1 :]]),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.md"
        path.write_text(text)
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "verify.py"), "--results", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1, name
        expected = "without a verify marker" if name == "unmarked" else "differs from its results"
        assert expected in done.stderr, (name, done.stderr)
