"""The model-wise error of a candidate: its lm_head inputs against the dense model's.

Two objectives, both accumulated one sequence at a time:
- "kl" (default): mean per-token KL(dense || pruned) of the next-token distributions. The
  dense logits are recomputed from the stored hidden states, one sequence at a time.
- "logits_fro": the paper's ||logits_dense - logits_pruned||_F / ||logits_dense||_F, computed
  without logits: for a linear, bias-free lm_head, ||(H_d - H_p) W^T||_F^2 is the sum over
  tokens of d^T (W^T W) d, with d the difference of the final hidden states.
On the bundled model the Frobenius objective ranks badly: at 2:4 it preferred a genome with
3x Wanda's held-out perplexity over Wanda itself (bench/HISTORY.md, issue 3), because a uniform shrink
of all logits lowers it. The KL objective measures what perplexity measures.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from optishear.config import Objective

# Tokens whose dense largest logit is above this are shifted down by the excess before exp:
# float32's exp overflows near 88, and a pruned model's logits may exceed the dense ones.
_SAFE_LOGIT = 60.0


class OutputError:
    """The dense model's lm_head inputs on the fitness sequences, and a candidate's error
    against them."""

    def __init__(
        self,
        head: nn.Linear,
        reference: Tensor,
        objective: Objective,
        *,
        softcap: float | None,
        kl_chunk: int,
    ) -> None:
        """`reference`: the dense final hidden states (n, seq, d_model). `kl_chunk`: sequences
        whose logits the fast KL makes at once (few kernel launches on a GPU, bounded float32
        logits, tokens x vocab, in memory)."""
        self.head = head
        self.objective = objective
        self.softcap = softcap
        self.kl_chunk = kl_chunk
        W_head = head.weight.detach().float()  # (vocab, d_model)
        self.gram = W_head.T @ W_head  # (d_model, d_model)
        self.reference = reference
        n = reference.shape[0]
        self.ref_norm_sq = [self.sq_norm(reference[i : i + 1], None) for i in range(n)]
        # u (n, seq, d_model), c (n, seq), and the logsumexp's shift (n, seq)
        self.shifted = False
        self.kl_terms: tuple[Tensor, Tensor, Tensor] | None = None
        if objective == "kl" and not softcap:
            terms = [self._dense_kl_terms(reference[i]) for i in range(n)]
            self.kl_terms = (
                torch.stack([u for u, _, _ in terms]),
                torch.stack([c for _, c, _ in terms]),
                torch.stack([s for _, _, s in terms]),
            )
            self.shifted = bool(self.kl_terms[2].any())

    def error(self, hidden: Tensor, n: int, t: int) -> float:
        """The objective over the first n sequences' first t tokens (hidden holds them)."""
        seq = self.reference.shape[1]
        ref = self.reference[:, :t]
        if self.objective == "kl":
            if self.kl_terms is not None:
                return self._kl_fast(hidden[:n])
            # a logit soft-cap is not linear in h: compare the real distributions
            return sum(self._kl(hidden[i], ref[i]) for i in range(n)) / n
        err = sum(self.sq_norm(hidden[i : i + 1], ref[i : i + 1]) for i in range(n))
        norm = (
            sum(self.ref_norm_sq[:n])
            if t == seq
            else sum(self.sq_norm(ref[i : i + 1], None) for i in range(n))
        )
        return (err / norm) ** 0.5

    def sq_norm(self, h: Tensor, ref: Tensor | None) -> float:
        """||logits(h) - logits(ref)||_F^2 (or ||logits(h)||^2 without ref), exactly."""
        if self.softcap:  # a non-linear cap after lm_head: compare real logits
            cap = float(self.softcap)
            logits = cap * torch.tanh(self.head(h.to(self.head.weight.dtype)).float() / cap)
            if ref is not None:
                logits -= cap * torch.tanh(self.head(ref.to(self.head.weight.dtype)).float() / cap)
            return float(logits.pow(2).sum())
        d = (h if ref is None else h - ref).reshape(-1, h.shape[-1])  # (tokens, d_model)
        return float(((d @ self.gram) * d).sum())

    def _logits(self, h: Tensor) -> Tensor:
        logits = self.head(h.to(self.head.weight.dtype)).float()
        if self.softcap:
            cap = float(self.softcap)
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _dense_kl_terms(self, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token dense terms of KL(p || q) for one sequence, so that q costs one lm_head.

        With z = W h + b the pruned logits, KL = sum p log p - sum p z + logsumexp(z), and
        sum p z = (W^T p) . h + p . b: the dense model enters only through u = W^T p
        (seq, d_model) and c = sum p log p - p . b (seq,), computed once; the shift of the
        pruned logsumexp (`_fast_logsumexp`) comes from the dense largest logit (seq,).
        """
        logits = self._logits(ref)  # (seq, vocab)
        log_p = torch.log_softmax(logits, dim=-1)
        p = log_p.exp()
        c = (p * log_p).sum(dim=-1)
        if self.head.bias is not None:
            c -= p @ self.head.bias.float()
        shift = (logits.amax(dim=-1) - _SAFE_LOGIT).clamp_(min=0)
        return p @ self.head.weight.float(), c, shift

    def _kl_fast(self, hidden: Tensor, *, exact: bool = False) -> float:
        """Mean over sequences of `_kl`, a chunk of sequences at a time, with one sync (hidden
        may hold only each sequence's first tokens)."""
        assert self.kl_terms is not None
        t = hidden.shape[1]
        u, c, shift = (x[:, :t] for x in self.kl_terms)
        per_seq = []
        for i in range(0, hidden.shape[0], self.kl_chunk):
            h = hidden[i : i + self.kl_chunk]  # (b, seq, d_model)
            j = i + h.shape[0]
            if exact:
                lse = torch.logsumexp(self._logits(h), dim=-1)
            else:
                lse = self._fast_logsumexp(h, shift[i:j])  # (b, seq)
            per_seq.append((c[i:j] - (u[i:j] * h).sum(dim=-1) + lse).mean(dim=-1))
        kl = float(torch.cat(per_seq).double().mean())
        if not exact and not math.isfinite(kl):  # left float32's range: see _fast_logsumexp
            return self._kl_fast(hidden, exact=True)
        return kl

    def _fast_logsumexp(self, h: Tensor, shift: Tensor) -> Tensor:
        """logsumexp of the pruned logits, in one pass over them after the lm_head product.

        `torch.logsumexp` takes four passes over tokens x vocab floats (max, subtract, exp,
        sum) and allocates a copy; here exp and sum run in place on the product. Float32's
        exp holds logits up to ~88, far above a language model's, so no max is subtracted:
        only tokens whose dense largest logit is above `_SAFE_LOGIT` are shifted (`shift`,
        zero elsewhere). A pruned logit that still leaves float32's range, up or down, makes
        the result not finite, and the caller computes the exact logsumexp instead.
        """
        z = self._logits(h)
        if self.shifted:
            z.sub_(shift[..., None])
        return z.exp_().sum(dim=-1).log_().add_(shift)

    def _kl(self, h: Tensor, ref: Tensor) -> float:
        """Mean over one sequence's tokens of KL(dense || pruned) of the next-token softmax."""
        log_p = torch.log_softmax(self._logits(ref), dim=-1)  # (seq, vocab), dense
        log_q = torch.log_softmax(self._logits(h), dim=-1)
        return float((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())
