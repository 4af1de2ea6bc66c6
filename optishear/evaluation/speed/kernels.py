"""Which sparse kernels a pruned model can use: its pattern read from its weights, why no sparse
kernel applies (device, dtype, pattern), and the swap of 2:4 decoder linears onto PyTorch's
semi-structured kernels and back."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from optishear.model.blocks import iter_linears

_DENSE_BELOW = 0.01  # a layer with fewer zeros than this was kept dense (de-quantised weights


# hold a few exact zeros: 0.03% in the bundled SmolLM2)
_HALF = (torch.float16, torch.bfloat16)


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
