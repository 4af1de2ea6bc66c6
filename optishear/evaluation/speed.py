"""Does a pruned model run faster? Prefill and decode latency against its dense model.

Pruning to exact zeros changes nothing for dense kernels: a zero costs what any weight costs.
Only a sparse kernel can turn sparsity into speed, and the one PyTorch ships is the 2:4
semi-structured matmul (cuSPARSELt or CUTLASS) on CUDA GPUs of compute capability 8.0 or newer,
for float16 and bfloat16 weights. `measure_speed` finds the pruned model's pattern from its
weights, swaps its 2:4 decoder linears onto that kernel where it applies (and puts them back
afterwards), times both models the same way, and says plainly which kernels ran.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from optishear.core.errors import ConfigError, DataError
from optishear.model.blocks import iter_linears

logger = logging.getLogger(__name__)

KERNELS = ("auto", "dense", "semi_structured")
VARIANTS = ("dense", "pruned")
_IDS_SEED = 0  # the prompt's token ids: the same for both models and every run
_DENSE_BELOW = 0.01  # a layer with fewer zeros than this was kept dense (de-quantised weights
# hold a few exact zeros: 0.03% in the bundled SmolLM2)
_HALF = (torch.float16, torch.bfloat16)
_NOISE = "the pruned model runs the dense kernels; any difference is noise"


def _positive_int(name: str, value: Any, *, low: int = 1, high: int = 1 << 20) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, slots=True)
class SpeedConfig:
    """What to time: batch sizes, prompt and decode lengths, repeats, and which kernels."""

    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    decode_tokens: int = 32
    warmup: int = 1
    repeats: int = 3
    kernel: str = "auto"  # auto | dense | semi_structured

    def __post_init__(self) -> None:
        if not isinstance(self.batch_sizes, tuple | list) or not self.batch_sizes:
            raise ConfigError(
                f"batch_sizes must name at least one batch size, got {self.batch_sizes!r}"
            )
        for b in self.batch_sizes:
            _positive_int("every batch size", b, high=4096)
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ConfigError(f"batch_sizes repeats a batch size: {tuple(self.batch_sizes)}")
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        _positive_int("prompt_len", self.prompt_len, high=1 << 17)
        _positive_int("decode_tokens", self.decode_tokens, high=1 << 16)
        _positive_int("warmup", self.warmup, low=0, high=100)
        _positive_int("repeats", self.repeats, high=1000)
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}


@dataclass(frozen=True, slots=True)
class SpeedRow:
    """Medians over the repeats for one model at one batch size.

    A decode step makes one new token for every sequence of the batch: `decode_ms_per_token`
    is the latency of that step, `decode_tokens_per_s` the tokens all sequences make a second.
    """

    variant: str  # "dense" | "pruned"
    kernel: str  # "dense" | "semi_structured"
    batch_size: int
    prefill_ms: float
    prefill_tokens_per_s: float
    decode_ms_per_token: float
    decode_tokens_per_s: float


def verdict(ratio: float) -> str:
    """How a pruned/dense latency ratio reads: above 1 the pruned model is slower."""
    if ratio > 1:
        return "slower"
    return "faster" if ratio < 1 else "same"


@dataclass(frozen=True, slots=True)
class SpeedRatio:
    """Pruned latency over dense latency at one batch size (above 1: the pruned one is slower)."""

    batch_size: int
    prefill: float
    decode: float

    @property
    def prefill_verdict(self) -> str:
        return verdict(self.prefill)

    @property
    def decode_verdict(self) -> str:
        return verdict(self.decode)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prefill_verdict": self.prefill_verdict,
            "decode_verdict": self.decode_verdict,
        }


@dataclass(frozen=True)
class SpeedReport:
    """Every row, the device and dtype they ran on, the pruned pattern and which kernels ran."""

    device: str
    dtype: str
    rows: tuple[SpeedRow, ...]
    kernel_note: str
    pattern: str | None  # "2:4", "unstructured", or None when the pruned model has no zeros
    config: dict[str, Any] = field(default_factory=dict)

    def row(self, variant: str, batch_size: int) -> SpeedRow:
        for r in self.rows:
            if r.variant == variant and r.batch_size == batch_size:
                return r
        raise KeyError(f"no {variant} row at batch size {batch_size}")

    def ratios(self) -> tuple[SpeedRatio, ...]:
        """Pruned over dense latency, prefill and decode, at every batch size with both rows."""
        sizes = sorted({r.batch_size for r in self.rows if r.variant == "pruned"})
        out = []
        for b in sizes:
            dense, pruned = self.row("dense", b), self.row("pruned", b)
            out.append(
                SpeedRatio(
                    b,
                    pruned.prefill_ms / dense.prefill_ms,
                    pruned.decode_ms_per_token / dense.decode_ms_per_token,
                )
            )
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; `ratios` is derived from the rows (and ignored by from_dict)."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "pattern": self.pattern,
            "kernel_note": self.kernel_note,
            "config": dict(self.config),
            "rows": [asdict(r) for r in self.rows],
            "ratios": [r.to_dict() for r in self.ratios()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedReport:
        try:
            rows = tuple(
                SpeedRow(
                    variant=str(r["variant"]),
                    kernel=str(r["kernel"]),
                    batch_size=int(r["batch_size"]),
                    prefill_ms=float(r["prefill_ms"]),
                    prefill_tokens_per_s=float(r["prefill_tokens_per_s"]),
                    decode_ms_per_token=float(r["decode_ms_per_token"]),
                    decode_tokens_per_s=float(r["decode_tokens_per_s"]),
                )
                for r in data["rows"]
            )
            pattern = data["pattern"]
            report = cls(
                device=str(data["device"]),
                dtype=str(data["dtype"]),
                rows=rows,
                kernel_note=str(data["kernel_note"]),
                pattern=None if pattern is None else str(pattern),
                config=dict(data["config"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a speed report: {type(exc).__name__}: {exc}") from None
        if any(r.variant not in VARIANTS for r in rows):
            raise DataError(f"not a speed report: variants must be {' or '.join(VARIANTS)}")
        return report


# --- the pruned model's pattern --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetectedPattern:
    """What the pruned model's decoder linears hold.

    `pattern` is "2:4" when every pruned linear has at least 2 zeros in every 4 consecutive
    inputs of every row (linears kept dense may sit beside them), "unstructured" when some
    pruned linear does not, None when no linear is pruned at all.
    """

    pattern: str | None
    sparsity: float  # exact zeros over all decoder-linear weights
    n_linears: int
    semi_structured: tuple[str, ...]  # the 2:4 linears, as "block.name"
    kept_dense: tuple[str, ...]

    def describe(self) -> str:
        text = (
            f"{self.pattern or 'not pruned'}, {self.sparsity:.1%} zeros over "
            f"{self.n_linears} decoder linears"
        )
        if self.pattern == "2:4" and self.kept_dense:
            text += f" ({len(self.kept_dense)} kept dense)"
        return text


def _is_two_four(W: Tensor) -> bool:
    d_out, d_in = W.shape  # groups of 4 run along the inputs, as N:M pruning makes them
    if d_in % 4:
        return False
    return bool(((W == 0).reshape(d_out, d_in // 4, 4).sum(-1) >= 2).all())


@torch.no_grad()
def detect_pattern(model: nn.Module) -> DetectedPattern:
    """The pattern of the decoder linears' exact zeros (see DetectedPattern)."""
    zeros = total = 0
    two_four: list[str] = []
    dense: list[str] = []
    other = 0
    for idx, name, lin in iter_linears(model):
        W = lin.weight  # (d_out, d_in)
        z = int((W == 0).sum())
        zeros, total = zeros + z, total + W.numel()
        key = f"{idx}.{name}"
        if z < _DENSE_BELOW * W.numel():
            dense.append(key)
        elif _is_two_four(W):
            two_four.append(key)
        else:
            other += 1
    pattern = "unstructured" if other else ("2:4" if two_four else None)
    n = len(two_four) + len(dense) + other
    return DetectedPattern(
        pattern, zeros / total if total else 0.0, n, tuple(two_four), tuple(dense)
    )


