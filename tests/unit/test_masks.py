import pytest
import torch

from optishear.core.errors import ConfigError
from optishear.core.patterns import Pattern, check_pattern_fits
from optishear.methods.masks import pack_mask, prune_mask, unpack_mask


def test_pattern_parse() -> None:
    assert Pattern.parse("unstructured") == Pattern()
    assert Pattern.parse("2:4") == Pattern(2, 4)
    assert Pattern.parse(" 4 : 8 ").sparsity == 0.5
    for bad in ("2-4", "4:2", "0:4", "sparse", "2:2"):
        with pytest.raises(ConfigError):
            Pattern.parse(bad)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.73])
def test_row_mask_is_exact_per_row(ratio: float) -> None:
    score = torch.rand(17, 40, generator=torch.Generator().manual_seed(0))
    mask = prune_mask(score, ratio, Pattern())
    assert (mask.sum(dim=1) == round(40 * ratio)).all()
    # the pruned entries are the lowest of their row
    for row, m in zip(score, mask, strict=True):
        assert row[m].max() <= row[~m].min()


def test_row_mask_exact_with_ties() -> None:
    score = torch.zeros(4, 16)  # every weight tied
    assert (prune_mask(score, 0.5, Pattern()).sum(dim=1) == 8).all()


def test_matrix_mask_is_exact_overall() -> None:
    score = torch.rand(9, 11, generator=torch.Generator().manual_seed(0))
    mask = prune_mask(score, 0.4, Pattern(), per_matrix=True)
    assert int(mask.sum()) == round(99 * 0.4)
    assert score[mask].max() <= score[~mask].min()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_valid(n: int, m: int) -> None:
    score = torch.rand(6, 32, generator=torch.Generator().manual_seed(0))
    mask = prune_mask(score, n / m, Pattern(n, m))
    groups = mask.view(6, 32 // m, m)
    assert (groups.sum(dim=-1) == n).all()
    sg = score.view(6, 32 // m, m)
    assert (sg.masked_fill(~groups, -1).amax(-1) <= sg.masked_fill(groups, 2).amin(-1)).all()


def test_nm_that_does_not_divide_layer() -> None:
    with pytest.raises(ConfigError, match=r"does not divide layer blk\.q"):
        check_pattern_fits(Pattern(4, 8), 36, "blk.q")


def test_ties_go_to_the_lower_index_first() -> None:
    score = torch.tensor([[1.0, 0.5, 0.5, 0.5, 2.0, 0.5, 0.5, 3.0]])
    row = prune_mask(score, 0.5, Pattern())
    assert row.tolist() == [[False, True, True, True, False, True, False, False]]
    assert torch.equal(prune_mask(score, 0.5, Pattern(), per_matrix=True), row)
    nm = prune_mask(score, 0.5, Pattern(2, 4))
    assert nm.tolist() == [[False, True, True, False, False, True, True, False]]
    nm8 = prune_mask(score, 0.5, Pattern(4, 8))
    assert nm8.tolist() == [[False, True, True, True, False, True, False, False]]


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_n_m_selections_equal_the_stable_sort(n: int, m: int) -> None:
    """The comparison-rank N:M selection (CUDA) and the pairwise one (CPU) give a stable sort's
    masks, ties to the lower index too."""
    from optishear.methods.masks import _lowest_in_groups_by_pairs, _lowest_in_groups_by_rank

    gen = torch.Generator().manual_seed(0)
    score = torch.randint(0, 4, (16, 64), generator=gen).float()  # many ties
    score[:8] = torch.rand(8, 64, generator=gen)
    groups = score.view(16, 64 // m, m)
    idx = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    expected = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).view(16, 64)
    assert torch.equal(prune_mask(score, n / m, Pattern(n, m)), expected)
    assert torch.equal(_lowest_in_groups_by_rank(groups, n).reshape(16, 64), expected)
    assert torch.equal(_lowest_in_groups_by_pairs(groups, n).reshape(16, 64), expected)


@pytest.mark.parametrize("shape", [(3, 8), (5, 7), (1,), (64, 129)])
def test_packed_masks_round_trip_in_an_eighth_of_the_bytes(shape) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=g) < 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, mask.shape), mask)
