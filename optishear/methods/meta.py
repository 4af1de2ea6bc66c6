"""The OptiShear meta pruning metric: a genome picks how weights and activations are combined.

score = alpha(|W|) * F1(|W|) * beta(X) * F2(sqrt(X)) * rho^h, with X Wanda's per-input-channel
mean of squared activations and rho the per-input second-order term of optishear.core.genome
(1 / (H_jj [H^-1]_jj), from `optishear.methods.stats.hessian_rho`). F1, F2 are element-wise transforms,
alpha, beta normalising coefficients (7 choices each) and h an exponent (0, 1/2, 1); the
all-identity genome with h = 0 is Wanda. Every factor is
positive, so scores are built and compared in log space: exp and products never overflow,
log(0) is clamped, and every genome gives a finite, valid ranking. float32 is enough there
(an exp term of 1e3 still resolves log-differences of 1e-4) and halves the memory traffic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from optishear.core.errors import ConfigError
from optishear.core.genome import Genome

_LOG_TINY = math.log(1e-30)  # finite in float32


def _log(v: Tensor) -> Tensor:
    return torch.log(v).clamp_min(_LOG_TINY)


def log_transform(name: str, v: Tensor) -> Tensor:
    """log F(v) for v >= 0, computed without overflow; softmax runs along the last dim."""
    if name == "identity":
        return _log(v)
    if name == "sqrt":
        return 0.5 * _log(v)
    if name == "square":
        return 2.0 * _log(v)
    if name == "exp":
        return v
    if name == "log":
        return _log(torch.log1p(v))
    if name == "sigmoid":
        return F.logsigmoid(v)
    if name == "softmax":
        return torch.log_softmax(v, dim=-1)
    raise ConfigError(f"unknown transform {name!r}")


def log_coefficient(name: str, M: Tensor) -> Tensor:
    """log of a positive normalising coefficient of the non-negative matrix M (rows, cols).

    M may carry leading batch dimensions (a stack of equally shaped matrices): every
    coefficient is then taken per matrix.
    """
    if name == "one":
        return torch.zeros((), dtype=M.dtype, device=M.device)
    if name == "inv_row_sum":
        return -_log(M.sum(dim=-1, keepdim=True))
    if name == "inv_col_sum":
        return -_log(M.sum(dim=-2, keepdim=True))
    if name == "inv_row_col_sum":
        return -_log(M.sum(dim=-1, keepdim=True) + M.sum(dim=-2, keepdim=True))
    if name == "inv_total_sum":
        return -_log(M.sum(dim=(-2, -1), keepdim=True))
    if name == "inv_mean":
        return -_log(M.mean(dim=(-2, -1), keepdim=True))
    if name == "inv_fro":
        return -_log(torch.linalg.vector_norm(M, dim=(-2, -1), keepdim=True))
    raise ConfigError(f"unknown coefficient {name!r}")


def meta_log_score(W: Tensor, act_sq: Tensor, genome: Genome, rho: Tensor | None = None) -> Tensor:
    """log of the meta-metric score of every weight, (..., d_out, d_in) float32.

    W is (d_out, d_in) with act_sq (and rho) (d_in,), or a stack (B, d_out, d_in) with act_sq
    (B, d_in): one launch of each kernel for many layers (what keeps a GPU busy on small
    models). A second-order genome needs `rho`.
    """
    A = W.detach().abs().float()  # (..., d_out, d_in)
    return log_coefficient(genome.names()["alpha"], A) + log_score_terms(A, act_sq, genome, rho)


def log_score_terms(A: Tensor, act_sq: Tensor, genome: Genome, rho: Tensor | None = None) -> Tensor:
    """Every term of `meta_log_score` but alpha's coefficient, for |W| = A: the terms a row of A
    decides alone, so that rows taken from a matrix (with its coefficient) score as in it."""
    n = genome.names()
    X = act_sq.detach().float().clamp_min(0).unsqueeze(-2)  # (..., 1, d_in): a row of stats
    X_term = log_coefficient(n["beta"], X) + log_transform(n["f2"], X.sqrt())
    if genome.second_order:
        if rho is None:
            raise ConfigError(
                f"genome {genome.spec()} is second order: scoring it needs input Hessians"
            )
        X_term = X_term + genome.exponent * _log(rho.detach().float().unsqueeze(-2))
    return log_transform(n["f1"], A) + X_term
