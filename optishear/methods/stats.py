"""Activation statistics of linear-layer inputs, gathered by forward hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn


class LayerStats:
    """Sums over calibration tokens of x_j^2 (and of x x^T when a Hessian is needed).

    With `holdout` N > 1 (and a Hessian), every Nth sequence adds to `held_xtx` alone: those
    sequences give no statistic and no Hessian, only a held-aside Gram matrix on which a
    consumer can measure a layer's output error (the refit's damping is chosen so).
    """

    def __init__(
        self, d_in: int, device: torch.device | str, *, hessian: bool = False, holdout: int = 0
    ) -> None:
        self.sq_sum = torch.zeros(d_in, device=device, dtype=torch.float32)
        self.xtx = torch.zeros(d_in, d_in, device=device, dtype=torch.float32) if hessian else None
        self.held_xtx = (
            torch.zeros(d_in, d_in, device=device, dtype=torch.float32)
            if hessian and holdout > 1
            else None
        )
        self.holdout = holdout
        self.rho: Tensor | None = None  # what a consumer kept of the Hessian, when it dropped it
        self.n_seqs = 0
        self.n_held = 0
        self.n_tokens = 0

    def update(self, x: Tensor) -> None:
        """Add a batch of inputs, (batch, seq, d_in) or (tokens, d_in)."""
        if self.held_xtx is not None and x.dim() == 3:
            first = self.n_seqs + self.n_held  # the batch's first sequence, counting all
            held = [(first + i) % self.holdout == self.holdout - 1 for i in range(x.shape[0])]
            if any(held):
                flags = torch.tensor(held, device=x.device)
                h = x[flags].reshape(-1, x.shape[-1]).float()
                self.held_xtx.addmm_(h.T, h)
                self.n_held += sum(held)
                x = x[~flags]
                if x.shape[0] == 0:
                    return
        n_seqs = x.shape[0] if x.dim() == 3 else 1
        x2 = x.reshape(-1, x.shape[-1]).float()  # (tokens, d_in)
        self.sq_sum += x2.pow(2).sum(dim=0)
        if self.xtx is not None:
            self.xtx.addmm_(x2.T, x2)
        self.n_seqs += n_seqs
        self.n_tokens += x2.shape[0]

    @property
    def act_sq(self) -> Tensor:
        """Wanda's per-input-channel statistic: sum over tokens of x_j^2, per sequence."""
        return self.sq_sum / max(self.n_seqs, 1)

    @property
    def held_gram(self) -> Tensor | None:
        """X X^T over the held-aside sequences' tokens, per sequence; None without any."""
        if self.held_xtx is None or self.n_held == 0:
            return None
        return self.held_xtx / self.n_held

    @property
    def hessian(self) -> Tensor:
        """SparseGPT's H = 2 X X^T / n_seqs (the scale cancels in its relative dampening)."""
        if self.xtx is None:
            raise RuntimeError("this LayerStats was gathered without a Hessian")
        return self.xtx * (2.0 / max(self.n_seqs, 1))


@contextmanager
def recording_inputs(
    linears: Mapping[str, nn.Linear], *, hessian: bool = False, holdout: int = 0
) -> Iterator[dict[str, LayerStats]]:
    """Accumulate LayerStats for each linear while the block runs; hooks always come off."""
    stats = {
        n: LayerStats(m.in_features, m.weight.device, hessian=hessian, holdout=holdout)
        for n, m in linears.items()
    }

    def hook(stat: LayerStats, _m: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        stat.update(args[0].detach())

    handles = [m.register_forward_hook(partial(hook, stats[n])) for n, m in linears.items()]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
