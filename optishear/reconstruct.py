"""Weight reconstruction with the mask fixed: an exact least-squares refit of each row.

For one output row w and calibration inputs X, the survivors S that best reproduce the dense
output minimise ||X_S w_S - X w||^2, whose solution is H_SS w_S = (H w)_S with H = X^T X.
SparseGPT's left-to-right OBS update never revisits a column once passed, so with an imposed
mask it leaves error that this solve removes (see tests/unit/test_reconstruct.py). Every row of
a per-row or N:M mask keeps the same number of weights, so rows are solved in batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optishear.errors import ConfigError


@torch.no_grad()
def least_squares_refit(
    weight: Tensor,
    H: Tensor,
    mask: Tensor,
    *,
    percdamp: float = 0.01,
    max_batch_bytes: int = 256 << 20,
) -> None:
    """Update the surviving weights of `weight` (d_out, d_in) in place; pruned ones become 0.

    `H` (d_in, d_in) is the layer's input Gram matrix (any positive scale). `percdamp` times
    its mean diagonal is a ridge toward the dense survivors, (H_SS + d I) w_S = (H w)_S + d w_S:
    it keeps the solve well-posed where channels never fire or move together, and a large
    damping means "keep the dense weights", never "shrink them to zero" (a plain ridge toward
    zero made held-out perplexity far worse on SmolLM2: bench/RESULTS.md).
    """
    keep = ~mask
    counts = keep.sum(dim=1)
    k = int(counts[0])
    if not torch.equal(counts, torch.full_like(counts, k)):
        raise ConfigError("least-squares refit needs the same number of survivors in every row")
    W = weight.detach().float()
    Hf = H.detach().float()
    damp = percdamp * torch.mean(torch.diag(Hf)).clamp_min(1e-8)
    if k == 0:
        weight.zero_()
        return
    # survivors' column indices per row, in order: (d_out, k)
    idx = torch.sort(
        torch.argsort(keep.to(torch.int8), dim=1, descending=True, stable=True)[:, :k]
    )[0]
    rhs = (W @ Hf).gather(1, idx) + damp * W.gather(1, idx)  # (H w)_S + d w_S, H symmetric
    eye = torch.eye(k, dtype=Hf.dtype, device=Hf.device)
    rows = max(1, max_batch_bytes // (k * k * 4))
    out = torch.zeros_like(W)
    for r0 in range(0, W.shape[0], rows):
        sel = idx[r0 : r0 + rows]  # (b, k)
        H_SS = Hf[sel[:, :, None], sel[:, None, :]] + damp * eye  # (b, k, k)
        # LU, not Cholesky: torch's batched CPU Cholesky runs about 2.5x slower on these sizes
        sol = torch.linalg.solve(H_SS, rhs[r0 : r0 + rows, :, None])[..., 0]  # (b, k)
        out[r0 : r0 + rows].scatter_(1, sel, sol)
    weight.copy_(out.to(weight.dtype))
