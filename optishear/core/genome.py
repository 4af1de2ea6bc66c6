"""The genome of the OptiShear meta metric: which transform and coefficient each factor takes.

score = alpha(|W|) * F1(|W|) * beta(X) * F2(sqrt(X)) * rho^h; a genome names F1, F2 (7
transforms each), alpha, beta (7 coefficients each) and h, the exponent of a second-order term
(0, 1/2 or 1): 7**4 * 3 = 7,203 genomes, Wanda's being all-identity with h = 0. The paper's
first-order space (h = 0, 2,401 genomes) keeps its indices.

rho_j = 1 / (H_jj [H^-1]_jj), with H = X X^T the damped input Hessian, is the share of input j's
energy that the other inputs cannot explain (1 for an input uncorrelated with the rest). It
brings SparseGPT's saliency into the space: the OBS saliency w^2 / [H^-1]_jj ranks as
|W| * sqrt(X) * rho^(1/2), and SparseGPT's mask criterion w^2 / [H^-1]_jj^2 as |W| * X * rho.

Plain data, no torch: configs and the API name genomes without loading the maths
(optishear.methods.meta scores them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optishear.core.errors import ConfigError

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
# exponents of rho; "none" first, so that every first-order genome keeps its index
HESSIAN_TERMS = ("none", "sqrt_rho", "rho")
HESSIAN_EXPONENTS = {"none": 0.0, "sqrt_rho": 0.5, "rho": 1.0}
N_FIRST_ORDER = len(TRANSFORMS) ** 2 * len(COEFFICIENTS) ** 2
N_GENOMES = N_FIRST_ORDER * len(HESSIAN_TERMS)
_HESSIAN_TEXT = {"none": "", "sqrt_rho": "rho^(1/2)", "rho": "rho"}

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


@dataclass(frozen=True, slots=True)
class Genome:
    """Indices into TRANSFORMS (f1 on |W|, f2 on sqrt(X)), COEFFICIENTS (alpha, beta) and
    HESSIAN_TERMS (h)."""

    f1: int = 0
    f2: int = 0
    alpha: int = 0
    beta: int = 0
    h: int = 0

    def __post_init__(self) -> None:
        for field, value, options in (
            ("f1", self.f1, TRANSFORMS),
            ("f2", self.f2, TRANSFORMS),
            ("alpha", self.alpha, COEFFICIENTS),
            ("beta", self.beta, COEFFICIENTS),
            ("h", self.h, HESSIAN_TERMS),
        ):
            if not isinstance(value, int) or not 0 <= value < len(options):
                raise ConfigError(f"genome {field} must be an index in 0..{len(options) - 1}")

    @classmethod
    def from_names(cls, f1: str, f2: str, alpha: str, beta: str, h: str = "none") -> Genome:
        try:
            return cls(
                TRANSFORMS.index(f1),
                TRANSFORMS.index(f2),
                COEFFICIENTS.index(alpha),
                COEFFICIENTS.index(beta),
                HESSIAN_TERMS.index(h),
            )
        except ValueError as exc:
            raise ConfigError(
                f"bad genome names; transforms: {TRANSFORMS}, coefficients: {COEFFICIENTS}, "
                f"second-order terms (h): {HESSIAN_TERMS}"
            ) from exc

    @classmethod
    def parse(cls, text: str) -> Genome:
        """'f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum,h=rho' (missing keys keep Wanda's
        choice)."""
        names = {"f1": "identity", "f2": "identity", "alpha": "one", "beta": "one", "h": "none"}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in names:
                raise ConfigError(
                    f"bad genome item {part!r}: expected f1=, f2=, alpha=, beta= or h= entries"
                )
            names[key.strip()] = value.strip()
        return cls.from_names(**names)

    @classmethod
    def from_index(cls, index: int) -> Genome:
        if not 0 <= index < N_GENOMES:
            raise ConfigError(f"genome index must be in 0..{N_GENOMES - 1}")
        h, index = divmod(index, N_FIRST_ORDER)
        index, beta = divmod(index, len(COEFFICIENTS))
        index, alpha = divmod(index, len(COEFFICIENTS))
        f1, f2 = divmod(index, len(TRANSFORMS))
        return cls(f1, f2, alpha, beta, h)

    @property
    def index(self) -> int:
        first = ((self.f1 * len(TRANSFORMS) + self.f2) * len(COEFFICIENTS) + self.alpha) * len(
            COEFFICIENTS
        ) + self.beta
        return first + N_FIRST_ORDER * self.h

    @property
    def second_order(self) -> bool:
        """Whether scoring needs the inverse Hessian (h is not 'none')."""
        return self.h != 0

    @property
    def exponent(self) -> float:
        """The exponent of rho."""
        return HESSIAN_EXPONENTS[HESSIAN_TERMS[self.h]]

    def names(self) -> dict[str, str]:
        return {
            "f1": TRANSFORMS[self.f1],
            "f2": TRANSFORMS[self.f2],
            "alpha": COEFFICIENTS[self.alpha],
            "beta": COEFFICIENTS[self.beta],
            "h": HESSIAN_TERMS[self.h],
        }

    def spec(self) -> str:
        """The text `parse` reads back: 'f1=identity,f2=identity,alpha=one,beta=one'.

        'h=' is written only for a second-order genome, so that a first-order genome is
        spelled as before and stored configs of earlier searches stay equal (resumable).
        """
        return ",".join(
            f"{k}={v}" for k, v in self.names().items() if k != "h" or self.second_order
        )

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
            _HESSIAN_TEXT[n["h"]],
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
            self.h,  # rho is a per-input factor: it changes rankings within a row
        )


def canonical_genomes(*, second_order: bool = True) -> list[Genome]:
    """One genome per row-canonical class (ascending index): every distinct per-row or N:M
    ranking of the space, first-order only or with the second-order terms."""
    count = N_GENOMES if second_order else N_FIRST_ORDER
    return sorted(
        {Genome.from_index(i).row_canonical() for i in range(count)}, key=lambda g: g.index
    )


WANDA_GENOME = Genome()
