"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order weight reconstruction.

Columns are processed left to right in blocks; each pruned weight's error is spread over the
not-yet-processed columns through the Cholesky factor of the inverse Hessian (OBS update).
"""

from __future__ import annotations

import torch
from torch import Tensor

from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask


def damped_inverse(H: Tensor, percdamp: float = 0.01) -> tuple[Tensor, Tensor]:
    """(H + damp I)^-1 and the damped diagonal, damp = percdamp x mean(diag H), retrying with
    stronger damping while the Cholesky factorisation fails."""
    diag_mean = torch.mean(torch.diag(H)).clamp_min(1e-8)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    damp = percdamp
    for _ in range(6):
        try:
            damped = H + damp * diag_mean * eye
            return torch.cholesky_inverse(torch.linalg.cholesky(damped)), torch.diag(damped)
        except torch.linalg.LinAlgError:
            damp *= 10
    raise torch.linalg.LinAlgError("Hessian is not positive definite even with strong damping")


def _inverse_hessian_factor(H: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp I)^-1."""
    return torch.linalg.cholesky(damped_inverse(H, percdamp)[0], upper=True)


def hessian_rho(H: Tensor, percdamp: float = 0.01) -> Tensor:
    """rho_j = 1 / (H_jj [H^-1]_jj) of the damped Hessian, in (0, 1], float32 (d_in,).

    The share of input j's energy that the other inputs cannot explain: a second-order genome
    scales Wanda's activation term by a power of it (optishear.core.genome). Dead inputs (H_jj = 0)
    get 1: their weights already score 0.
    """
    H = H.detach().float()
    dead = torch.diag(H) == 0
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1.0
    inv, diag = damped_inverse(H, percdamp)
    return (1.0 / (diag * torch.diag(inv))).clamp(1e-12, 1.0)


@torch.no_grad()
def sparsegpt_prune(
    weight: Tensor,
    H: Tensor,
    ratio: float,
    pattern: Pattern,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    fixed_mask: Tensor | None = None,
) -> Tensor:
    """Prune `weight` (d_out, d_in) in place; returns the mask (True = pruned).

    With `fixed_mask`, the mask is not chosen but imposed, and only the surviving weights are
    updated (weight reconstruction after masking). Ties in the saliency go to the lower index,
    as everywhere else (`prune_mask`).
    """
    if pattern.structured:  # an N:M group must never straddle two column blocks
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    W = weight.detach().float().clone()  # (d_out, d_in)
    _d_out, d_in = W.shape
    H = H.detach().float().clone()  # (d_in, d_in)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = _inverse_hessian_factor(H, percdamp)
    mask = torch.zeros_like(W, dtype=torch.bool) if fixed_mask is None else fixed_mask.clone()

    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if fixed_mask is None and not pattern.structured:
            saliency = W[:, i1:i2].pow(2) / d.pow(2)[None, :]
            mask[:, i1:i2] = prune_mask(saliency, ratio, pattern, per_matrix=True)
        choose = fixed_mask is None and pattern.structured
        Q1, Err1 = _obs_block(W[:, i1:i2], mask[:, i1:i2], Hinv1, pattern if choose else None)
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    W[mask] = 0.0
    weight.copy_(W.to(weight.dtype))
    return mask


def _obs_block(
    W1: Tensor, mask1: Tensor, Hinv1: Tensor, choose: Pattern | None
) -> tuple[Tensor, Tensor]:
    """One column block, left to right: each column's pruned weights are zeroed and their error,
    scaled by the inverse Hessian factor's diagonal, is spread over the block's later columns.
    Returns the block's pruned weights and the scaled errors (both (d_out, b)); with `choose`
    (an N:M pattern) the mask of every group of M columns is chosen, in `mask1`, from the
    weights as updated so far.

    The block is worked on transposed, one contiguous row per column, so that a column costs
    two kernel calls (its error, then a rank-1 update of the columns after it): this loop runs
    once per input column of every layer, and its per-call overhead was most of a prune.
    """
    Wt = W1.t().contiguous()  # (b, d_out)
    Mt = mask1.t().contiguous()  # (b, d_out), True = pruned
    inv_d = 1.0 / torch.diag(Hinv1)
    scale = Mt.to(Wt.dtype) * inv_d[:, None]  # err = (w - q) / d = w * pruned / d
    Et = torch.zeros_like(Wt)
    b = Wt.shape[0]
    rows, scales, errs = Wt.unbind(0), scale.unbind(0), Et.unbind(0)
    for i in range(b):
        if choose is not None and i % choose.m == 0:
            group = Wt[i : i + choose.m].t().pow(2) * inv_d[i : i + choose.m].pow(2)[None, :]
            chosen = prune_mask(group, 0.0, choose).t()  # (m, d_out)
            Mt[i : i + choose.m] = chosen
            scale[i : i + choose.m] = chosen.to(Wt.dtype) * inv_d[i : i + choose.m, None]
        torch.mul(rows[i], scales[i], out=errs[i])
        if i + 1 < b:
            Wt[i + 1 :].addr_(Hinv1[i, i + 1 :], errs[i], alpha=-1.0)
    if choose is not None:
        mask1.copy_(Mt.t())
    return Wt.masked_fill_(Mt, 0.0).t(), Et.t()
