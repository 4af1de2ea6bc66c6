"""Weight reconstruction with the mask fixed: a least-squares refit of each row.

For one output row w and calibration inputs X, the survivors S that best reproduce the dense
output minimise ||X_S w_S - X w||^2, whose solution is H_SS w_S = (H w)_S with H = X^T X.
SparseGPT's left-to-right OBS update never revisits a column once passed, so with an imposed
mask it leaves error that this solve removes (see tests/unit/test_reconstruct.py).

Two solvers. The exact one factors every row's own k x k system: about d_out * k^3 / 3 per
layer for k survivors a row, fine for narrow layers and hopeless for wide ones (a 4,096-wide
layer at 50% costs 2,048^3 / 3 per row). Conjugate gradients share the layer's one Gram
matrix across rows: an iteration is one (d_out, d_in) x (d_in, d_in) product, masked, for
all rows at once. They start from the dense survivors (already close to the optimum) and are
preconditioned by the damped inverse Hessian restricted to each row's survivors, (H^-1)_SS:
one inversion per layer (as SparseGPT's), then two products a step, and 9 to 21 steps on the
bundled model to reach the exact solve's error within 0.05%, where the diagonal alone needed
up to 63 (bench/HISTORY.md, issue 16). CG is the default; the exact solve is the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from optishear.core.errors import ConfigError
from optishear.methods.sparsegpt import damped_inverse

Solver = Literal["exact", "cg"]
CG_TOL = 1e-3  # relative residual of every row; its cost: bench/HISTORY.md (issue 16)
CG_MAX_ITER = 200


@torch.no_grad()
def least_squares_refit(
    weight: Tensor,
    H: Tensor,
    mask: Tensor,
    *,
    percdamp: float = 0.01,
    solver: Solver = "cg",
    tol: float = CG_TOL,
    max_iter: int = CG_MAX_ITER,
    max_batch_bytes: int = 256 << 20,
    start: Tensor | None = None,
) -> int:
    """Update the surviving weights of `weight` (d_out, d_in) in place; pruned ones become 0.
    Returns the CG iterations run (0 for the exact solve).

    CG starts from the survivors of `start` where given (a solution at a nearby damping needs
    fewer steps), else from the dense ones.

    `H` (d_in, d_in) is the layer's input Gram matrix (any positive scale). `percdamp` times
    its mean diagonal is a ridge toward the dense survivors, (H_SS + d I) w_S = (H w)_S + d w_S:
    it keeps the solve well-posed where channels never fire or move together, and a large
    damping means "keep the dense weights", never "shrink them to zero" (a plain ridge toward
    zero made held-out perplexity far worse on SmolLM2: bench/HISTORY.md).
    """
    keep = ~mask
    W = weight.detach().float()
    Hf = H.detach().float()
    damp = percdamp * torch.mean(torch.diag(Hf)).clamp_min(1e-8)
    counts = keep.sum(dim=1)
    k = int(counts.max())
    if k == 0:
        weight.zero_()
        return 0
    if solver == "cg":
        x0 = W if start is None else start.detach().float()
        out, iterations = _refit_cg(
            W, Hf, keep, damp, percdamp, tol=tol, max_iter=max_iter, start=x0
        )
        weight.copy_(out.to(weight.dtype))
        return iterations
    if not torch.equal(counts, torch.full_like(counts, k)):
        raise ConfigError(
            "the exact least-squares refit needs the same number of survivors in every row "
            "(solver 'cg' takes any mask)"
        )
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
    return 0


def _refit_cg(
    W: Tensor,
    H: Tensor,
    keep: Tensor,
    damp: Tensor,
    percdamp: float,
    *,
    tol: float,
    max_iter: int,
    start: Tensor,
) -> tuple[Tensor, int]:
    """Preconditioned CG on every row at once: (H_SS + d I) x_S = (H w)_S + d w_S, from the
    survivors of `start`."""
    K = keep.to(W.dtype)

    def apply(P: Tensor) -> Tensor:  # (H_SS + d I) on each row's survivors, zero elsewhere
        return (P @ H + damp * P) * K

    b = (W @ H + damp * W) * K
    x = start * K  # the dense survivors need fewer steps than zeros; a nearby solution fewer still
    r = b - apply(x)
    # (H^-1)_SS is symmetric positive definite (a principal block of an SPD matrix) and close
    # to (H_SS)^-1 wherever the pruned inputs explain little of the kept ones.
    h_inv, _ = damped_inverse(H, percdamp)

    def precondition(R: Tensor) -> Tensor:
        return (R @ h_inv) * K

    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=1)
    b_norm = b.norm(dim=1).clamp_min(torch.finfo(W.dtype).tiny)
    tiny = torch.finfo(W.dtype).tiny
    iterations = 0
    while iterations < max_iter and float((r.norm(dim=1) / b_norm).max()) > tol:
        Ap = apply(p)
        alpha = rz / (p * Ap).sum(dim=1).clamp_min(tiny)
        x.add_(alpha[:, None] * p)
        r.sub_(alpha[:, None] * Ap)
        z = precondition(r)
        rz_next = (r * z).sum(dim=1)
        p = z + (rz_next / rz.clamp_min(tiny))[:, None] * p
        rz = rz_next
        iterations += 1
    return x * K, iterations
