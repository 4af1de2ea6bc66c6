"""The fitness engine keeps one copy of the weights: candidates laid over, in-place work undone."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import build_tiny, tiny_engine
from torch import nn

from optishear.core.genome import Genome
from optishear.model.backup import restored_after
from optishear.model.blocks import iter_linears
from optishear.model.overlay import WeightOverlay
from optishear.recipe.candidates import Candidate


def test_an_overlaid_layer_computes_as_the_masked_layer_and_comes_off_cleanly() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    dense = lin.weight.detach().clone()
    x = torch.randn(3, 16)
    mask = torch.rand(8, 16) < 0.5
    overlay = WeightOverlay([lin])
    overlay.set_mask(0, mask)
    want = nn.functional.linear(x, dense.masked_fill(mask, 0.0), lin.bias)
    assert torch.equal(lin(x), want)
    assert torch.equal(lin.weight, dense)  # the layer's own weight was never written
    assert torch.equal(overlay.effective_weight(0), dense.masked_fill(mask, 0.0))
    substitute = torch.randn(8, 16)
    overlay.set_weight(0, substitute)
    assert torch.equal(lin(x), nn.functional.linear(x, substitute, lin.bias))
    with pytest.raises(ValueError, match="shape"):
        overlay.set_weight(0, torch.randn(16, 8))
    overlay.close()
    assert "forward" not in vars(lin)
    assert torch.equal(lin(x), nn.functional.linear(x, dense, lin.bias))


def test_a_deep_copy_of_an_overlaid_model_is_independent() -> None:
    model = build_tiny("llama")
    linears = [lin for _, _, lin in iter_linears(model)]
    overlay = WeightOverlay(linears)
    overlay.set_mask(0, torch.ones_like(linears[0].weight, dtype=torch.bool))
    twin = copy.deepcopy(model)
    overlay.clear()
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        # the copy kept the mask it was copied with; clearing the original leaves it alone
        assert not torch.equal(twin(ids).logits, model(ids).logits)
        overlay.close()
        twin_lin = next(iter_linears(twin))[2]
        vars(twin_lin).pop("_overlay_mask")
        assert torch.equal(twin(ids).logits, model(ids).logits)


def test_layers_with_their_own_forward_are_refused() -> None:
    class Custom(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    with pytest.raises(TypeError, match="own forward"):
        WeightOverlay([Custom(4, 4)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_work_is_undone_bit_for_bit(dtype: torch.dtype) -> None:
    tensors = [torch.randn(5, 7).to(dtype), torch.randn(3).to(dtype)]
    before = [t.clone() for t in tensors]
    with restored_after(tensors):
        for t in tensors:
            t.mul_(0).add_(1)
    assert all(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))

    def fail_midway() -> None:
        with restored_after(tensors):
            tensors[0].zero_()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert torch.equal(tensors[0], before[0])


def test_the_engine_holds_the_weights_once() -> None:
    engine, model, ids = tiny_engine()
    weights = {lin.weight.data_ptr() for _, _, lin in engine.layers}
    # the dense weights the engine scores masks from are the model's own tensors
    assert {W.data_ptr() for W in engine.dense} == weights
    dense = copy.deepcopy(model)
    cand = Candidate(Genome.parse("f1=sqrt,alpha=inv_col_sum"), (0.5,) * 4)
    engine.apply(cand)
    assert all(
        torch.equal(lin.weight, ref.weight)
        for (_, _, lin), (_, _, ref) in zip(engine.layers, iter_linears(dense), strict=True)
    )
    # a candidate applied in place by hand computes as the overlaid one
    masked = copy.deepcopy(dense)
    for pos, (_, _, lin) in enumerate(iter_linears(masked)):
        lin.weight.data.copy_(engine._overlay.effective_weight(pos))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, masked(ids).logits, atol=1e-6)
    engine.restore()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, dense(ids).logits)
    engine.close()
    assert all("forward" not in vars(lin) for _, _, lin in engine.layers)
