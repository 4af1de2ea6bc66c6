"""Model-wise reconstruction error of a candidate, computed fast on one resident model.

The model is loaded once and its weights are held once: a candidate is laid over the dense
layers at forward time (optishear.model.overlay: each linear computes with its masked weight), so
there is no dense backup to restore from, and no reload or deep copy. The few steps that prune
in place (a baseline prune, candidates scored as shipped) are undone from a transient file
(optishear.model.backup). Dense activation statistics and the dense reference
outputs are computed once, as final hidden states (lm_head inputs), never as logits.

The error itself is optishear.search.objectives; the masks, optishear.search.masking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Literal

import torch
from torch import Tensor, nn

from optishear.config import EvaluationConfig, Objective, PlanConfig, PruneConfig
from optishear.core.errors import ConfigError, UnsupportedModelError
from optishear.core.patterns import Pattern, check_pattern_fits
from optishear.evaluation.held_out import HeldOutRow
from optishear.methods.sparsegpt import hessian_rho
from optishear.model.backup import restored_after
from optishear.model.blocks import (
    block_param_counts,
    decoder_blocks,
    fit_batch_size,
    inputs_of,
    iter_linears,
)
from optishear.model.memory import release_free_memory
from optishear.model.overlay import WeightOverlay
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.recipe.comparison import held_out_row
from optishear.recipe.prune import owl_plan_from_dense, prune_model
from optishear.search.database import (
    DatabaseInfo,
    DatabaseRequest,
    LayerDatabase,
    build_database,
    lay_levels,
)
from optishear.search.layer_proxy import LayerProxy
from optishear.search.masking import CandidateMasks
from optishear.search.objectives import OutputError
from optishear.search.prefix import BlockKey, PrefixStates, PrefixStats, block_keys
from optishear.search.scoring_stats import engine_stats, stacked

logger = logging.getLogger(__name__)

# How much work one kernel launch gets on a GPU, where small models are bound by launches: the
# fast KL's tokens per lm_head call, and the weights scored at once when equally shaped layers
# are masked together (this bounds the float32 temporaries). On a CPU one sequence and one
# matrix at a time are faster (measured in bench/HISTORY.md, issue 3): the temporaries stay in cache.
_GPU_KL_CHUNK_TOKENS = 4096
_GPU_MASK_CHUNK_ELEMENTS = 1 << 25


class FitnessEngine:
    """Holds one model and scores candidates by their model-wise reconstruction error."""

    def __init__(
        self,
        model: nn.Module,
        calib_ids: Tensor,
        pattern: Pattern,
        *,
        batch_size: int = 8,
        fitness_samples: int | None = None,
        objective: Objective = "kl",
        mask_cache_bytes: int = 2 << 30,
        prefix_cache_bytes: int = 1 << 30,
        stats: Literal["baseline", "dense"] = "dense",
        sparsity: float | None = None,
        database: DatabaseRequest | None = None,
        second_order: bool = False,
        valid_ids: Tensor | None = None,
    ) -> None:
        """Statistics (and Hessians, refits, shipped prunes) come from all of `calib_ids`; the
        error from the first `fitness_samples` of `valid_ids`, the validation sequences that
        none of those ever sees (optishear.data.text.sample_validation). Without `valid_ids`
        the error is measured on the calibration sequences themselves.

        With `stats="baseline"`, the masks are scored with the activation statistics of the model
        pruned by Wanda at `sparsity` and the pattern, not of the dense model. A shipped model is
        pruned block by block with statistics from its already-pruned prefix; the baseline's
        pruned model is a one-off stand-in for every candidate's prefix, and it ranks close
        genomes as the shipped prune does far better than dense statistics (bench/HISTORY.md, issue 3).
        OWL's plan still uses dense statistics, as OWL defines it.

        With `database`, every layer is pruned once at every level of the request (with the
        same statistics; with `refit`, input Hessians from the same model update the
        survivors), and per-layer candidates are applied from it (optishear.search.database).

        With `second_order`, the scoring statistics carry input Hessians, from which every
        layer's rho (optishear.core.genome) is kept, so that second-order genomes can be scored.

        `prefix_cache_bytes` bounds the block outputs kept so that a candidate starts at the
        first block it changes (optishear.search.prefix); 0 runs every block every time.
        """
        if objective not in ("kl", "logits_fro"):
            raise ConfigError(f"objective must be 'kl' or 'logits_fro', got {objective!r}")
        if stats == "baseline" and sparsity is None:
            raise ConfigError("baseline statistics need the target sparsity")
        self.model = model.eval()
        self.objective = objective
        self.pattern = pattern
        self.calib_ids = calib_ids
        self.valid_ids = calib_ids if valid_ids is None else valid_ids
        self.batch_size = fit_batch_size(calib_ids.shape[0], batch_size)
        self.device = next(model.parameters()).device
        self.layers = list(iter_linears(model))
        for idx, name, lin in self.layers:
            check_pattern_fits(pattern, lin.in_features, f"{idx}.{name}")
        self.n_blocks = len(decoder_blocks(model))
        self.block_params = block_param_counts(model)
        # Equally shaped layers (the same projection of every block) are masked together on a
        # GPU: a few large kernels instead of hundreds of small ones.
        groups: dict[tuple[str, torch.Size], list[int]] = {}
        for pos, (_, name, lin) in enumerate(self.layers):
            groups.setdefault((name, lin.weight.shape), []).append(pos)
        self._groups = list(groups.values())
        # The live layers' own weights, which stay dense: candidates are laid over them.
        self.dense = [lin.weight.detach() for _, _, lin in self.layers]
        self._n_weights = sum(W.numel() for W in self.dense)
        self._overlay = WeightOverlay([lin for _, _, lin in self.layers])
        self._in_place = ExitStack()  # the backup of a candidate pruned in place, until restore

        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError("the model's output embedding is not an nn.Linear")
        self._head = head

        refit = database is not None and database.refit
        hessian = refit or second_order or (database is not None and database.genome.second_order)
        self._dense_act_sq: list[Tensor] | None = None
        dense_stats, scoring_stats = engine_stats(
            model,
            calib_ids,
            self.layers,
            self.dense,
            pattern,
            self.batch_size,
            baseline_at=sparsity if stats == "baseline" else None,
            hessian=hessian,
            keep=refit,
        )
        if dense_stats is not None:
            self._dense_act_sq = [s.act_sq for s in dense_stats]
        self._act_stacks, self.act_sq = stacked(self._groups, [s.act_sq for s in scoring_stats])
        self._rho_stacks: list[Tensor] | None = None
        self.rho: list[Tensor] | None = None
        if hessian:
            self._rho_stacks, self.rho = stacked(
                self._groups,
                [s.rho if s.rho is not None else hessian_rho(s.hessian) for s in scoring_stats],
            )
        self.database: LayerDatabase | None = None
        self._loaded: list[int | None] = [None] * len(self.layers)  # database level per layer
        if database is not None:
            hessians = [s.hessian for s in scoring_stats] if refit else None
            del dense_stats, scoring_stats
            self.database = build_database(
                database, self.dense, self.act_sq, hessians, pattern, rho=self.rho
            )
        else:
            del dense_stats, scoring_stats
        n_valid = self.valid_ids.shape[0]
        self.n_fitness = min(fitness_samples or n_valid, n_valid)
        gpu = self.device.type == "cuda"
        self._error = OutputError(
            head,
            self._final_hidden(self.n_fitness),  # (n, seq, d_model)
            objective,
            softcap=getattr(model.config, "final_logit_softcapping", None),
            kl_chunk=max(1, _GPU_KL_CHUNK_TOKENS // self.valid_ids.shape[1]) if gpu else 1,
        )
        self._proxy: LayerProxy | None = None
        self._prefix = PrefixStates(decoder_blocks(model), prefix_cache_bytes)
        self._masker = CandidateMasks(
            self.dense,
            self._groups,
            self._act_stacks,
            self._rho_stacks,
            pattern,
            cache_bytes=mask_cache_bytes,
            chunk_elements=_GPU_MASK_CHUNK_ELEMENTS if gpu else 0,
        )
        release_free_memory()  # the set-up's statistics and baseline prune are gone

    @torch.no_grad()
    def _final_hidden(self, n_samples: int, n_tokens: int | None = None) -> Tensor:
        """Inputs of lm_head for the first n_samples validation sequences (logits never made),
        or for their first n_tokens tokens: the model is causal, so those equal the first
        n_tokens positions of the whole sequences'."""
        ids = self.valid_ids if n_tokens is None else self.valid_ids[:, :n_tokens]
        return torch.cat(
            [
                inputs_of(
                    self.model,
                    self._head,
                    ids[i : min(i + self.batch_size, n_samples)].to(self.device),
                ).float()
                for i in range(0, n_samples, self.batch_size)
            ]
        )

    @property
    def layer_layout(self) -> tuple[tuple[int, str, int], ...]:
        return tuple((idx, name, lin.weight.numel()) for idx, name, lin in self.layers)

    def database_info(self) -> DatabaseInfo | None:
        return self.database.info() if self.database is not None else None

    def close(self) -> None:
        """Take the overlay off the model and free the layer database (a disk one removes its
        files)."""
        self.restore()
        self._overlay.close()
        if self.database is not None:
            self.database.close()
            self.database = None

    def owl_plan(self, target: float, spec: PlanConfig | None = None) -> tuple[float, ...]:
        """OWL's per-block sparsity at `target`, from the dense weights and statistics held here.

        OWL spreads sparsity across blocks, which an N:M pattern forbids: unstructured only.
        """
        if self.pattern.structured:
            raise ConfigError(f"an {self.pattern} pattern keeps every block at N/M: no OWL plan")
        assert self._dense_act_sq is not None  # kept for every unstructured engine
        blocks: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(self.n_blocks)]
        for pos, (idx, _name, _lin) in enumerate(self.layers):
            W = self.dense[pos]  # on the host when the model streams: score it there
            blocks[idx].append((W, self._dense_act_sq[pos].to(W.device)))
        plan = owl_plan_from_dense(
            blocks, self.block_params, target, spec or PlanConfig(kind="owl")
        )
        return plan.block_sparsity

    @property
    def reference(self) -> Tensor:
        """The dense model's lm_head inputs on the fitness sequences."""
        return self._error.reference

    def clear_mask_cache(self) -> None:
        """Forget the cached masks and the kept block outputs: the next candidate is new."""
        self._masker.cache.clear()
        self._prefix.clear()

    @property
    def prefix_stats(self) -> PrefixStats:  # blocks run and skipped, for benchmarks
        return self._prefix.stats

    def _ratio(self, candidate: Candidate, pos: int) -> float:
        if candidate.layer_sparsity:
            return candidate.layer_sparsity[pos]
        return candidate.block_sparsity[self.layers[pos][0]]

    @torch.no_grad()
    def apply(self, candidate: Candidate) -> float:
        """Lay the candidate's masks over the model; returns its sparsity.

        Until `restore`, the model computes as the candidate pruned it.
        """
        if len(candidate.block_sparsity) != self.n_blocks:
            raise ValueError(
                f"candidate has {len(candidate.block_sparsity)} ratios for {self.n_blocks} blocks"
            )
        if candidate.layer_sparsity and len(candidate.layer_sparsity) != len(self.layers):
            raise ValueError(
                f"candidate has {len(candidate.layer_sparsity)} per-layer ratios for "
                f"{len(self.layers)} layers"
            )
        if candidate.layer_sparsity and self.database is not None:
            return self._apply_database(candidate)
        self._loaded = [None] * len(self.layers)
        pruned = torch.zeros((), dtype=torch.int64, device=self.device)
        masks = self._masker.masks(candidate, self._ratio)
        for pos, mask in enumerate(masks):
            self._overlay.set_mask(pos, mask)
            if mask is not None:
                pruned += mask.sum()  # stays on the device: one sync per candidate, not per layer
        return int(pruned) / self._n_weights

    def _apply_database(self, candidate: Candidate) -> float:
        # The overlay keeps the layers after the evaluation: the next candidate of a (1+lambda)
        # or NSGA-III mutation differs in a few layers, so it costs a few look-ups and a forward.
        assert self.database is not None
        return lay_levels(
            self.database,
            self._overlay,
            self._loaded,
            candidate.layer_sparsity,
            self._n_weights,
            self.device,
        )

    def weight(self, pos: int) -> Tensor:
        """The weight layer `pos` computes with now: the candidate's, after `apply`."""
        return self._overlay.effective_weight(pos)

    @torch.no_grad()
    def restore(self) -> None:
        """The dense model again: the overlay comes off every layer."""
        self._loaded = [None] * len(self.layers)
        self._overlay.clear()
        self._in_place.close()

    @torch.no_grad()
    def apply_shipped(self, recipe: PruneConfig) -> float:
        """Prune in place by `recipe`, as a shipped model is pruned; returns its sparsity.

        Unlike `apply`, statistics come from the already-pruned prefix, and the recipe's update
        changes the survivors (a least-squares refit, or SparseGPT's OBS step): what a user
        downloads. It costs a sequential pass over the blocks (with input Hessians when the
        survivors are updated). `restore` brings the dense weights back.
        """
        self.restore()
        # pruned in place: `restore` reads the dense weights back from the backup
        self._in_place.enter_context(restored_after(self.dense))
        recipe = recipe.model_copy(update={"batch_size": self.batch_size})
        return prune_model(self.model, self.calib_ids, recipe).achieved

    @torch.no_grad()
    def held_out_row(
        self, name: str, prune: PruneConfig | None, evaluation: EvaluationConfig, ids: Tensor
    ) -> HeldOutRow:
        """Held-out perplexity of the model `prune` makes (None: the dense one), dense again
        afterwards (optishear.recipe.comparison)."""
        self.restore()
        return held_out_row(self.model, self.dense, self.calib_ids, ids, name, prune, evaluation)

    @torch.no_grad()
    def evaluate(
        self, candidate: Candidate, n_samples: int | None = None, *, n_tokens: int | None = None
    ) -> Evaluation:
        """Lay the candidate over the model, measure the error on n_samples sequences (their
        first n_tokens tokens), restore; blocks shared with a recent one are skipped (prefix)."""
        from_database = bool(candidate.layer_sparsity and self.database is not None)
        ratios = [self._ratio(candidate, pos) for pos in range(len(self.layers))]
        genome = -1 if from_database else candidate.genome.row_canonical().index
        keys = block_keys(genome, [idx for idx, _, _ in self.layers], ratios, self.n_blocks)
        return self._measured(
            lambda: self.apply(candidate), n_samples, n_tokens, keep=from_database, keys=keys
        )

    def evaluate_layers(self, candidate: Candidate) -> Evaluation:
        """The candidate's layer-wise proxy error (optishear.search.layer_proxy): no forward."""
        if self._proxy is None:  # built on first use: a search without a proxy rung never pays
            lins = [lin for _, _, lin in self.layers]
            self._proxy = LayerProxy(
                self.model, lins, self.dense, self.act_sq, self.rho, self.pattern, self.valid_ids
            )
        return self._proxy.evaluate(candidate.genome, lambda pos: self._ratio(candidate, pos))

    @torch.no_grad()
    def evaluate_shipped(self, recipe: PruneConfig, *, keep: bool = False) -> Evaluation:
        """The error of the model `recipe` ships (see `apply_shipped`), at full fidelity; with
        `keep`, the model stays pruned until `restore`."""
        return self._measured(lambda: self.apply_shipped(recipe), None, None, keep=keep)

    def _measured(
        self,
        prune: Callable[[], float],
        n_samples: int | None,
        n_tokens: int | None,
        *,
        keep: bool,
        keys: list[BlockKey] | None = None,
    ) -> Evaluation:
        start = time.perf_counter()
        n = self.n_fitness if n_samples is None else min(n_samples, self.n_fitness)
        seq = self.valid_ids.shape[1]
        t = seq if n_tokens is None else max(1, min(n_tokens, seq))
        try:
            sparsity = prune()

            def forward() -> Tensor:
                return self._final_hidden(n, t if t < seq else None)

            hidden = forward() if keys is None else self._prefix.run(keys, (n, t), forward)
            error = self._error.error(hidden, n, t)
        finally:
            if not keep:  # a database candidate stays: the next rewrites only what differs
                self.restore()
            # With other threads about (Ray's, a sampler's), glibc keeps an evaluation's freed
            # temporaries in per-thread arenas: 0.7 GB after three on the bundled model.
            # Trimmed past a bound only, so pages are not re-faulted every evaluation.
            release_free_memory(above=_RETAINED_FREE_BYTES)
        return Evaluation(error, sparsity, n, time.perf_counter() - start, t if t < seq else 0)


_RETAINED_FREE_BYTES = 256 << 20  # what an evaluation may leave free in the allocator
