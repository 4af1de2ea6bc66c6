"""Timing a dense and a pruned model the same way: prefill and greedy decode with the KV cache,
repeats alternating between the two, on the kernels that apply (see kernels)."""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from optishear.core.errors import ConfigError
from optishear.evaluation.speed.kernels import (
    Conversion,
    DetectedPattern,
    detect_pattern,
    no_sparse_kernel_reason,
    semi_structured_linears,
)
from optishear.evaluation.speed.report import (
    VARIANTS,
    SpeedConfig,
    SpeedReport,
    SpeedRow,
    slower_sentence,
)
from optishear.model.blocks import iter_linears

logger = logging.getLogger(__name__)


_IDS_SEED = 0  # the prompt's token ids: the same for both models and every run


_NOISE = "the pruned model runs the dense kernels; any difference is noise"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_names(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The name of the KV-cache argument (and output) and the logits kwargs of `model`."""
    params = inspect.signature(model.forward).parameters
    # transformers 5.24 names the KV cache `cache` and deprecates `past_key_values`
    cache = "cache" if "cache" in params else "past_key_values"
    # Generation needs the last position's logits only; the lm_head is never pruned, so full
    # logits would add the same cost to both models and blur the ratio.
    return cache, {"logits_to_keep": 1} if "logits_to_keep" in params else {}


@torch.no_grad()
def _generate_once(
    model: nn.Module, ids: Tensor, decode_tokens: int, device: torch.device
) -> tuple[float, float]:
    """(prefill seconds, mean seconds of one decode step) of a greedy generation with the KV
    cache, every step timed on its own."""
    cache_name, kw = _forward_names(model)
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **kw)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
    _sync(device)
    prefill = time.perf_counter() - start
    cache = out[cache_name]
    steps = []
    for _ in range(decode_tokens):
        start = time.perf_counter()
        out = model(input_ids=token, use_cache=True, **{cache_name: cache}, **kw)
        cache = out[cache_name]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        steps.append(time.perf_counter() - start)
    return prefill, sum(steps) / len(steps)


def _vocab_size(model: nn.Module) -> int:
    embed = model.get_input_embeddings()  # type: ignore[operator]
    return int(embed.num_embeddings)


def _measure(
    models: Mapping[str, tuple[nn.Module, str]], config: SpeedConfig, device: torch.device
) -> list[SpeedRow]:
    """Rows for every (variant: (model, kernel)) at every batch size.

    The variants' repeats alternate, so a drift of the machine's speed (another process,
    clocks) falls on all of them alike.
    """
    vocab = min(_vocab_size(m) for m, _ in models.values())
    gen = torch.Generator().manual_seed(_IDS_SEED)
    rows: list[SpeedRow] = []
    for b in config.batch_sizes:
        ids = torch.randint(0, vocab, (b, config.prompt_len), generator=gen).to(device)
        for model, _ in models.values():
            for _ in range(config.warmup):
                _generate_once(model, ids, config.decode_tokens, device)
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in models}
        for _ in range(config.repeats):
            for variant, (model, _) in models.items():
                samples[variant].append(_generate_once(model, ids, config.decode_tokens, device))
        for variant, (_, kernel) in models.items():
            prefill = statistics.median(p for p, _ in samples[variant])
            step = statistics.median(s for _, s in samples[variant])
            rows.append(
                SpeedRow(
                    variant=variant,
                    kernel=kernel,
                    batch_size=b,
                    prefill_ms=prefill * 1e3,
                    prefill_tokens_per_s=b * config.prompt_len / prefill,
                    decode_ms_per_token=step * 1e3,
                    decode_tokens_per_s=b / step,
                )
            )
            logger.info(
                "%s (%s kernels), batch %d: prefill %.2f ms, decode %.3f ms/step",
                variant, kernel, b, prefill * 1e3, step * 1e3,
            )  # fmt: skip
    return rows


def _placed(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.dtype]:
    model.to(device)
    return model, next(model.parameters()).dtype


def check_fits(model: nn.Module, config: SpeedConfig) -> None:
    """A ConfigError when the prompt and the decoded tokens exceed the model's positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    needed = config.prompt_len + config.decode_tokens
    if isinstance(limit, int) and needed > limit:
        raise ConfigError(
            f"prompt_len + decode_tokens = {needed} exceeds the model's "
            f"{limit} positions (max_position_embeddings)"
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def measure_model(
    model: nn.Module,
    config: SpeedConfig,
    *,
    device: torch.device,
    variant: str = "dense",
    kernel: str = "dense",
) -> tuple[SpeedRow, ...]:
    """Time one model as it is (no kernel swap), one row per batch size."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be {' or '.join(VARIANTS)}, got {variant!r}")
    model, _ = _placed(model, device)
    check_fits(model, config)
    return tuple(_measure({variant: (model, kernel)}, config, device))


def _same_shapes(dense: nn.Module, pruned: nn.Module) -> None:
    a = [(i, n, tuple(lin.weight.shape)) for i, n, lin in iter_linears(dense)]
    b = [(i, n, tuple(lin.weight.shape)) for i, n, lin in iter_linears(pruned)]
    if a != b or _vocab_size(dense) != _vocab_size(pruned):
        raise ConfigError(
            "the pruned model does not have the dense model's architecture "
            f"({len(b)} decoder linears against {len(a)}, or other shapes): compare a model "
            "with its own pruned copy"
        )


@torch.no_grad()
def _probe_logits(model: nn.Module, device: torch.device) -> Tensor:
    """Logits of two fixed prompts, flattened: 5 rows take the kernels' padding path (a decode
    step's few rows do), 16 rows do not."""
    vocab = _vocab_size(model)
    out = []
    for shape in ((1, 5), (2, 8)):
        ids = torch.arange(shape[0] * shape[1], device=device).reshape(shape) % vocab
        out.append(model(input_ids=ids).logits.float().flatten())
    return torch.cat(out)


def measure_speed(
    dense: nn.Module, pruned: nn.Module, config: SpeedConfig, *, device: torch.device
) -> SpeedReport:
    """Time `dense` and its pruned copy `pruned` at every batch size of `config`.

    Both models are moved to `device` (in place, as `Module.to` does) and must share a dtype.
    With kernel "auto", a 2:4 pruned model on a CUDA GPU that has the kernel runs its 2:4
    linears on semi-structured weights; elsewhere it runs the dense kernels, and the report's
    `kernel_note` says why. Kernel "semi_structured" where it cannot run is a ConfigError.
    The pruned model's weights are the same objects afterwards.
    """
    dense, dtype = _placed(dense, device)
    pruned, pruned_dtype = _placed(pruned, device)
    if dtype != pruned_dtype:
        raise ConfigError(f"the dense model is {dtype} and the pruned one {pruned_dtype}")
    _same_shapes(dense, pruned)
    check_fits(dense, config)
    detected = detect_pattern(pruned)
    why_not = (
        None
        if config.kernel == "dense"
        else no_sparse_kernel_reason(device, dtype, detected.pattern)
    )
    if config.kernel == "semi_structured" and why_not is not None:
        raise ConfigError(f"kernel semi_structured cannot run here: {why_not}")
    summary = f"pruned model: {detected.describe()}."
    common = {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "pattern": detected.pattern,
        "config": config.to_dict(),
    }
    if config.kernel == "dense" or why_not is not None:
        note = f"{why_not or 'dense kernels asked for'}: {_NOISE}. {summary}"
        rows = _measure({"dense": (dense, "dense"), "pruned": (pruned, "dense")}, config, device)
        return SpeedReport(rows=tuple(rows), kernel_note=note, **common)

    reference = _probe_logits(pruned, device)
    with semi_structured_linears(pruned, detected.semi_structured) as conv:
        failure = _semi_structured_failure(conv, pruned, reference, device)
        if failure is None:
            note = _semi_structured_note(conv, detected, reference, pruned, device)
            rows = _measure(
                {"dense": (dense, "dense"), "pruned": (pruned, "semi_structured")}, config, device
            )
            report = SpeedReport(rows=tuple(rows), kernel_note="", **common)
            note = f"{note}{slower_sentence(report.ratios())} {summary}"
            return replace(report, kernel_note=note)
    if config.kernel == "semi_structured":
        raise ConfigError(f"kernel semi_structured cannot run here: {failure}")
    rows = _measure({"dense": (dense, "dense"), "pruned": (pruned, "dense")}, config, device)
    return SpeedReport(rows=tuple(rows), kernel_note=f"{failure}: {_NOISE}. {summary}", **common)


def _semi_structured_failure(
    conv: Conversion, model: nn.Module, reference: Tensor, device: torch.device
) -> str | None:
    """Why the swapped model cannot run on the semi-structured kernels, or None."""
    if not conv.converted:
        first = next(iter(conv.skipped.values()), "no 2:4 linear")
        return f"no decoder linear could take the 2:4 semi-structured kernels ({first})"
    try:
        logits = _probe_logits(model, device)
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        return f"the 2:4 semi-structured kernels failed on this model ({type(exc).__name__}: {exc})"
    if logits.shape != reference.shape or not torch.isfinite(logits).all():
        return "the 2:4 semi-structured kernels gave non-finite logits on this model"
    return None


def _semi_structured_note(
    conv: Conversion,
    detected: DetectedPattern,
    reference: Tensor,
    model: nn.Module,
    device: torch.device,
) -> str:
    diff = float((_probe_logits(model, device) - reference).abs().max())
    note = (
        f"{len(conv.converted)} of {detected.n_linears} decoder linears run 2:4 semi-structured "
        f"kernels ({conv.backend}; max |logit difference| against the dense kernels {diff:.3g})"
    )
    if conv.skipped:
        first_key, first = next(iter(conv.skipped.items()))
        note += f"; {len(conv.skipped)} 2:4 linears skipped (e.g. {first_key}: {first})"
    if detected.kept_dense:
        note += f"; {len(detected.kept_dense)} linears kept dense run the dense kernels"
    return note + "; embeddings, attention and the lm_head run the dense kernels."
