"""What a held-out comparison reports: perplexity of the dense, searched and baseline models.

The measurement is optishear.recipe.comparison; these are the plain records it returns, which a
search's summary, the API and exported manifests carry.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

# The methods users run by hand today, in the order they are shown: every comparison measures
# them. OWL+SparseGPT joins them where OWL applies (an unstructured target) and a search scores
# the published baselines as shipped: its held-out row comes from that same prune.
BASELINES = ("wanda", "sparsegpt")
OWL_SPARSEGPT = "owl+sparsegpt"
COMPARED = (*BASELINES, OWL_SPARSEGPT)
SEARCHED = "searched"


class HeldOutRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(
        description="dense, searched, or a baseline (wanda, sparsegpt, owl+sparsegpt)"
    )
    perplexity: float
    sparsity: float = Field(description="achieved, over the prunable layers")
    prune_seconds: float
    window_nll: list[float] = Field(
        default_factory=list,
        description="each window's mean NLL, paired across rows for the gains' standard errors",
    )


class HeldOutComparison(BaseModel):
    """Held-out perplexity of the dense model, the searched model and each baseline."""

    model_config = ConfigDict(frozen=True)

    rows: tuple[HeldOutRow, ...]
    protocol: dict[str, Any] = Field(
        description="evaluation text, windows and tokens; calibration source, size and seed"
    )
    seconds: float

    def row(self, name: str) -> HeldOutRow | None:
        return next((r for r in self.rows if r.name == name), None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gains(self) -> dict[str, float]:
        """The searched model's relative perplexity change against each baseline (-0.056 is
        5.6% lower, that is better)."""
        searched = self.row(SEARCHED)
        if searched is None:
            return {}
        return {
            r.name: searched.perplexity / r.perplexity - 1.0
            for r in self.rows
            if r.name in COMPARED
        }

    @computed_field  # type: ignore[prop-decorator]
    @property
    def gain_errors(self) -> dict[str, float]:
        """The standard error of each gain, from the windows: the searched model's and the
        baseline's mean NLLs are paired window by window, and the gain is exp(mean difference)
        - 1, so its error is exp(mean) x the differences' standard error of the mean. A gain
        within two of these is inside the windows' own noise."""
        searched = self.row(SEARCHED)
        if searched is None or len(searched.window_nll) < 2:
            return {}
        out = {}
        for r in self.rows:
            if r.name not in COMPARED or len(r.window_nll) != len(searched.window_nll):
                continue
            d = [a - b for a, b in zip(searched.window_nll, r.window_nll, strict=True)]
            mean = sum(d) / len(d)
            var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
            out[r.name] = math.exp(mean) * math.sqrt(var / len(d))
        return out

    def searched_eval(self, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """The searched model's held-out figure in the shape of a Perplexity's dict: the
        model pruned as shipped, on the windows of every held-out figure, so that nobody
        prunes and measures it a second time. None without a searched row, or when the row was
        pruned by another recipe (a PruneConfig as JSON data) than the model asked about."""
        searched = self.row(SEARCHED)
        if searched is None or self.protocol.get("searched_recipe") != recipe:
            return None
        p = self.protocol
        return {
            "perplexity": searched.perplexity,
            "mean_nll": math.log(searched.perplexity),
            "n_windows": p["eval_windows"],
            "n_tokens": p["eval_tokens"],
            "seq_len": p["eval_seq_len"],
            "measured_by": "held-out comparison",
        }

    def lines(self) -> list[str]:
        """The comparison as the CLI prints it: one line per model, the gain on the searched."""
        gains = self.gains
        out = []
        for r in self.rows:
            text = f"  {r.name:<13} perplexity {r.perplexity:9.3f}"
            if r.name != "dense":
                text += f"  sparsity {r.sparsity:.4f}  pruned in {r.prune_seconds:.1f} s"
            if r.name == SEARCHED and gains:
                errors = self.gain_errors
                text += (
                    "  ("
                    + ", ".join(gain_text(g, n, errors.get(n)) for n, g in gains.items())
                    + ")"
                )
            out.append(text)
        p = self.protocol
        out.append(
            f"  protocol: {p['eval_windows']} windows of {p['eval_seq_len']} tokens of "
            f"{p['eval_text']!r} ({p['eval_tokens']} predicted); calibration "
            f"{p['calibration_samples']} x {p['calibration_seq_len']} tokens of "
            f"{p['calibration_source']!r}, seed {p['calibration_seed']} (statistics, Hessians, "
            "refits)"
            + (
                f"; validation {p['validation_samples']} x {p['calibration_seq_len']} tokens "
                f"of its last {p['validation_share']:g}, never fitted (scores and selects)"
                if p.get("validation_samples")
                else "; candidates scored on calibration sequences"
            )
            + "; the held-out text chooses nothing"
        )
        return out


def gain_text(gain: float, baseline: str, error: float | None = None) -> str:
    """'-5.6% vs wanda' (negative is a lower perplexity, a gain), '-5.6% +- 0.8% vs wanda'
    with its standard error."""
    spread = f" +- {error * 100:.1f}%" if error is not None else ""
    return f"{gain * 100:+.1f}%{spread} vs {baseline}"


def manifest_comparison(comparison: HeldOutComparison | None) -> dict[str, Any] | None:
    """The comparison as an exported checkpoint's manifest carries it: no timings, which differ
    between runs of the same weights (an export's bytes are reproducible)."""
    if comparison is None:
        return None
    data = comparison.model_dump(mode="json", exclude={"seconds"})
    for row in data["rows"]:
        row.pop("prune_seconds", None)
    return data
