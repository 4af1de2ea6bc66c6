"""Pruning metrics: one function per metric, each scoring every weight of a layer."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from optishear.core.errors import UnknownMethodError

# (W: (d_out, d_in), act_sq: (d_in,) Wanda's mean squared input per channel) -> (d_out, d_in)
ScoreFn = Callable[[Tensor, Tensor], Tensor]

_METRICS: dict[str, ScoreFn] = {}


def register_metric(name: str) -> Callable[[ScoreFn], ScoreFn]:
    def add(fn: ScoreFn) -> ScoreFn:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        _METRICS[name] = fn
        return fn

    return add


def get_metric(name: str) -> ScoreFn:
    if name not in _METRICS:
        raise UnknownMethodError(f"unknown metric {name!r}; known: {', '.join(sorted(_METRICS))}")
    return _METRICS[name]


@register_metric("magnitude")
def magnitude_score(W: Tensor, act_sq: Tensor) -> Tensor:  # noqa: ARG001 (shared signature)
    return W.abs().float()


@register_metric("wanda")
def wanda_score(W: Tensor, act_sq: Tensor) -> Tensor:
    """|W_ij| * ||X_j||: Sun et al. 2023."""
    return W.abs().float() * act_sq.float().sqrt()[None, :]


@register_metric("ria")
def ria_score(W: Tensor, act_sq: Tensor) -> Tensor:
    """Relative importance times ||X_j||^0.5: Zhang et al. 2024 (RIA, a = 0.5)."""
    A = W.abs().float()  # (d_out, d_in)
    col = A.sum(dim=0, keepdim=True).clamp_min(1e-12)  # over outputs, per input j
    row = A.sum(dim=1, keepdim=True).clamp_min(1e-12)  # over inputs, per output i
    return (A / col + A / row) * act_sq.float().clamp_min(0).pow(0.25)[None, :]
