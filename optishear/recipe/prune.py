"""The one sequential pruning loop shared by every method."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from optishear.config import PlanConfig, PruneConfig
from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern, check_pattern_fits
from optishear.methods.metrics import wanda_score
from optishear.methods.plans import (
    SparsityPlan,
    explicit_plan,
    layer_plan,
    outlier_ratio,
    owl_plan,
    uniform_plan,
)
from optishear.methods.registry import LayerTask, Method, build_method
from optishear.methods.stats import LayerStats, recording_inputs
from optishear.model.blocks import (
    BlockInputs,
    block_param_counts,
    capture_block_inputs,
    decoder_blocks,
    iter_linears,
    linear_sublayers,
    run_block,
)
from optishear.model.memory import release_free_memory
from optishear.model.streaming import onloaded
from optishear.refit.update import SurvivorUpdate, check_refit_data

logger = logging.getLogger(__name__)

# (steps done, steps in all, what is being done)
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class LayerReport:
    block: int
    name: str
    shape: tuple[int, int]
    target: float
    pruned: int
    refit_damping: float | None = None  # where held-aside sequences chose it

    @property
    def sparsity(self) -> float:
        return self.pruned / (self.shape[0] * self.shape[1])


@dataclass
class PruneReport:
    """What was pruned: per-layer counts, the plan used, the achieved sparsity and time."""

    method: str
    pattern: str
    target: float
    plan: list[float]
    genome: dict[str, Any] | None = None
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    reconstructed: bool = False
    update: str = "none"  # of the survivors after masking: 'lstsq', 'obs' (or the method's own)

    @property
    def achieved(self) -> float:
        """Pruned share of all prunable weights (those of the decoder blocks' linears)."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        return sum(r.pruned for r in self.layers) / total if total else 0.0

    def block_sparsity(self) -> list[float]:
        pruned = [0] * len(self.plan)
        total = [0] * len(self.plan)
        for r in self.layers:
            pruned[r.block] += r.pruned
            total[r.block] += r.shape[0] * r.shape[1]
        return [p / t if t else 0.0 for p, t in zip(pruned, total, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "target_sparsity": self.target,
            "achieved_sparsity": self.achieved,
            "plan": self.plan,
            "block_sparsity": self.block_sparsity(),
            "genome": self.genome,
            "reconstructed": self.reconstructed,
            "update": self.update,
            "seconds": self.seconds,
            "layers": [
                {**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity} for r in self.layers
            ],
        }


BlockStats = list[dict[str, LayerStats]]


@torch.no_grad()
def collect_dense_stats(
    model: nn.Module,
    inputs: BlockInputs,
    *,
    hessian: bool = False,
    progress: ProgressFn | None = None,
    on_block: Callable[[dict[str, LayerStats]], None] | None = None,
) -> BlockStats:
    """Input statistics of every linear of the dense model, in one pass over the blocks.

    `on_block` sees each block's statistics as soon as they are complete, to reduce them
    before the next block's are gathered (a d_in x d_in Hessian per layer adds up: 2.7 GB on
    the 0.5B model).
    """
    blocks = decoder_blocks(model)
    hidden = inputs.hidden
    out: BlockStats = []
    for idx, block in enumerate(blocks):
        with onloaded(block), recording_inputs(linear_sublayers(block), hessian=hessian) as stats:
            nxt = run_block(
                block,
                hidden,
                inputs.calls[idx],
                inputs.batch_size,
                keep_output=idx < len(blocks) - 1,
            )
        if on_block is not None:
            on_block(stats)
        out.append(stats)
        if nxt is not None:
            hidden = nxt
        if progress:
            progress(idx + 1, len(blocks), "dense statistics")
    return out


def build_plan(
    model: nn.Module, config: PruneConfig, dense_stats: BlockStats | None
) -> SparsityPlan:
    """The per-block sparsity for this model and config."""
    params = block_param_counts(model)
    if config.plan.kind == "uniform":
        return uniform_plan(len(params), float(config.sparsity))
    if config.plan.linear_sparsity:
        layers = [(b, name, lin.weight.numel()) for b, name, lin in iter_linears(model)]
        # layers differ in size: without a given target the plan is its own weighted mean
        given = config.target if "sparsity" in config.model_fields_set else None
        return layer_plan(config.plan.linear_sparsity, layers, len(params), given)
    if config.plan.kind == "explicit":
        return explicit_plan(config.plan.block_sparsity, params, float(config.sparsity))
    if dense_stats is None:
        raise RuntimeError("an OWL plan needs dense statistics")
    blocks = []
    for block, stats in zip(decoder_blocks(model), dense_stats, strict=True):
        lins = linear_sublayers(block)
        blocks.append([(lins[n].weight, s.act_sq) for n, s in stats.items()])
    return owl_plan_from_dense(blocks, params, float(config.sparsity), config.plan)


def owl_plan_from_dense(
    blocks: Sequence[Sequence[tuple[Tensor, Tensor]]],
    block_params: Sequence[int],
    target: float,
    spec: PlanConfig,
) -> SparsityPlan:
    """OWL's per-block sparsity from every block's dense (W, act_sq) pairs (Yin et al., 2024).

    A block's outlier ratio is the share of its Wanda scores above M times their mean; the
    fitness engine's OWL baseline and `build_plan` both come through here.
    """
    ratios = [
        outlier_ratio([wanda_score(W, a) for W, a in layers], spec.owl_m) for layers in blocks
    ]
    return owl_plan(ratios, block_params, target, spec.owl_lambda)


def _prune_block(
    idx: int,
    block: nn.Module,
    method: Method,
    stats: dict[str, LayerStats] | None,
    plan: SparsityPlan,
    pattern: Pattern,
    report: PruneReport,
    *,
    update: SurvivorUpdate | None = None,
) -> None:
    for name, lin in linear_sublayers(block).items():
        ratio = plan.ratio(idx, name)
        if ratio == 0:  # a dense layer (an exception of a per-layer plan): no mask, no refit
            report.layers.append(LayerReport(idx, name, tuple(lin.weight.shape), 0.0, 0))
            continue
        task = LayerTask(
            f"{idx}.{name}", lin.weight.data, stats[name] if stats else None, ratio, pattern
        )
        dense = lin.weight.data.clone() if update else None
        mask = method.prune_layer(task)
        damping = None
        if update is not None:
            assert stats is not None
            assert dense is not None
            layer = stats[name]
            damping = update.apply(
                lin.weight.data, dense, layer.hessian, mask, ratio, pattern, layer.held_gram
            )
            del dense
        report.layers.append(
            LayerReport(idx, name, tuple(lin.weight.shape), ratio, int(mask.sum()), damping)
        )


@dataclass
class PrunedStats:
    """Collects, block by block, the input statistics of a sequential prune's pruned blocks;
    `on_block` may reduce each block's as soon as it is complete (see collect_dense_stats)."""

    hessian: bool = False
    on_block: Callable[[dict[str, LayerStats]], None] | None = None
    blocks: BlockStats = field(default_factory=list)

    def append(self, stats: dict[str, LayerStats]) -> None:
        if self.on_block is not None:
            self.on_block(stats)
        self.blocks.append(stats)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    calib_ids: Tensor | None,
    config: PruneConfig,
    *,
    progress: ProgressFn | None = None,
    inputs: BlockInputs | None = None,
    dense_stats: BlockStats | None = None,
    pruned_stats: PrunedStats | None = None,
) -> PruneReport:
    """Prune `model` in place, block by block, and report what was pruned.

    `calib_ids` (n_seqs, seq_len) feeds the activation statistics; methods that need none
    (magnitude with a uniform plan) may pass None. Precomputed `inputs` and `dense_stats` can be
    handed in to skip recomputing them (the search evaluates many candidates on one model).

    A sequential prune runs each pruned block once more to feed the next: `pruned_stats`
    records the statistics of that run, which are the pruned model's own (what a separate
    pass over the pruned model would gather, one forward cheaper). Other prunes ignore it.
    """
    start = time.perf_counter()
    method = build_method(config.method, config.genome)
    blocks = decoder_blocks(model)
    for idx, block in enumerate(blocks):
        for name, lin in linear_sublayers(block).items():
            check_pattern_fits(config.pattern, lin.in_features, f"{idx}.{name}")

    needs_data = method.needs_activations or config.plan.kind == "owl"
    if needs_data and inputs is None:
        if calib_ids is None:
            raise ConfigError(f"method {config.method} needs calibration data")
        inputs = capture_block_inputs(
            model, calib_ids, config.batch_size, memory_bytes=config.hidden_memory_gib * 2**30
        )
    update = SurvivorUpdate.of(config)
    needs_hessian = method.needs_hessian or update is not None
    check_refit_data(model, calib_ids, config)
    wants_dense = config.plan.kind == "owl" or (
        method.needs_activations and config.stats == "dense"
    )
    if wants_dense and dense_stats is None:
        assert inputs is not None
        dense_stats = collect_dense_stats(
            model, inputs, hessian=needs_hessian and config.stats == "dense"
        )
    plan = build_plan(model, config, dense_stats)
    report = PruneReport(
        config.method,
        str(config.pattern),
        float(config.sparsity),
        list(plan.block_sparsity),
        config.genome.to_dict() if config.genome else None,
        reconstructed=update is not None or method.updates_weights,
        update=update.kind if update is not None else "none",
    )

    sequential = method.needs_activations and config.stats == "pruned"
    hidden = inputs.hidden if (sequential and inputs is not None) else None
    for idx, block in enumerate(blocks):
        # a streamed block is on the device for all of its work, and its pruned weights go back
        with onloaded(block, write=True):
            if sequential:
                assert inputs is not None
                assert hidden is not None
                call = inputs.calls[idx]
                with recording_inputs(
                    linear_sublayers(block), hessian=needs_hessian, holdout=config.refit_holdout
                ) as stats:
                    run_block(block, hidden, call, inputs.batch_size, keep_output=False)
                _prune_block(
                    idx,
                    block,
                    method,
                    stats,
                    plan,
                    config.pattern,
                    report,
                    update=update,
                )
                del stats
                last = idx == len(blocks) - 1
                if pruned_stats is not None:
                    with recording_inputs(
                        linear_sublayers(block), hessian=pruned_stats.hessian
                    ) as after:
                        nxt = run_block(
                            block, hidden, call, inputs.batch_size, keep_output=not last
                        )
                    pruned_stats.append(after)
                    if nxt is not None:
                        hidden = nxt
                elif not last:
                    hidden = run_block(block, hidden, call, inputs.batch_size)
            else:
                stats_i = dense_stats[idx] if (dense_stats and method.needs_activations) else None
                _prune_block(
                    idx,
                    block,
                    method,
                    stats_i,
                    plan,
                    config.pattern,
                    report,
                    update=update,
                )
        if progress:
            progress(idx + 1, len(blocks), f"pruning with {config.method}")
        logger.debug("block %d/%d pruned to %.3f", idx + 1, len(blocks), plan.ratio(idx))
    report.seconds = time.perf_counter() - start
    release_free_memory()  # the statistics and scores of every block are gone
    return report
