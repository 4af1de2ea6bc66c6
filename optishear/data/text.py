"""Calibration and evaluation text: sources, tokenisation and seeded sampling."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from optishear.config import (
    BUNDLED,
    CalibrationConfig,
    EvaluationConfig,
    SearchCalibrationConfig,
)
from optishear.core.errors import DataError
from optishear.core.files import user_path
from optishear.core.settings import LibrarySettings
from optishear.data.assets import text_dir


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise DataError(f"{path}:{lineno}: each line needs a string field 'text'")
            texts.append(row["text"])
    return texts


def _read_dataset(spec: str, split: str) -> list[str]:
    """'hf:NAME[:CONFIG]' through the optional `datasets` package (online users)."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "hf: text sources need the `datasets` package (pip install datasets)"
        ) from exc
    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:
        raise DataError(f"cannot load dataset {name!r}: {exc}") from exc
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return [t for t in ds[column] if isinstance(t, str)]


def load_texts(source: str, split: str, settings: LibrarySettings | None = None) -> list[str]:
    """Documents of a text source.

    `source` is 'wiki' (the bundled sample; split 'calibration' or 'evaluation'), a .txt file
    (one document), a .jsonl file with a 'text' field per line, or 'hf:NAME[:CONFIG]'.
    """
    if source == BUNDLED:
        settings = settings or LibrarySettings()
        path = text_dir(settings) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"the bundled text is not cached ({path}); run `optishear assets pull`")
        return _read_jsonl(path)
    if source.startswith("hf:"):
        return _read_dataset(source[3:], "validation" if split == "evaluation" else "train")
    path = user_path(source, DataError)
    if not path.is_file():
        raise DataError(f"text source {source!r} is not 'wiki', 'hf:NAME' or an existing file")
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text") from exc


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> Tensor:
    """All documents as one 1-D token stream, separated by blank lines (as WikiText is)."""
    ids = tokenizer(
        "\n\n".join(texts), add_special_tokens=False, return_attention_mask=False, verbose=False
    )["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _windows(stream: Tensor, n: int, seq_len: int, seed: int, what: str) -> Tensor:
    if stream.numel() <= seq_len:
        raise DataError(
            f"{what} has {stream.numel()} tokens, fewer than one {seq_len}-token sample"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq_len, (n,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def _split(stream: Tensor, config: CalibrationConfig) -> tuple[Tensor, Tensor]:
    """The calibration text's tokens for statistics, and its end held aside for validation."""
    share = config.validation_share if isinstance(config, SearchCalibrationConfig) else 0.0
    cut = stream.numel() - int(stream.numel() * share)
    return stream[:cut], stream[cut:]


def sample_calibration(
    tokenizer: PreTrainedTokenizerBase,
    config: CalibrationConfig,
    settings: LibrarySettings | None = None,
) -> Tensor:
    """(n_samples, seq_len) token windows at seeded random offsets of the calibration text;
    for a search, of its part before the share held aside for validation."""
    stream = tokenize_stream(tokenizer, load_texts(config.source, "calibration", settings))
    calibration, _ = _split(stream, config)
    return _windows(calibration, config.n_samples, config.seq_len, config.seed, "calibration text")


def sample_validation(
    tokenizer: PreTrainedTokenizerBase,
    config: SearchCalibrationConfig,
    n_samples: int,
    settings: LibrarySettings | None = None,
) -> Tensor | None:
    """(n_samples, seq_len) windows of the share of the calibration text held aside, which
    score a search's candidates; None when nothing is held aside."""
    if config.validation_share == 0:
        return None
    stream = tokenize_stream(tokenizer, load_texts(config.source, "calibration", settings))
    _, held = _split(stream, config)
    if held.numel() <= config.seq_len:
        raise DataError(
            f"the {config.validation_share:g} of the calibration text held aside for validation "
            f"has {held.numel()} tokens, fewer than one {config.seq_len}-token sequence: give a "
            "longer text, shorter sequences or a larger validation share (or 0 to score on the "
            "calibration sequences)"
        )
    # another seed than the calibration's: the two samples are drawn independently
    return _windows(held, n_samples, config.seq_len, config.seed + 1, "validation text")


def evaluation_stream(
    tokenizer: PreTrainedTokenizerBase,
    config: EvaluationConfig,
    settings: LibrarySettings | None = None,
) -> Tensor:
    """The held-out text of an evaluation config, tokenized as one stream."""
    return tokenize_stream(tokenizer, load_texts(config.text, "evaluation", settings))
