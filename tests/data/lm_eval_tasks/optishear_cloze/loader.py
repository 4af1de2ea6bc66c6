"""The optishear_cloze task's splits, read from JSONL files next to this file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

_HERE = Path(__file__).resolve().parent


def load_jsonl(data_files: dict[str, str], **_metadata: Any) -> dict[str, datasets.Dataset]:
    """One in-memory split per file; relative paths are relative to this folder, not the cwd.

    lm-eval calls a task's `custom_dataset` with its metadata and `dataset_kwargs` as keywords.
    """
    splits = {}
    for split, name in data_files.items():
        path = _HERE / name
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return splits
