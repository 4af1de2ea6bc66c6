"""One prune: method, genome, target, pattern, per-block plan and statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from optishear.config.base import ConfigModel, Method, TargetConfig, flag
from optishear.config.fields import BlockSparsity, GenomeField
from optishear.core.genome import WANDA_GENOME


class PlanConfig(ConfigModel):
    """How the per-block sparsity is chosen; OWL's lambda and M follow Yin et al. (2024)."""

    kind: Literal["uniform", "owl", "explicit"] = Field(
        "uniform", description="per-block sparsity plan", json_schema_extra=flag("plan")
    )
    owl_lambda: float = Field(0.08, gt=0, lt=0.5, description="OWL: largest deviation")
    owl_m: float = Field(5.0, gt=0, description="OWL: outlier threshold (times the mean)")
    block_sparsity: BlockSparsity = Field(
        (),
        description="explicit plan: one sparsity per block, comma-separated",
        json_schema_extra=flag("block-sparsity", aliases=["--layer-sparsity"]),
    )
    linear_sparsity: BlockSparsity = Field(
        (),
        description="explicit plan: one sparsity per linear layer (blocks in order, each "
        "block's linears in module order), comma-separated; 0 keeps a layer dense",
        json_schema_extra=flag("linear-sparsity"),
    )

    @model_validator(mode="after")
    def _explicit(self) -> PlanConfig:
        given = bool(self.block_sparsity) + bool(self.linear_sparsity)
        if self.kind == "explicit" and given != 1:
            raise ValueError(
                "an explicit plan needs one sparsity per block or one per linear layer"
            )
        if self.kind != "explicit" and given:
            raise ValueError(
                "per-block or per-layer sparsities are only given with an explicit plan"
            )
        return self


# How the surviving weights of a masked layer change: not at all, SparseGPT's OBS step with the
# mask imposed, or a least-squares refit.
Update = Literal["none", "obs", "lstsq"]


class PruneConfig(TargetConfig):
    """One prune: method (and genome for 'meta'), target, pattern, plan and statistics."""

    method: Method = Field("wanda", description="pruning method")
    genome: GenomeField | None = Field(
        None,
        description="meta metric genome (method meta; default Wanda's), e.g. "
        "'f1=sqrt,f2=identity,alpha=one,beta=inv_col_sum'",
    )
    plan: PlanConfig = Field(default_factory=PlanConfig)
    stats: Literal["pruned", "dense"] = Field(
        "pruned",
        description="activation statistics from the pruned prefix (Wanda, SparseGPT) or the "
        "dense model",
    )
    batch_size: int = Field(8, ge=1, le=256, description="sequences per forward pass")
    hidden_memory_gib: float = Field(
        1.0,
        ge=0,
        le=4096,
        description="memory for every calibration sequence's hidden states between two blocks "
        "(inputs and outputs); beyond it both live in a memory-mapped file in the temporary "
        "folder (TMPDIR), and the prune's own memory no longer grows with the calibration",
    )
    reconstruct: bool = Field(
        False,
        description="refit the surviving weights by least squares after masking (wanda, ria, meta)",
    )
    obs_update: bool = Field(
        False,
        description="update the surviving weights by SparseGPT's OBS step on the method's mask "
        "(wanda, ria, meta): what a search with a refit layer database scored",
    )
    refit_holdout: int = Field(
        0,
        ge=0,
        le=64,
        description="with reconstruct: every Nth calibration sequence is held aside (no "
        "statistics, Hessian or refit) to choose each layer's refit damping by its output "
        "error on them; 0: a fixed damping (0.01 of the mean diagonal)",
    )
    refit_solver: Literal["cg", "exact"] = Field(
        "cg",
        description="how the refit solves each layer: conjugate gradients on the shared Gram "
        "matrix (fast at any width), or an exact factorisation per row (the reference)",
    )

    @property
    def survivor_update(self) -> Update:
        """How the surviving weights change after masking (sparsegpt's own update aside)."""
        return "lstsq" if self.reconstruct else "obs" if self.obs_update else "none"

    @model_validator(mode="after")
    def _rules(self) -> PruneConfig:
        if self.method == "meta" and self.genome is None:
            object.__setattr__(self, "genome", WANDA_GENOME)
        if self.method != "meta" and self.genome is not None:
            raise ValueError("a genome is given with method 'meta', and only with it")
        explicit = self.plan.block_sparsity or self.plan.linear_sparsity
        per_layer = bool(self.plan.linear_sparsity)
        # An explicit plan without a target is its own (unweighted) mean.
        self._fill_target(
            sum(explicit) / len(explicit) if explicit else None, dense_exceptions=per_layer
        )
        if self.pattern.structured and self.plan.kind != "uniform" and not per_layer:
            raise ValueError(
                f"an {self.pattern} pattern keeps every block at N/M: use a uniform plan"
            )
        if per_layer and self.pattern.structured:
            allowed = (0.0, self.pattern.sparsity)
            if any(min(abs(r - a) for a in allowed) > 1e-9 for r in explicit):
                raise ValueError(
                    f"under {self.pattern} a layer is pruned {self.pattern} "
                    f"({self.pattern.sparsity:g}) or kept dense (0)"
                )
        if self.obs_update and (self.reconstruct or self.method in ("sparsegpt", "magnitude")):
            raise ValueError(
                "obs_update applies to activation-aware mask methods (wanda, ria, meta), "
                "without reconstruct: each is an update of the survivors"
            )
        if self.refit_holdout and not (self.reconstruct and self.stats == "pruned"):
            raise ValueError(
                "refit_holdout chooses the least-squares refit's damping: it needs reconstruct "
                "and statistics from the pruned prefix (stats 'pruned')"
            )
        if self.refit_holdout == 1:
            raise ValueError("refit_holdout 1 would hold aside every sequence: use 0 or >= 2")
        if self.reconstruct and self.method in ("sparsegpt", "magnitude"):
            raise ValueError(
                "reconstruct applies to activation-aware mask methods (wanda, ria, meta): "
                "sparsegpt always reconstructs, and magnitude gathers no calibration inputs"
            )
        return self
