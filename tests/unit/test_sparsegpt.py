"""SparseGPT's column loop against the algorithm as the paper writes it (Frantar & Alistarh,
2023, Algorithm 1): a plain per-column loop over the block, kept here as the reference."""

import pytest
import torch

from optishear.core.patterns import Pattern
from optishear.methods.sparsegpt import _inverse_hessian_factor, sparsegpt_prune


def _reference(W: torch.Tensor, H: torch.Tensor, ratio: float, pattern: Pattern, fixed=None):
    W = W.clone()
    d_in = W.shape[1]
    U = _inverse_hessian_factor(H, 0.01)
    mask = torch.zeros_like(W, dtype=torch.bool) if fixed is None else fixed.clone()
    bs = 128 - 128 % pattern.m if pattern.structured else 128
    for i1 in range(0, d_in, bs):
        i2 = min(i1 + bs, d_in)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        d = torch.diag(U1)
        if fixed is None and not pattern.structured:
            sal = (W1**2 / d**2).flatten()
            k = round(sal.numel() * ratio)
            block = torch.zeros(W1.numel(), dtype=torch.bool)
            block[torch.topk(sal, k, largest=False).indices] = True
            mask[:, i1:i2] = block.view_as(W1)
        for i in range(i2 - i1):
            if fixed is None and pattern.structured and i % pattern.m == 0:
                sal = W1[:, i : i + pattern.m] ** 2 / d[i : i + pattern.m] ** 2
                idx = torch.topk(sal, pattern.n, dim=1, largest=False).indices
                mask[:, i1 + i : i1 + i + pattern.m].scatter_(1, idx, True)
            w = W1[:, i]
            q = w.masked_fill(mask[:, i1 + i], 0.0)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    W[mask] = 0.0
    return W, mask


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4), Pattern(4, 8)], ids=str)
@pytest.mark.parametrize("fixed", [False, True], ids=["chosen", "fixed"])
def test_matches_the_papers_column_loop(pattern: Pattern, fixed: bool) -> None:
    g = torch.Generator().manual_seed(3)
    d_in = 320  # three blocks, the last one short
    X = torch.randn(640, d_in // 2, generator=g) @ torch.randn(d_in // 2, d_in, generator=g)
    X += 0.1 * torch.randn(640, d_in, generator=g)
    H = X.T @ X / 640
    W = torch.randn(48, d_in, generator=g)
    imposed = (torch.rand(48, d_in, generator=g) < 0.5) if fixed else None
    want_w, want_mask = _reference(W, H, 0.5, pattern, imposed)
    got_w = W.clone()
    got_mask = sparsegpt_prune(got_w, H, 0.5, pattern, fixed_mask=imposed)
    assert torch.equal(got_mask, want_mask)
    assert int(got_mask.sum()) == W.numel() // 2 or fixed
    torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-4)
