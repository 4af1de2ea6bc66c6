"""The OptiShear meta pruning metric: a genome picks how weights and activations are combined.

score = alpha(|W|) * F1(|W|) * beta(X) * F2(sqrt(X)), with X Wanda's per-input-channel mean of
squared activations. F1, F2 are element-wise transforms and alpha, beta normalising coefficients
(7 choices each, 7**4 = 2,401 genomes); the all-identity genome is Wanda. Every factor is
positive, so scores are built and compared in log space: exp and products never overflow,
log(0) is clamped, and every genome gives a finite, valid ranking. float32 is enough there
(an exp term of 1e3 still resolves log-differences of 1e-4) and halves the memory traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from optishear.errors import ConfigError

TRANSFORMS = ("identity", "sqrt", "square", "exp", "log", "sigmoid", "softmax")
COEFFICIENTS = (
    "one",
    "inv_row_sum",
    "inv_col_sum",
    "inv_row_col_sum",
    "inv_total_sum",
    "inv_mean",
    "inv_fro",
)
N_GENOMES = len(TRANSFORMS) ** 2 * len(COEFFICIENTS) ** 2

_TRANSFORM_TEXT = {
    "identity": "{}",
    "sqrt": "sqrt({})",
    "square": "({})^2",
    "exp": "exp({})",
    "log": "log(1+{})",
    "sigmoid": "sigmoid({})",
    "softmax": "softmax_row({})",
}
_COEFF_TEXT = {
    "one": "",
    "inv_row_sum": "1/rowsum({})",
    "inv_col_sum": "1/colsum({})",
    "inv_row_col_sum": "1/(rowsum({0})+colsum({0}))",
    "inv_total_sum": "1/sum({})",
    "inv_mean": "1/mean({})",
    "inv_fro": "1/||{}||_F",
}
# Coefficients that are constant along a row when applied to |W| (d_out, d_in) or to X as a
# (1, d_in) row: they scale whole rows and cannot change a per-row (or N:M) ranking.
_ROW_CONSTANT_ALPHA = {"one", "inv_row_sum", "inv_total_sum", "inv_mean", "inv_fro"}
_ROW_CONSTANT_BETA = {"one", "inv_row_sum", "inv_total_sum", "inv_mean", "inv_fro"}

_LOG_TINY = math.log(1e-30)  # finite in float32


@dataclass(frozen=True, slots=True)
class Genome:
    """Indices into TRANSFORMS (f1 on |W|, f2 on sqrt(X)) and COEFFICIENTS (alpha, beta)."""

    f1: int = 0
    f2: int = 0
    alpha: int = 0
    beta: int = 0

    def __post_init__(self) -> None:
        for field, value, options in (
            ("f1", self.f1, TRANSFORMS),
            ("f2", self.f2, TRANSFORMS),
            ("alpha", self.alpha, COEFFICIENTS),
            ("beta", self.beta, COEFFICIENTS),
        ):
            if not isinstance(value, int) or not 0 <= value < len(options):
                raise ConfigError(f"genome {field} must be an index in 0..{len(options) - 1}")

    @classmethod
    def from_names(cls, f1: str, f2: str, alpha: str, beta: str) -> Genome:
        try:
            return cls(
                TRANSFORMS.index(f1),
                TRANSFORMS.index(f2),
                COEFFICIENTS.index(alpha),
                COEFFICIENTS.index(beta),
            )
        except ValueError as exc:
            raise ConfigError(
                f"bad genome names; transforms: {TRANSFORMS}, coefficients: {COEFFICIENTS}"
            ) from exc

    @classmethod
    def parse(cls, text: str) -> Genome:
        """'f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum' (missing keys keep Wanda's choice)."""
        names = {"f1": "identity", "f2": "identity", "alpha": "one", "beta": "one"}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in names:
                raise ConfigError(
                    f"bad genome item {part!r}: expected f1=, f2=, alpha= or beta= entries"
                )
            names[key.strip()] = value.strip()
        return cls.from_names(**names)

    @classmethod
    def from_index(cls, index: int) -> Genome:
        if not 0 <= index < N_GENOMES:
            raise ConfigError(f"genome index must be in 0..{N_GENOMES - 1}")
        index, beta = divmod(index, len(COEFFICIENTS))
        index, alpha = divmod(index, len(COEFFICIENTS))
        f1, f2 = divmod(index, len(TRANSFORMS))
        return cls(f1, f2, alpha, beta)

    @property
    def index(self) -> int:
        return ((self.f1 * len(TRANSFORMS) + self.f2) * len(COEFFICIENTS) + self.alpha) * len(
            COEFFICIENTS
        ) + self.beta

    def names(self) -> dict[str, str]:
        return {
            "f1": TRANSFORMS[self.f1],
            "f2": TRANSFORMS[self.f2],
            "alpha": COEFFICIENTS[self.alpha],
            "beta": COEFFICIENTS[self.beta],
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.names(), "index": self.index, "formula": self.formula()}

    def formula(self) -> str:
        """Readable formula, e.g. '|W| * sqrt(X)' for Wanda."""
        n = self.names()
        parts = [
            _COEFF_TEXT[n["alpha"]].format("|W|"),
            _TRANSFORM_TEXT[n["f1"]].format("|W|"),
            _COEFF_TEXT[n["beta"]].format("X"),
            _TRANSFORM_TEXT[n["f2"]].format("sqrt(X)"),
        ]
        text = " * ".join(p for p in parts if p)
        return (
            text.replace("sqrt(sqrt(X))", "X^(1/4)")
            .replace("(sqrt(X))^2", "X")
            .replace("|||W|||", "||W||")
        )

    def row_canonical(self) -> Genome:
        """An equivalent genome under per-row or N:M comparison (same masks, fewer variants).

        Row-constant coefficients become 'one'; a row softmax equals exp up to a per-row factor.
        """
        softmax, exp = TRANSFORMS.index("softmax"), TRANSFORMS.index("exp")
        n = self.names()
        return Genome(
            exp if self.f1 == softmax else self.f1,
            exp if self.f2 == softmax else self.f2,
            0 if n["alpha"] in _ROW_CONSTANT_ALPHA else self.alpha,
            0 if n["beta"] in _ROW_CONSTANT_BETA else self.beta,
        )


WANDA_GENOME = Genome()


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


def meta_log_score(W: Tensor, act_sq: Tensor, genome: Genome) -> Tensor:
    """log of the meta-metric score of every weight, (..., d_out, d_in) float32.

    W is (d_out, d_in) with act_sq (d_in,), or a stack (B, d_out, d_in) with act_sq (B, d_in):
    one launch of each kernel for many layers (what keeps a GPU busy on small models).
    """
    n = genome.names()
    A = W.detach().abs().float()  # (..., d_out, d_in)
    X = act_sq.detach().float().clamp_min(0).unsqueeze(-2)  # (..., 1, d_in): a row of stats
    return (
        log_coefficient(n["alpha"], A)
        + log_transform(n["f1"], A)
        + log_coefficient(n["beta"], X)
        + log_transform(n["f2"], X.sqrt())
    )
