"""A candidate starts at the first block it changes, and scores exactly as if it ran them all."""

import copy

import pytest
import torch
from tiny_models import VOCAB, build_tiny

from optishear.core.genome import Genome
from optishear.core.patterns import Pattern
from optishear.recipe.candidates import Candidate
from optishear.search.database import DatabaseRequest
from optishear.search.fitness import FitnessEngine

GENOME = Genome.parse("f1=sqrt")


def _engines(prefix_bytes: int = 1 << 30, database: DatabaseRequest | None = None):  # type: ignore[no-untyped-def]
    """The same tiny model and data twice: one engine keeps block outputs, one never does."""
    model = build_tiny("llama", layers=4)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    kept = FitnessEngine(
        model, ids, Pattern(), batch_size=3, database=database, prefix_cache_bytes=prefix_bytes
    )  # batches of 2 (the largest divisor of 8 up to 3): 4 forward calls a candidate
    plain = FitnessEngine(
        copy.deepcopy(model), ids, Pattern(), batch_size=3, database=database, prefix_cache_bytes=0
    )
    return kept, plain


def _same(kept: FitnessEngine, plain: FitnessEngine, c: Candidate, **kw) -> float:  # type: ignore[no-untyped-def]
    a, b = kept.evaluate(c, **kw), plain.evaluate(c, **kw)
    assert a.error == b.error  # bit for bit, not approximately
    assert a.sparsity == b.sparsity
    return a.error


def test_a_child_starts_at_its_first_changed_block_and_scores_bit_for_bit() -> None:
    kept, plain = _engines()
    parent = Candidate(GENOME, (0.5, 0.5, 0.5, 0.5))
    _same(kept, plain, parent)
    assert (kept.prefix_stats.run, kept.prefix_stats.skipped) == (4, 0)
    child = Candidate(GENOME, (0.5, 0.5, 0.4, 0.6))  # blocks 0 and 1 as the parent's
    e = _same(kept, plain, child)
    assert (kept.prefix_stats.run, kept.prefix_stats.skipped) == (6, 2)
    # the child's outputs are kept too: its own child skips three blocks
    _same(kept, plain, Candidate(GENOME, (0.5, 0.5, 0.4, 0.7)))
    assert kept.prefix_stats.skipped == 5
    # the same candidate again skips every block and gives the same error
    assert kept.evaluate(child).error == e
    assert kept.prefix_stats.skipped == 9
    # another genome changes every block: nothing is shared
    _same(kept, plain, Candidate(Genome.parse("f1=square"), (0.5, 0.5, 0.4, 0.7)))
    assert kept.prefix_stats.skipped == 9


def test_outputs_serve_only_the_same_sequences_and_tokens() -> None:
    kept, plain = _engines()
    parent = Candidate(GENOME, (0.5, 0.5, 0.5, 0.5))
    child = Candidate(GENOME, (0.5, 0.5, 0.5, 0.6))
    _same(kept, plain, parent, n_samples=4)
    _same(kept, plain, child)  # all sequences: the parent's 4 do not serve it
    _same(kept, plain, child, n_tokens=12)
    assert kept.prefix_stats.skipped == 0
    _same(kept, plain, child, n_samples=4)  # the parent's fidelity: blocks 0-2 are its
    assert kept.prefix_stats.skipped == 3


def test_a_small_budget_keeps_every_other_block_and_stays_within_it() -> None:
    # one block's outputs over 8 x 24 tokens of width 32 are 24 KiB in float32: a budget of
    # 100 KiB lets a candidate keep 50 KiB, two of its four blocks
    kept, plain = _engines(prefix_bytes=100 << 10)
    _same(kept, plain, Candidate(GENOME, (0.5, 0.5, 0.5, 0.5)))
    (entry,) = kept._prefix._entries.values()
    assert sorted(entry.outputs) == [1, 3]
    for last in (0.6, 0.7, 0.4):
        _same(kept, plain, Candidate(GENOME, (0.5, 0.5, 0.5, last)))
        assert kept._prefix.bytes <= 100 << 10
    # the children share blocks 0-2 with the parent, and start after block 1, the last kept
    assert kept.prefix_stats.skipped == 3 * 2


@pytest.mark.parametrize("refit", [False, True])
def test_database_candidates_share_blocks_too(refit: bool) -> None:
    request = DatabaseRequest(genome=GENOME, levels=(0.3, 0.5, 0.7), refit=refit)
    kept, plain = _engines(database=request)
    n = len(kept.layers)
    uniform = (0.5,) * n
    parent = Candidate(GENOME, (0.5,) * 4, uniform)
    _same(kept, plain, parent)
    per_block = n // 4
    moved = list(uniform)
    moved[3 * per_block], moved[3 * per_block + 1] = 0.3, 0.7  # block 3 only
    child = Candidate(GENOME, (0.5,) * 4, tuple(moved))
    _same(kept, plain, child)
    assert kept.prefix_stats.skipped == 3
    # a per-block candidate of the same ratios is masked from the genome, not the database:
    # not the database candidate's blocks
    _same(kept, plain, Candidate(GENOME, (0.5,) * 4))
    assert kept.prefix_stats.skipped == 3


def test_a_batch_is_evaluated_in_prefix_order_and_answered_in_its_own() -> None:
    from optishear.search.evaluator import InProcessEvaluator

    kept, plain = _engines()
    plans = [(0.6, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.6), (0.6, 0.5, 0.5, 0.4), (0.5, 0.5, 0.5, 0.4)]
    batch = [Candidate(GENOME, p) for p in plans]
    got = InProcessEvaluator(kept).evaluate(batch)
    assert [e.error for e in got] == [plain.evaluate(c).error for c in batch]
    # sorted: (0.5,...,0.4) (0.5,...,0.6) (0.6,...,0.4) (0.6,...,0.5): 3 + 0 + 3 blocks skipped
    assert kept.prefix_stats.skipped == 6
