"""Shared fixtures (tiny random models, calibration ids, a saved tiny model folder) and the count
of tests per component that closes every run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, build_tiny, tiny_tokenizer, word_text
from transformers import PreTrainedModel


@pytest.fixture
def tiny_factory() -> Callable[..., PreTrainedModel]:
    return build_tiny


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    return build_tiny("llama")


@pytest.fixture
def calib_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with a tokenizer, plus calibration and evaluation text files."""
    root = tmp_path_factory.mktemp("tiny")
    model = build_tiny("llama")
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(word_text(3000, seed=1))
    (root / "eval.txt").write_text(word_text(2000, seed=2))
    return root


# What a run covered, by the real part it needed: `.ci/run` shows that none went missing.
COMPONENTS = ("postgres", "ray", "browser", "assets", "gpu")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and report.when != "call":
                continue
            keywords = getattr(report, "keywords", {})
            part = next((c for c in COMPONENTS if c in keywords), "tiny models and SQLite")
            counts.setdefault(part, {}).setdefault(outcome, 0)
            counts[part][outcome] += 1
    if not counts:
        return
    terminalreporter.section("tests per component")
    for part in (*COMPONENTS, "tiny models and SQLite"):
        if part in counts:
            line = ", ".join(f"{n} {outcome}" for outcome, n in counts[part].items())
            terminalreporter.write_line(f"{part:<24} {line}")
