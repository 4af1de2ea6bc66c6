"""Shared fixtures: tiny random models, calibration ids and a saved tiny model folder."""

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
