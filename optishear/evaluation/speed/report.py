"""What a speed measurement takes and gives: its config, and the report of latencies per model and
batch size with their ratios, verdicts and the note on which kernels ran."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from optishear.core.errors import ConfigError, DataError

KERNELS = ("auto", "dense", "semi_structured")


VARIANTS = ("dense", "pruned")


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


def slower_sentence(ratios: Sequence[SpeedRatio]) -> str:
    """Where the sparse kernels lost to the dense ones, said in the note too."""
    parts = [
        f"{phase} at batch {q.batch_size} ({value:.3f}x)"
        for phase in ("prefill", "decode")
        for q in ratios
        if (value := getattr(q, phase)) > 1
    ]
    return f" SLOWER than the dense kernels: {', '.join(parts)}." if parts else ""
