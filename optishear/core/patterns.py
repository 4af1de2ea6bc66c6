"""Sparsity patterns: unstructured, or N:M along the input dimension; plain data, no torch."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from optishear.core.errors import ConfigError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Pattern:
    """Unstructured (m == 0) or N:M: N weights pruned in every M consecutive inputs of a row."""

    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        # 0:0 is the unstructured pattern; any other N:M keeps N of every M > N >= 1 (so M >= 2)
        if (self.n or self.m) and not 0 < self.n < self.m:
            raise ConfigError(f"N:M pattern needs 0 < N < M (so M >= 2), got {self.n}:{self.m}")

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """'unstructured', or 'N:M' such as '2:4' and '4:8'."""
        if text.strip().lower() == "unstructured":
            return cls()
        match = _NM.match(text)
        if not match:
            raise ConfigError(f"pattern must be 'unstructured' or 'N:M' (like 2:4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The sparsity an N:M pattern implies (N/M)."""
        return self.n / self.m if self.m else float("nan")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def check_pattern_fits(pattern: Pattern, d_in: int, layer: str) -> None:
    """N:M groups run along a layer's inputs: M must divide their number."""
    if pattern.structured and d_in % pattern.m:
        raise ConfigError(
            f"{pattern} does not divide layer {layer}: its {d_in} inputs are not a multiple of "
            f"{pattern.m}"
        )


def check_target(sparsity: float, pattern: Pattern, *, dense_exceptions: bool = False) -> None:
    """A target sparsity must lie in (0, 1) and, for N:M, be exactly N/M (at most N/M when
    some layers may stay dense)."""
    if not (isinstance(sparsity, float | int) and 0 < sparsity < 1):
        raise ConfigError(f"sparsity must be in (0, 1), got {sparsity}")
    if dense_exceptions and pattern.structured:
        if sparsity > pattern.sparsity + 1e-9:
            raise ConfigError(
                f"an {pattern} pattern prunes at most {pattern.sparsity:g} of the weights "
                f"(every layer pruned), but sparsity {sparsity:g} was asked for"
            )
        return
    if pattern.structured and not math.isclose(sparsity, pattern.sparsity, abs_tol=1e-9):
        raise ConfigError(
            f"an {pattern} pattern prunes exactly {pattern.sparsity:g} of the weights, but "
            f"sparsity {sparsity:g} was asked for"
        )
