"""Load a causal LM and its tokenizer from any model source (see optishear.model.sources)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from optishear.core.errors import ConfigError, ModelSourceError
from optishear.core.settings import LibrarySettings
from optishear.model.sources import ModelSource, resolve_source

logger = logging.getLogger(__name__)


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
            f"model {source!r} is not in the cache ({src.location}); run "
            f"`optishear assets pull --model {source}`"
        )
    if src.kind == "gguf":
        model, tokenizer = load_gguf(Path(src.location), dtype)
    else:
        try:
            config = AutoConfig.from_pretrained(src.location)
            model = AutoModelForCausalLM.from_pretrained(src.location, config=config, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelSourceError(f"cannot load model {source!r}: {exc}") from exc
        tokenizer = load_tokenizer(source, settings=settings)
    if not getattr(model.config, "is_decoder", True) or getattr(
        model.config, "is_encoder_decoder", False
    ):
        raise ModelSourceError(f"{source!r} is not a decoder-only causal LM")
    model.config.use_cache = False
    return model.to(device).eval(), tokenizer, src


def load_tokenizer(
    source: str, *, settings: LibrarySettings | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source alone (a runner tokenizing held-out text holds no model)."""
    src = resolve_source(source, settings or LibrarySettings())
    try:
        if src.kind == "gguf":
            path = Path(src.location)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(src.location)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer of {source!r}: {exc}") from exc


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively.

    Where it does (GPUs since Ampere; CPUs with AVX512-BF16, AMX or ARM's BF16), a forward in
    bfloat16 takes about half of float32's time; where it does not (a CPU with AVX2 alone), each
    decoder block is about 6.5 times slower than in float32 (bench/RESULTS.md).
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return any(caps.get(k, False) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def torch_dtype(name: str, device: str | torch.device = "auto") -> torch.dtype:
    """The torch dtype of a config's dtype name (optishear.config.DTYPES); 'auto' is bfloat16
    where `device` (by default CUDA when present, else the CPU) computes it natively."""
    if name == "auto":
        where = torch_device(device) if isinstance(device, str) else device
        return torch.bfloat16 if native_bfloat16(where) else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return dtypes[name]


def torch_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no GPU is available")
    return device
