"""A screen's cheapest rung: each layer's output error on a sample of its rows, no model forward.

What a low-fidelity rung costs is mostly the masks of every layer (a k-th value per row of every
weight: 1.4 s a class on the bundled model, one thread), not its short forward. Every comparison
group of a mask lies inside one output row (a row under unstructured sparsity, M inputs of a row
under N:M), so a row's mask needs only that row's scores and its layer's column statistics. The
proxy therefore masks `rows` random rows of every layer, as the engine would mask them, and
measures their output error on the dense inputs of `tokens` validation tokens, relative to those
rows' dense output. A candidate's error is the geometric mean of the relative errors over the
layers: no layer's scale drowns the others.

On the bundled model at 2:4 it ranks all 324 first-order classes with a Spearman correlation of
0.94 against their full-fidelity error, and its best 16 hold the best class, at about a tenth of
a 1 x 64-token rung's cost (bench/RESULTS.md). It sees no interaction between layers, so it only
promotes: full-fidelity rungs decide.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import log_coefficient, log_score_terms
from optishear.recipe.candidates import Evaluation

# What one candidate costs here, in full evaluations (the unit of SearchState.cost): 0.075 s
# against 4.3 s for 8 x 256 tokens on the bundled model (bench/RESULTS.md).
PROXY_COST = 0.02
_LOG_FLOOR = 1e-12  # a layer the candidate leaves (almost) intact: log stays finite


@dataclass
class _Rows:
    """One layer's sampled rows: dense weights, inputs, and the coefficients of alpha."""

    W: Tensor  # (rows, d_in) float32
    full: Tensor  # the layer's whole dense weight, for alpha's column and matrix coefficients
    X: Tensor  # (tokens, d_in) float32 inputs of the layer in the dense model
    dense_sq: float  # squared norm of the rows' dense output on X
    alpha: dict[str, Tensor] = field(default_factory=dict)

    def alpha_term(self, name: str, index: Tensor) -> Tensor:
        if name not in self.alpha:  # 3 distinct ones in the row-canonical space: kept
            c = log_coefficient(name, self.full.abs().float())
            self.alpha[name] = c[index] if c.dim() == 2 and c.shape[0] > 1 else c
        return self.alpha[name]


class LayerProxy:
    """Layer-wise proxy errors of candidates on one model, from sampled rows of every layer."""

    def __init__(
        self,
        model: nn.Module,
        linears: Sequence[nn.Linear],
        dense: Sequence[Tensor],
        act_sq: Sequence[Tensor],
        rho: Sequence[Tensor] | None,
        pattern: Pattern,
        ids: Tensor,
        *,
        rows: int = 32,
        tokens: int = 256,
        seed: int = 0,
    ) -> None:
        """`dense` and `act_sq` (and `rho`) are what the engine masks with; `ids` the validation
        sequences, whose first `tokens` tokens (across sequences) give each layer's inputs."""
        self.pattern = pattern
        self.act_sq = act_sq
        self.rho = rho
        self.n_weights = sum(W.numel() for W in dense)
        self.numel = [W.numel() for W in dense]
        inputs = _layer_inputs(model, linears, ids, tokens)
        gen = torch.Generator().manual_seed(seed)
        self.index: list[Tensor] = []
        self.layers: list[_Rows] = []
        for W, X in zip(dense, inputs, strict=True):
            idx = torch.randperm(W.shape[0], generator=gen)[:rows].sort().values.to(W.device)
            Ws = W[idx].float()
            X = X.to(W.device)
            self.index.append(idx)
            self.layers.append(_Rows(Ws, W, X, float((Ws @ X.T).square().sum())))

    @torch.no_grad()
    def evaluate(self, genome: Genome, ratio_of: Callable[[int], float]) -> Evaluation:
        """Geometric mean over the layers of the sampled rows' relative output error, with
        each layer at `ratio_of(position)` (a dense layer counts as no error)."""
        start = time.perf_counter()
        alpha = genome.names()["alpha"]
        log_sum, pruned = 0.0, 0.0
        for pos, rows in enumerate(self.layers):
            ratio = ratio_of(pos)
            pruned += ratio * self.numel[pos]
            if ratio == 0:
                log_sum += math.log(_LOG_FLOOR)
                continue
            rho = self.rho[pos] if self.rho is not None else None
            score = rows.alpha_term(alpha, self.index[pos]) + log_score_terms(
                rows.W.abs(), self.act_sq[pos].to(rows.W.device), genome, rho
            )
            cut = rows.W * prune_mask(score, ratio, self.pattern)  # the pruned weights
            err = float((cut @ rows.X.T).square().sum()) / max(rows.dense_sq, 1e-30)
            log_sum += math.log(max(err, _LOG_FLOOR))
        error = math.exp(log_sum / len(self.layers))
        return Evaluation(error, pruned / self.n_weights, 0, time.perf_counter() - start, 0)


@torch.no_grad()
def _layer_inputs(
    model: nn.Module, linears: Sequence[nn.Linear], ids: Tensor, tokens: int
) -> list[Tensor]:
    """Every linear's input on the first `tokens` tokens of `ids` (as many sequences as that
    takes), (tokens, d_in) float32 on the host; layers fed the same tensor (q, k and v) share
    one copy."""
    n_seq = min(ids.shape[0], math.ceil(tokens / ids.shape[1]))
    device = next(model.parameters()).device
    seen: dict[int, tuple[Tensor, Tensor]] = {}  # id -> (the tensor, kept so no other takes
    # its id before the forward ends, and its copy)
    got: list[Tensor | None] = [None] * len(linears)

    def hook(pos: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def grab(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            key = id(x)
            if key not in seen:
                seen[key] = (x, x.detach().reshape(-1, x.shape[-1])[:tokens].float().cpu())
            got[pos] = seen[key][1]

        return grab

    handles = [lin.register_forward_pre_hook(hook(p)) for p, lin in enumerate(linears)]
    try:
        model(ids[:n_seq].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [p for p, x in enumerate(got) if x is None]
    if missing:
        raise RuntimeError(f"the forward pass never reached layers {missing}")
    return [x for x in got if x is not None]
