"""What the commands share: model and runtime flags, assets on demand, held-out perplexity."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from optishear.cli.progress import Bars
from optishear.config import DTYPES, EvaluationConfig
from optishear.core.settings import LibrarySettings
from optishear.data import assets
from optishear.data.text import evaluation_stream
from optishear.evaluation.perplexity import Perplexity, perplexity
from optishear.model.hf import load_model, torch_dtype
from optishear.model.sources import REGISTERED_MODELS, ModelSource, resolve_source
from optishear.model.streaming import EXECUTIONS, BlockStreamer, Execution, place_model


def add_runtime_flags(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    if model:
        p.add_argument(
            "--model",
            required=True,
            help=f"registered name ({', '.join(REGISTERED_MODELS)}), HF folder, .gguf file or "
            "hub id",
        )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_execution_flag(p)


def add_execution_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--execution",
        choices=EXECUTIONS,
        default="auto",
        help="resident: the whole model on the device; streaming: decoder blocks stay in host "
        "memory and visit the device one at a time; auto (default): resident when the model "
        "fits the device's free memory",
    )


def load_placed(
    name: str, settings: LibrarySettings, *, device: torch.device, dtype: str, execution: Execution
) -> tuple[nn.Module, PreTrainedTokenizerBase, ModelSource, BlockStreamer | None]:
    """Load a model on the host, put it on its device whole or streamed, and say which."""
    model, tokenizer, source = load_model(
        name, settings=settings, device="cpu", dtype=torch_dtype(dtype, device)
    )
    choice, streamer = place_model(model, device, execution)
    print(choice.describe(), file=sys.stderr)
    return model, tokenizer, source, streamer


def add_dtype_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=DTYPES, default="float32")


def ensure_assets(
    settings: LibrarySettings, bars: Bars, model: str | None, *texts: str | None
) -> None:
    """Fetch the bundled model and text once, when a command names them.

    A model path that does not exist is reported first: no download for a command that fails.
    """
    if model is not None:
        resolve_source(model, settings)
    assets.ensure_assets(settings, model=model, texts=texts, progress=bars.bytes)


def held_out(
    model: torch.nn.Module, tokenizer: Any, config: EvaluationConfig, settings: LibrarySettings
) -> Perplexity:
    return perplexity(model, evaluation_stream(tokenizer, config, settings), config)