# --- which kernels run -----------------------------------------------------------------------


def no_sparse_kernel_reason(
    device: torch.device,
    dtype: torch.dtype,
    pattern: str | None = "2:4",
    capability: tuple[int, int] | None = None,
) -> str | None:
    """Why no 2:4 semi-structured kernel applies here, or None when one does.

    `capability` is the CUDA device's compute capability (looked up when not given).
    """
    if device.type != "cuda":
        return f"no sparse kernel applies on {device.type}"
    if pattern is None:
        return "the pruned model has no pruned decoder linears, so no sparse kernel applies"
    if pattern != "2:4":
        return f"no sparse kernel applies to {pattern} sparsity (PyTorch's sparse matmul takes 2:4)"
    if dtype not in _HALF:
        name = str(dtype).removeprefix("torch.")
        return (
            f"no sparse kernel applies to {name} weights (2:4 semi-structured kernels take "
            "float16 or bfloat16)"
        )
    major, minor = capability or torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return (
            f"no sparse kernel applies on compute capability {major}.{minor} (2:4 "
            "semi-structured kernels need 8.0 or newer)"
        )
    return None


def _semi_structured_backend() -> tuple[str, Callable[[Tensor], Tensor]]:
    # to_sparse_semi_structured takes cuSPARSELt; without it, the CUTLASS class is asked for
    # by name (not through the _FORCE_CUTLASS class flag, which is global state).
    from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

    if torch.backends.cusparselt.is_available():
        return "cuSPARSELt", to_sparse_semi_structured
    return "CUTLASS", SparseSemiStructuredTensorCUTLASS.from_dense


