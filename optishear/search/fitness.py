"""Model-wise reconstruction error of a candidate, computed fast on one resident model.

The model is loaded once and its weights are held once: a candidate is laid over the dense
layers at forward time (optishear.model.overlay: each linear computes with its masked weight), so
there is no dense backup to restore from, and no reload or deep copy. The few steps that prune
in place (a baseline prune, candidates scored as shipped) are undone from a transient file
(optishear.model.backup). Dense activation statistics and the dense reference
outputs are computed once, as final hidden states (lm_head inputs), never as logits.

Two objectives, both accumulated one sequence at a time:
- "kl" (default): mean per-token KL(dense || pruned) of the next-token distributions. The
  dense logits are recomputed from the stored hidden states, one sequence at a time.
- "logits_fro": the paper's ||logits_dense - logits_pruned||_F / ||logits_dense||_F, computed
  without logits: for a linear, bias-free lm_head, ||(H_d - H_p) W^T||_F^2 is the sum over
  tokens of d^T (W^T W) d, with d the difference of the final hidden states.
On the bundled model the Frobenius objective ranks badly: at 2:4 it preferred a genome with
3x Wanda's held-out perplexity over Wanda itself (bench/RESULTS.md), because a uniform shrink
of all logits lowers it. The KL objective measures what perplexity measures.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from optishear.config import Objective, PlanConfig, PruneConfig, SearchConfig
from optishear.core.errors import ConfigError, UnsupportedModelError
from optishear.core.patterns import Pattern, check_pattern_fits
from optishear.evaluation.held_out import HeldOutComparison
from optishear.methods.masks import pack_mask, prune_mask, unpack_mask
from optishear.methods.meta import meta_log_score
from optishear.methods.sparsegpt import hessian_rho
from optishear.methods.stats import LayerStats
from optishear.model.backup import restored_after
from optishear.model.blocks import (
    block_param_counts,
    capture_block_inputs,
    decoder_blocks,
    fit_batch_size,
    inputs_of,
    iter_linears,
)
from optishear.model.memory import release_free_memory
from optishear.model.overlay import WeightOverlay
from optishear.recipe.candidates import Candidate, Evaluation
from optishear.recipe.comparison import compare_held_out
from optishear.recipe.prune import (
    collect_dense_stats,
    owl_plan_from_dense,
    prune_candidate,
    prune_model,
)
from optishear.search.database import (
    DatabaseInfo,
    DatabaseRequest,
    LayerDatabase,
    build_database,
)

logger = logging.getLogger(__name__)

# How much work one kernel launch gets on a GPU, where small models are bound by launches: the
# fast KL's tokens per lm_head call, and the weights scored at once when equally shaped layers
# are masked together (this bounds the float32 temporaries). On a CPU one sequence and one
# matrix at a time are faster (measured in bench/RESULTS.md): the temporaries stay in cache.
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
        stats: Literal["baseline", "dense"] = "dense",
        sparsity: float | None = None,
        database: DatabaseRequest | None = None,
        second_order: bool = False,
    ) -> None:
        """Statistics come from all of `calib_ids`; the error from the first `fitness_samples`.

        With `stats="baseline"`, the masks are scored with the activation statistics of the model
        pruned by Wanda at `sparsity` and the pattern, not of the dense model. A shipped model is
        pruned block by block with statistics from its already-pruned prefix; the baseline's
        pruned model is a one-off stand-in for every candidate's prefix, and it ranks close
        genomes as the shipped prune does far better than dense statistics (bench/RESULTS.md).
        OWL's plan still uses dense statistics, as OWL defines it.

        With `database`, every layer is pruned once at every level of the request (with the
        same statistics; with `refit`, input Hessians from the same model update the
        survivors), and per-layer candidates are applied from it (optishear.search.database).

        With `second_order`, the scoring statistics carry input Hessians, from which every
        layer's rho (optishear.core.genome) is kept, so that second-order genomes can be scored.
        """
        if objective not in ("kl", "logits_fro"):
            raise ConfigError(f"objective must be 'kl' or 'logits_fro', got {objective!r}")
        if stats == "baseline" and sparsity is None:
            raise ConfigError("baseline statistics need the target sparsity")
        self.model = model.eval()
        self.objective = objective
        self.pattern = pattern
        self.calib_ids = calib_ids
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
        self._overlay = WeightOverlay([lin for _, _, lin in self.layers])
        self._in_place = ExitStack()  # the backup of a candidate pruned in place, until restore
        # A layer-wise stage revisits the same (genome, layer, ratio) masks again and again.
        # Kept packed, 8 to a byte: 1/32 of the fp32 weights they mask.
        self._masks: OrderedDict[tuple[int, int, float], Tensor] = OrderedDict()
        self._mask_bytes = 0
        self._mask_budget = mask_cache_bytes

        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise UnsupportedModelError("the model's output embedding is not an nn.Linear")
        self._head = head
        W_head = head.weight.detach().float()  # (vocab, d_model)
        self._gram = W_head.T @ W_head  # (d_model, d_model)
        self._softcap = getattr(model.config, "final_logit_softcapping", None)

        # Dense statistics score the masks without a stats target, and give OWL its plan
        # (unstructured only): an N:M search on Wanda's statistics skips that forward pass.
        refit = database is not None and database.refit
        hessian = refit or second_order or (database is not None and database.genome.second_order)
        self._dense_act_sq: list[Tensor] | None = None
        dense_stats: list[LayerStats] | None = None
        if stats == "dense" or not pattern.structured:
            dense_stats = self._layer_stats(hessian=hessian and stats == "dense", keep=refit)
            self._dense_act_sq = [s.act_sq for s in dense_stats]
        if stats == "dense":
            assert dense_stats is not None
            scoring_stats = dense_stats
        else:
            assert sparsity is not None
            scoring_stats = self._baseline_stats(sparsity, hessian=hessian, keep=refit)
        self._act_stacks, self.act_sq = self._stacked([s.act_sq for s in scoring_stats])
        self._rho_stacks: list[Tensor] | None = None
        self.rho: list[Tensor] | None = None
        if hessian:
            self._rho_stacks, self.rho = self._stacked(
                [s.rho if s.rho is not None else hessian_rho(s.hessian) for s in scoring_stats]
            )
        self.database: LayerDatabase | None = None
        self._loaded: list[int | None] = [None] * len(self.layers)  # database level per layer
        if database is not None:
            hessians = [s.hessian for s in scoring_stats] if refit else None
            del dense_stats, scoring_stats
            self.database = self._build_database(database, hessians)
        else:
            del dense_stats, scoring_stats
        self.n_fitness = min(fitness_samples or calib_ids.shape[0], calib_ids.shape[0])
        self.reference = self._final_hidden(self.n_fitness)  # (n, seq, d_model)
        self._ref_norm_sq = [
            self._sq_norm(self.reference[i : i + 1], None) for i in range(self.n_fitness)
        ]
        self._kl_terms: tuple[Tensor, Tensor] | None = None  # u (n, seq, d_model), c (n, seq)
        if objective == "kl" and not self._softcap:
            terms = [self._dense_kl_terms(self.reference[i]) for i in range(self.n_fitness)]
            self._kl_terms = (
                torch.stack([u for u, _ in terms]),
                torch.stack([c for _, c in terms]),
            )
        # Sequences whose logits are made at once by the fast KL: few kernel launches on a GPU,
        # bounded float32 logits (tokens x vocab) in memory.
        gpu = self.device.type == "cuda"
        self._kl_chunk = max(1, _GPU_KL_CHUNK_TOKENS // calib_ids.shape[1]) if gpu else 1
        self._mask_chunk = _GPU_MASK_CHUNK_ELEMENTS if gpu else 0
        release_free_memory()  # the set-up's statistics and baseline prune are gone

    def _stacked(self, per_layer: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """One stack per group of equally shaped layers (copies), and per layer a view into it."""
        stacks = [torch.stack([per_layer[pos] for pos in group]) for group in self._groups]
        views: list[Tensor] = [torch.empty(0)] * len(per_layer)
        for group, stack in zip(self._groups, stacks, strict=True):
            for j, pos in enumerate(group):
                views[pos] = stack[j]
        return stacks, views

    @torch.no_grad()
    def _final_hidden(self, n_samples: int, n_tokens: int | None = None) -> Tensor:
        """Inputs of lm_head for the first n_samples calibration sequences (logits never made),
        or for their first n_tokens tokens: the model is causal, so those equal the first
        n_tokens positions of the whole sequences'."""
        ids = self.calib_ids if n_tokens is None else self.calib_ids[:, :n_tokens]
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

    def _sq_norm(self, h: Tensor, ref: Tensor | None) -> float:
        """||logits(h) - logits(ref)||_F^2 (or ||logits(h)||^2 without ref), exactly."""
        if self._softcap:  # a non-linear cap after lm_head: compare real logits
            cap = float(self._softcap)
            logits = cap * torch.tanh(self._head(h.to(self._head.weight.dtype)).float() / cap)
            if ref is not None:
                logits -= cap * torch.tanh(
                    self._head(ref.to(self._head.weight.dtype)).float() / cap
                )
            return float(logits.pow(2).sum())
        d = (h if ref is None else h - ref).reshape(-1, h.shape[-1])  # (tokens, d_model)
        return float(((d @ self._gram) * d).sum())

    @torch.no_grad()
    def _layer_stats(self, *, hessian: bool = False, keep: bool = False) -> list[LayerStats]:
        """Per layer, the input statistics of the model as its weights are now.

        Without `keep`, each block's Hessians are reduced to their rho as soon as the block is
        done: only the refit of a layer database needs whole Hessians.
        """
        inputs = capture_block_inputs(self.model, self.calib_ids, self.batch_size)
        on_block = None if keep or not hessian else _keep_rho_only
        stats = collect_dense_stats(self.model, inputs, hessian=hessian, on_block=on_block)
        return [stats[idx][name] for idx, name, _ in self.layers]

    def _baseline_stats(
        self, target: float, *, hessian: bool = False, keep: bool = False
    ) -> list[LayerStats]:
        """Statistics of the model pruned by Wanda at `target`; the dense weights come back.

        Below N/M (N:M with dense exceptions) the stand-in is Wanda at N:M everywhere.
        """
        if self.pattern.structured:
            target = self.pattern.sparsity
        config = PruneConfig(
            method="wanda", sparsity=target, pattern=self.pattern, batch_size=self.batch_size
        )
        with restored_after(self.dense):
            prune_model(self.model, self.calib_ids, config)
            return self._layer_stats(hessian=hessian, keep=keep)

    @torch.no_grad()
    def _build_database(
        self, request: DatabaseRequest, hessians: list[Tensor] | None
    ) -> LayerDatabase:
        return build_database(
            request, self.dense, self.act_sq, hessians, self.pattern, rho=self.rho
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

    def clear_mask_cache(self) -> None:
        self._masks.clear()
        self._mask_bytes = 0

    def _layer_masks(self, candidate: Candidate) -> list[Tensor | None]:
        """Every layer's mask for the candidate (None for a dense layer): cached ones looked up,
        the others computed a stack of equally shaped layers with equal sparsity at a time."""
        canonical = candidate.genome.row_canonical().index
        masks: list[Tensor | None] = [None] * len(self.layers)
        rho_stacks = self._rho_stacks or [None] * len(self._groups)
        for group, act, rho in zip(self._groups, self._act_stacks, rho_stacks, strict=True):
            missing: dict[float, list[int]] = {}  # ratio -> indices into the group
            shape = self.dense[group[0]].shape
            for j, pos in enumerate(group):
                ratio = round(self._ratio(candidate, pos), 9)
                if ratio == 0:  # a dense layer
                    masks[pos] = None
                    continue
                key = (canonical, pos, ratio)
                cached = self._masks.get(key)
                if cached is None:
                    missing.setdefault(ratio, []).append(j)
                else:
                    self._masks.move_to_end(key)
                    masks[pos] = unpack_mask(cached, shape)
            per_chunk = max(1, self._mask_chunk // shape.numel())
            for ratio, js in missing.items():
                for c in range(0, len(js), per_chunk):
                    chunk = js[c : c + per_chunk]
                    # a stack only of the chunk (on a GPU, bounded by _GPU_MASK_CHUNK_ELEMENTS)
                    W = torch.stack([self.dense[group[j]] for j in chunk]).to(act.device)
                    if len(chunk) == len(group):
                        X, R = act, rho
                    else:
                        idx = torch.tensor(chunk, device=act.device)
                        X = act[idx]
                        R = rho[idx] if rho is not None else None
                    score = meta_log_score(W, X, candidate.genome, R)
                    del W
                    mask = prune_mask(score.flatten(0, 1), ratio, self.pattern).view(score.shape)
                    for b, j in enumerate(chunk):
                        masks[group[j]] = mask[b]
                        self._remember((canonical, group[j], ratio), mask[b])
        return masks

    def _ratio(self, candidate: Candidate, pos: int) -> float:
        if candidate.layer_sparsity:
            return candidate.layer_sparsity[pos]
        return candidate.block_sparsity[self.layers[pos][0]]

    def _remember(self, key: tuple[int, int, float], mask: Tensor) -> None:
        packed = pack_mask(mask)  # a copy of its own: evicting it frees it
        if packed.numel() > self._mask_budget:
            return
        self._masks[key] = packed
        self._mask_bytes += packed.numel()
        while self._mask_bytes > self._mask_budget:
            _, old = self._masks.popitem(last=False)
            self._mask_bytes -= old.numel()

    def _logits(self, h: Tensor) -> Tensor:
        logits = self._head(h.to(self._head.weight.dtype)).float()
        if self._softcap:
            cap = float(self._softcap)
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _dense_kl_terms(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token dense terms of KL(p || q) for one sequence, so that q costs one lm_head.

        With z = W h + b the pruned logits, KL = sum p log p - sum p z + logsumexp(z), and
        sum p z = (W^T p) . h + p . b: the dense model enters only through u = W^T p
        (seq, d_model) and c = sum p log p - p . b (seq,), computed once.
        """
        log_p = torch.log_softmax(self._logits(ref), dim=-1)  # (seq, vocab)
        p = log_p.exp()
        c = (p * log_p).sum(dim=-1)
        if self._head.bias is not None:
            c -= p @ self._head.bias.float()
        return p @ self._head.weight.float(), c

    def _kl_fast(self, hidden: Tensor) -> float:
        """Mean over sequences of `_kl`, a chunk of sequences at a time, with one sync (hidden
        may hold only each sequence's first tokens)."""
        assert self._kl_terms is not None
        t = hidden.shape[1]
        u, c = self._kl_terms[0][:, :t], self._kl_terms[1][:, :t]
        per_seq = []
        for i in range(0, hidden.shape[0], self._kl_chunk):
            h = hidden[i : i + self._kl_chunk]  # (b, seq, d_model)
            lse = torch.logsumexp(self._logits(h), dim=-1)  # (b, seq)
            j = i + h.shape[0]
            per_seq.append((c[i:j] - (u[i:j] * h).sum(dim=-1) + lse).mean(dim=-1))
        return float(torch.cat(per_seq).double().mean())

    def _kl(self, h: Tensor, ref: Tensor) -> float:
        """Mean over one sequence's tokens of KL(dense || pruned) of the next-token softmax."""
        log_p = torch.log_softmax(self._logits(ref), dim=-1)  # (seq, vocab), dense
        log_q = torch.log_softmax(self._logits(h), dim=-1)
        return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())

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
        total = 0
        masks = self._layer_masks(candidate)
        for pos, mask in enumerate(masks):
            self._overlay.set_mask(pos, mask)
            if mask is not None:
                pruned += mask.sum()  # stays on the device: one sync per candidate, not per layer
            total += self.dense[pos].numel()
        return int(pruned) / total

    @torch.no_grad()
    def _apply_database(self, candidate: Candidate) -> float:
        """Swap in the stored layers of a per-layer candidate; only changed layers are written.

        The overlay keeps them after the evaluation: the next candidate of a (1+lambda) or
        NSGA-III mutation differs in a few layers, so it costs a few look-ups and one forward.
        """
        db = self.database
        assert db is not None
        index = {round(r, 9): i for i, r in enumerate(db.levels)}
        pruned = 0
        total = 0
        for pos, (_idx, _name, lin) in enumerate(self.layers):
            try:
                level = index[round(candidate.layer_sparsity[pos], 9)]
            except KeyError:
                raise ValueError(
                    f"layer {pos} asks for sparsity {candidate.layer_sparsity[pos]:g}, which is "
                    f"not a level of the layer database {db.levels}"
                ) from None
            if self._loaded[pos] != level:
                self._loaded[pos] = None  # consistent even if a copy fails
                if db.levels[level] == 0:
                    self._overlay.set_mask(pos, None)
                elif db.refit:
                    self._overlay.set_weight(pos, db.get(pos, level))
                else:
                    mask = db.get(pos, level).to(self.device, non_blocking=True)
                    self._overlay.set_mask(pos, mask)
                self._loaded[pos] = level
            pruned += db.pruned(pos, level)
            total += lin.weight.numel()
        return pruned / total

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
    def apply_shipped(self, candidate: Candidate, *, refit: bool = False) -> float:
        """Prune as the final model is pruned; returns its sparsity.

        Unlike `apply`, statistics come from the already-pruned prefix, and with `refit` every
        layer's surviving weights are refit by least squares (optishear.refit.reconstruct): what a
        user downloads. It costs a sequential pass over the blocks (with input Gram matrices
        when refitting).
        """
        self.restore()
        # pruned in place: `restore` reads the dense weights back from the backup
        self._in_place.enter_context(restored_after(self.dense))
        report = prune_candidate(
            self.model,
            self.calib_ids,
            candidate,
            self.pattern,
            refit=refit,
            batch_size=self.batch_size,
        )
        return report.achieved

    @torch.no_grad()
    def compare_held_out(
        self, candidate: Candidate, config: SearchConfig, held_out_ids: Tensor, *, refit: bool
    ) -> HeldOutComparison:
        """Held-out perplexity of the candidate as shipped, Wanda and SparseGPT; the model is
        dense again afterwards (optishear.recipe.comparison)."""
        self.restore()
        return compare_held_out(
            self.model, self.dense, self.calib_ids, held_out_ids, candidate, config, refit=refit
        )

    @torch.no_grad()
    def evaluate(
        self,
        candidate: Candidate,
        n_samples: int | None = None,
        *,
        n_tokens: int | None = None,
        shipped: bool = False,
        refit: bool = False,
    ) -> Evaluation:
        """Prune with the candidate, measure the error on n_samples sequences (their first
        n_tokens tokens), restore.

        With `shipped` the candidate is pruned as the final model is (see `apply_shipped`);
        `refit` implies it and refits the survivors too.
        """
        start = time.perf_counter()
        n = self.n_fitness if n_samples is None else min(n_samples, self.n_fitness)
        seq = self.calib_ids.shape[1]
        t = seq if n_tokens is None else max(1, min(n_tokens, seq))
        ref = self.reference[:, :t]
        try:
            if shipped or refit:
                sparsity = self.apply_shipped(candidate, refit=refit)
            else:
                sparsity = self.apply(candidate)
            hidden = self._final_hidden(n, t if t < seq else None)
            if self.objective == "kl":
                if self._kl_terms is not None:
                    error = self._kl_fast(hidden[:n])
                else:  # a logit soft-cap is not linear in h: compare the real distributions
                    error = sum(self._kl(hidden[i], ref[i]) for i in range(n)) / n
            else:
                err = sum(self._sq_norm(hidden[i : i + 1], ref[i : i + 1]) for i in range(n))
                norm = (
                    sum(self._ref_norm_sq[:n])
                    if t == seq
                    else sum(self._sq_norm(ref[i : i + 1], None) for i in range(n))
                )
                error = (err / norm) ** 0.5
        finally:
            # database candidates stay in place: the next one rewrites only what differs
            if not (candidate.layer_sparsity and self.database is not None) or shipped or refit:
                self.restore()
            # With other threads about (Ray's, a sampler's), glibc keeps an evaluation's freed
            # temporaries in per-thread arenas: 0.7 GB after three on the bundled model.
            # Trimmed past a bound only, so pages are not re-faulted every evaluation.
            release_free_memory(above=_RETAINED_FREE_BYTES)
        return Evaluation(error, sparsity, n, time.perf_counter() - start, t if t < seq else 0)


_RETAINED_FREE_BYTES = 256 << 20  # what an evaluation may leave free in the allocator


def _keep_rho_only(stats: dict[str, LayerStats]) -> None:
    for s in stats.values():
        s.rho = hessian_rho(s.hessian)
        s.xtx = None


def database_request(config: SearchConfig, folder: Path | None = None) -> DatabaseRequest | None:
    """The layer database an allocation search asks for (None for other stages, or off)."""
    a = config.allocation
    if "allocation" not in config.stage_list() or a.database == "off":
        return None
    return DatabaseRequest(
        config.genome,
        config.allocation_levels(),
        refit=a.refit,
        storage=a.database,
        memory_bytes=int(a.memory_gib * 2**30),
        folder=folder,
    )


def engine_for(
    model: nn.Module, calib_ids: Tensor, config: SearchConfig, *, folder: Path | None = None
) -> FitnessEngine:
    """The fitness engine a search config asks for, on a loaded model and its calibration.

    `folder` is where a layer database too big for memory goes (the search's folder).
    """
    return FitnessEngine(
        model,
        calib_ids,
        config.pattern,
        batch_size=config.batch_size,
        fitness_samples=config.fitness_samples,
        objective=config.objective,
        stats=config.engine_stats,
        sparsity=config.target,
        database=database_request(config, folder),
        second_order=config.needs_hessians(),
    )
