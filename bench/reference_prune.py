"""Reference Wanda and magnitude pruning, written from the papers, to cross-check optishear.

Nothing here is shared with optishear's pruning code (layers, stats, masks, prune, methods,
metrics); the mechanism is deliberately different so that a common bug cannot hide in both:

* inputs of block i come from a full `model(input_ids)` forward pass (blocks 0..i-1 already
  pruned, block i still dense) that a forward hook on block i cuts short, instead of replaying
  captured block inputs block by block;
* ||X_j||^2 is accumulated in float64 over all calibration tokens in one batch;
* masks come from a stable `torch.sort` instead of `torch.topk`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _StopAfterBlock(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by our hook on block i: nothing after block i is needed, so stop the forward."""


def _linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}


def ascending(score: Tensor, dim: int, ties_last: bool = False) -> Tensor:
    """Indices that sort `score` along `dim`; equal scores in index order (or reversed).

    Which of several tied weights goes is arbitrary in the papers; `ties_last` flips that
    choice, to measure how much it matters (the bundled model has many exactly equal |W|).
    """
    if not ties_last:
        return torch.sort(score, dim=dim, stable=True).indices
    return score.shape[dim] - 1 - torch.sort(score.flip(dim), dim=dim, stable=True).indices


def lowest_per_row(score: Tensor, k: int, ties_last: bool = False) -> Tensor:
    """True at the k lowest scores of every row (Wanda compares weights per output, §3)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, ascending(score, 1, ties_last)[:, :k], True)  # (d_out, d_in)
    return mask


def lowest_per_group(score: Tensor, n: int, m: int, ties_last: bool = False) -> Tensor:
    """True at the n lowest scores of every group of m consecutive inputs in a row (N:M)."""
    d_out, d_in = score.shape
    groups = score.reshape(d_out, d_in // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, ascending(groups, 2, ties_last)[..., :n], True)
    return mask.reshape(d_out, d_in)


def magnitude_mask(
    W: Tensor, ratio: float, n: int = 0, m: int = 0, ties_last: bool = False
) -> Tensor:
    """Magnitude pruning: lowest |W| of the whole matrix, or n lowest of each group for n:m."""
    A = W.detach().double().abs()  # (d_out, d_in)
    if m:
        return lowest_per_group(A, n, m, ties_last)
    flat = torch.zeros(A.numel(), dtype=torch.bool, device=A.device)
    flat[ascending(A.flatten(), 0, ties_last)[: round(ratio * A.numel())]] = True
    return flat.reshape(A.shape)


def wanda_mask(
    W: Tensor, sq_norm: Tensor, ratio: float, n: int = 0, m: int = 0, ties_last: bool = False
) -> Tensor:
    """Wanda (Sun et al. 2023, eq. 1): S_ij = |W_ij| * ||X_j||_2, compared within each row."""
    S = W.detach().double().abs() * sq_norm.double().sqrt()[None, :]  # (d_out, d_in)
    if m:
        return lowest_per_group(S, n, m, ties_last)
    return lowest_per_row(S, round(ratio * S.shape[1]), ties_last)


@torch.no_grad()
def input_sq_norms(model: nn.Module, idx: int, input_ids: Tensor) -> dict[str, Tensor]:
    """||X_j||^2 (sum over all calibration tokens) of the input of every linear in block idx."""
    block = model.model.layers[idx]
    sums: dict[str, Tensor] = {}

    def record(name: str, x: Tensor) -> None:
        sq = x.detach().double().pow(2).reshape(-1, x.shape[-1]).sum(dim=0)  # (d_in,)
        sums[name] = sums[name] + sq if name in sums else sq

    def stop(*_: object) -> None:
        raise _StopAfterBlock

    handles = [
        lin.register_forward_hook(lambda _m, args, _out, name=name: record(name, args[0]))
        for name, lin in _linears(block).items()
    ]
    handles.append(block.register_forward_hook(stop))
    try:
        model(input_ids.to(next(model.parameters()).device), use_cache=False)
    except _StopAfterBlock:
        pass
    finally:
        for h in handles:
            h.remove()
    return sums


@torch.no_grad()
def reference_prune(
    model: nn.Module,
    method: str,
    input_ids: Tensor | None,
    ratio: float,
    n: int = 0,
    m: int = 0,
    ties_last: bool = False,
) -> dict[str, Tensor]:
    """Prune the linears of `model.model.layers` in place; returns {"i.name": mask (True = pruned)}.

    Wanda's statistics for block i are taken with blocks 0..i-1 already pruned, as in the
    paper's code; lm_head and the embeddings are never pruned.
    """
    if m and not (0 < n < m and abs(ratio - n / m) < 1e-9):
        raise ValueError(f"an {n}:{m} pattern prunes {n}/{m}, not {ratio}")
    masks: dict[str, Tensor] = {}
    for idx, block in enumerate(model.model.layers):
        linears = _linears(block)
        if method == "wanda":
            if input_ids is None:
                raise ValueError("wanda needs calibration input ids")
            sq = input_sq_norms(model, idx, input_ids)
            block_masks = {
                k: wanda_mask(lin.weight, sq[k], ratio, n, m, ties_last)
                for k, lin in linears.items()
            }
        elif method == "magnitude":
            block_masks = {
                k: magnitude_mask(lin.weight, ratio, n, m, ties_last) for k, lin in linears.items()
            }
        else:
            raise ValueError(f"reference method must be 'wanda' or 'magnitude', got {method!r}")
        for name, lin in linears.items():  # prune only after every mask of the block is chosen
            lin.weight[block_masks[name]] = 0.0
            masks[f"{idx}.{name}"] = block_masks[name]
    return masks
