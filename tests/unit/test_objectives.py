"""The KL objective: its one-pass logsumexp is the exact one, and falls back where float32 ends."""

import pytest
import torch
from torch import nn

from optishear.search.objectives import OutputError


def _exact_kl(head: nn.Linear, ref: torch.Tensor, hidden: torch.Tensor) -> float:
    log_p = head(ref).double().log_softmax(-1)
    log_q = head(hidden).double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


@pytest.mark.parametrize("bias", [False, True])
def test_kl_is_the_exact_kl_of_the_logits(bias: bool) -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 300, bias=bias).requires_grad_(False)
    ref = torch.randn(3, 7, 16)
    hidden = ref + 0.3 * torch.randn_like(ref)
    error = OutputError(head, ref, "kl", softcap=None, kl_chunk=2)
    kl = error.error(hidden, 3, 7)
    assert kl == pytest.approx(_exact_kl(head, ref, hidden), rel=1e-4)  # float32 against float64
    assert kl == pytest.approx(error._kl_fast(hidden, exact=True), rel=1e-5)
    # the first tokens only: the dense terms are cut to them
    assert error.error(hidden[:, :4], 3, 4) == pytest.approx(
        _exact_kl(head, ref[:, :4], hidden[:, :4]), rel=1e-4
    )


@pytest.mark.parametrize("scale", [1e3, -1e3])
def test_kl_far_from_the_dense_logits_falls_back_to_the_exact_logsumexp(scale: float) -> None:
    # logits of ~1e3 overflow float32's exp (one sign or the other): the error must still be
    # the exact, finite KL
    torch.manual_seed(1)
    head = nn.Linear(8, 50, bias=False).requires_grad_(False)
    ref = torch.randn(2, 5, 8)
    hidden = ref.clone()
    hidden[1] = scale * ref[1]
    error = OutputError(head, ref, "kl", softcap=None, kl_chunk=1)
    fast = error._fast_logsumexp(hidden, error.kl_terms[2])
    assert not bool(torch.isfinite(fast).all())  # the case the fallback is for
    kl = error.error(hidden, 2, 5)
    assert kl == pytest.approx(_exact_kl(head, ref, hidden), rel=1e-4)


def test_a_model_with_large_logits_is_shifted_where_they_are_large() -> None:
    # dense logits up to ~150 on some tokens: exp would overflow without the shift
    torch.manual_seed(2)
    head = nn.Linear(8, 40, bias=False).requires_grad_(False)
    ref = torch.randn(2, 6, 8)
    ref[0, :3] *= 200.0
    hidden = ref + 0.05 * torch.randn_like(ref)
    error = OutputError(head, ref, "kl", softcap=None, kl_chunk=1)
    assert error.shifted
    shift = error.kl_terms[2]
    assert bool((shift[0, :3] > 0).all())
    assert bool((shift[1] == 0).all())
    assert bool(torch.isfinite(error._fast_logsumexp(hidden, shift)).all())
    # float32 terms of ~150 cancel to ~1e-4: both paths carry that rounding, equally
    kl = error.error(hidden, 2, 6)
    assert kl == pytest.approx(error._kl_fast(hidden, exact=True), rel=1e-4)
    assert kl == pytest.approx(_exact_kl(head, ref, hidden), rel=5e-2)
