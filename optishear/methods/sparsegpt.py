"""SparseGPT (Frantar & Alistarh, 2023): prune with second-order weight reconstruction.

Columns are processed left to right in blocks; each pruned weight's error is spread over the
not-yet-processed columns through the Cholesky factor of the inverse Hessian (OBS update).
"""

from __future__ import annotations

import torch
from torch import Tensor

from optishear.core.patterns import Pattern
from optishear.methods.masks import n_pruned


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
    updated (weight reconstruction after masking).
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
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if fixed_mask is None and not pattern.structured:
            saliency = W1.pow(2) / d.pow(2)[None, :]
            k = n_pruned(saliency.numel(), ratio)
            block_mask = torch.zeros_like(W1, dtype=torch.bool)
            if k:
                idx = torch.topk(saliency.flatten(), k, largest=False).indices
                block_mask.view(-1)[idx] = True
            mask[:, i1:i2] = block_mask
        for i in range(i2 - i1):
            col = i1 + i
            if fixed_mask is None and pattern.structured and col % pattern.m == 0:
                saliency = W1[:, i : i + pattern.m].pow(2) / d[i : i + pattern.m].pow(2)[None, :]
                idx = torch.topk(saliency, pattern.n, dim=1, largest=False).indices
                mask[:, col : col + pattern.m].scatter_(1, idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask[:, col], 0.0)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    W[mask] = 0.0
    weight.copy_(W.to(weight.dtype))
    return mask