@dataclass
class Conversion:
    """Which 2:4 linears took the semi-structured weights, and why the others did not."""

    backend: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "block.name" -> the kernel's reason


@contextmanager
def semi_structured_linears(
    model: nn.Module,
    names: Sequence[str],
    *,
    convert: Callable[[Tensor], Tensor] | None = None,
    backend: str | None = None,
) -> Iterator[Conversion]:
    """Swap the named decoder linears' weights for 2:4 semi-structured tensors, for a while.

    A linear the kernel cannot take (its shape or dtype) keeps its dense weight and is counted
    as skipped. The original weights come back on exit, even when something raises.
    """
    if convert is None:
        backend, convert = _semi_structured_backend()
    conversion = Conversion(backend or "custom")
    wanted = set(names)
    originals: list[tuple[nn.Linear, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for idx, name, lin in iter_linears(model):
                key = f"{idx}.{name}"
                if key not in wanted:
                    continue
                try:
                    sparse = convert(lin.weight.detach().contiguous())
                except RuntimeError as exc:  # the kernel's own shape, dtype and device checks
                    conversion.skipped[key] = str(exc).strip().splitlines()[0]
                    continue
                originals.append((lin, lin.weight))
                lin.weight = nn.Parameter(sparse, requires_grad=False)
                conversion.converted.append(key)
        yield conversion
    finally:
        for lin, weight in originals:
            lin.weight = weight


# --- timing ----------------------------------------------------------------------------------


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
            note = f"{note}{_slower_sentence(report.ratios())} {summary}"
            return replace(report, kernel_note=note)
    if config.kernel == "semi_structured":
        raise ConfigError(f"kernel semi_structured cannot run here: {failure}")
    rows = _measure({"dense": (dense, "dense"), "pruned": (pruned, "dense")}, config, device)
    return SpeedReport(rows=tuple(rows), kernel_note=f"{failure}: {_NOISE}. {summary}", **common)


def _slower_sentence(ratios: Sequence[SpeedRatio]) -> str:
    """Where the sparse kernels lost to the dense ones, said in the note too."""
    parts = [
        f"{phase} at batch {q.batch_size} ({value:.3f}x)"
        for phase in ("prefill", "decode")
        for q in ratios
        if (value := getattr(q, phase)) > 1
    ]
    return f" SLOWER than the dense kernels: {', '.join(parts)}." if parts else ""


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
