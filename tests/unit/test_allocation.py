"""The allocation stage: per-layer levels, the level-switch mutation, the layer database."""

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tiny_models import VOCAB, build_tiny

from optishear.artifacts.export import measured_sparsity
from optishear.config import PlanConfig, PruneConfig, SearchConfig
from optishear.core.genome import WANDA_GENOME, Genome
from optishear.core.patterns import Pattern
from optishear.methods.masks import prune_mask
from optishear.methods.meta import meta_log_score
from optishear.methods.sparsegpt import sparsegpt_prune
from optishear.model.blocks import iter_linears
from optishear.recipe.candidates import Candidate
from optishear.recipe.prune import prune_model
from optishear.recipe.shipped import prune_candidate
from optishear.search.allocation import AllocationSpace, LayerLayout, LevelSwitch, mutate
from optishear.search.engine_spec import engine_for
from optishear.search.evaluator import InProcessEvaluator
from optishear.search.loop import run_search
from optishear.search.state import SearchState

# A GQA-like block: q and o 4x, k and v 1x, three MLP layers 10x (an MLP holds 3 attentions).
_LAYOUT = LayerLayout.of(
    [
        (b, name, n)
        for b in range(6)
        for name, n in [
            ("self_attn.q_proj", 4096),
            ("self_attn.k_proj", 1024),
            ("self_attn.v_proj", 1024),
            ("self_attn.o_proj", 4096),
            ("mlp.gate_proj", 10240),
            ("mlp.up_proj", 10240),
            ("mlp.down_proj", 10240),
        ]
    ]
)


def _config(**fields) -> SearchConfig:
    return SearchConfig(model="tiny", stages="allocation", **fields)


def _pruned_count(space: AllocationSpace, x: np.ndarray) -> float:
    levels = np.asarray(space.levels)[x]
    return float(np.dot(levels, space.unit_numel))


@pytest.mark.parametrize("granularity", ["layer", "part"])
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_level_switch_keeps_the_budget_exact_after_every_mutation(granularity, target) -> None:
    config = _config(sparsity=target, allocation={"granularity": granularity, "levels": 3})
    space = AllocationSpace.build(config, _LAYOUT, WANDA_GENOME)
    rng = np.random.default_rng(0)
    x = space.start(rng)
    budget = _pruned_count(space, x)
    assert space.sparsity(x) == pytest.approx(target, abs=1e-12)
    seen = set()
    for _ in range(500):
        mutate(space, x, int(rng.integers(1, 4)), rng)
        assert _pruned_count(space, x) == pytest.approx(budget, rel=1e-12)
        assert x.min() >= 0
        assert x.max() < len(space.levels)
        seen.add(tuple(x))
    assert len(seen) > 400  # the moves explore, and they reach layers of different sizes
    per_size = {n: [] for n in set(space.unit_numel.tolist())}
    for n, level in zip(space.unit_numel, x, strict=True):
        per_size[int(n)].append(space.levels[level])
    assert len({round(float(np.dot(v, [1] * len(v))) / len(v), 6) for v in per_size.values()}) > 1


def test_the_mutation_operator_keeps_the_budget_through_pymoo() -> None:
    config = _config(sparsity=0.6)
    space = AllocationSpace.build(config, _LAYOUT, WANDA_GENOME)
    X = np.tile(space.start(np.random.default_rng(1)), (32, 1)).astype(float)
    out = LevelSwitch(space, 5)._do(None, X, random_state=np.random.default_rng(2))
    assert not np.array_equal(out, X)
    for row in out.astype(int):
        assert space.sparsity(row) == pytest.approx(0.6, abs=1e-12)


def test_n_m_with_dense_exceptions_stays_within_the_budget() -> None:
    config = _config(pattern="2:4", sparsity=0.42)
    space = AllocationSpace.build(config, _LAYOUT, WANDA_GENOME)
    assert space.levels == (0.0, 0.5)
    rng = np.random.default_rng(0)
    x = space.start(rng)
    for _ in range(300):
        assert space.sparsity(x) >= 0.42 - 1e-12
        assert (x == 0).any()  # some layers dense
        # no further unit could be dense: the budget is used
        free = [u for u in np.flatnonzero(x != 0) if space.sparsity(_dense(x, u)) >= 0.42 - 1e-12]
        assert free == []
        mutate(space, x, 1, rng)
    cand = space.decode(x)
    assert set(cand.layer_sparsity) == {0.0, 0.5}


def _dense(x: np.ndarray, u: int) -> np.ndarray:
    y = x.copy()
    y[u] = 0
    return y


def test_front_mode_moves_stay_in_the_range() -> None:
    config = _config(sparsity=0.5, allocation={"selection": "nsga3", "front": [0.4, 0.7]})
    space = AllocationSpace.build(config, _LAYOUT, WANDA_GENOME)
    assert space.levels[0] == pytest.approx(0.4)
    assert space.levels[-1] == pytest.approx(0.7)
    rng = np.random.default_rng(0)
    x = space.start(rng)
    sparsities = set()
    for _ in range(400):
        mutate(space, x, 2, rng)
        s = space.sparsity(x)
        assert 0.4 - 1e-12 <= s <= 0.7 + 1e-12
        sparsities.add(round(s, 4))
    assert len(sparsities) > 20


def test_allocation_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="needs selection nsga3"):
        _config(allocation={"front": [0.4, 0.7]})
    with pytest.raises(ValidationError, match="must lie in the front"):
        _config(sparsity=0.3, allocation={"selection": "nsga3", "front": [0.4, 0.7]})
    with pytest.raises(ValidationError, match=r"at most 0\.5"):
        _config(pattern="2:4", sparsity=0.6)
    with pytest.raises(ValidationError, match=r"exactly 0\.5"):  # dense exceptions: allocation only
        SearchConfig(model="tiny", pattern="2:4", sparsity=0.45)
    with pytest.raises(ValidationError, match="screening steps must grow"):
        _config(low_fidelity_samples=[4, 2])
    assert _config(low_fidelity_samples=2).low_fidelity_samples == (2,)
    assert _config(allocation={"selection": "nsga3", "front": "0.4,0.6"}).target == 0.5
    levels = _config(sparsity=0.1, allocation={"levels": 4}).allocation_levels()
    assert levels == (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # clipped at 0, 0 is dense


def _tiny(pattern="unstructured", **fields):
    model = build_tiny("llama", layers=4)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    config = _config(pattern=pattern, batch_size=4, **fields)
    return model, ids, config


def _database_off(config: SearchConfig) -> SearchConfig:
    body = config.model_dump(mode="json")
    body["allocation"]["database"] = "off"
    return SearchConfig.model_validate(body)


def _random_layers(engine, levels, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(float(levels[i]) for i in rng.integers(0, len(levels), len(engine.layers)))


def test_database_swap_equals_masking_directly() -> None:
    model, ids, config = _tiny(sparsity=0.5)
    engine = engine_for(model, ids, config)
    off = engine_for(copy.deepcopy(model), ids, _database_off(config))
    assert engine.database is not None
    assert off.database is None
    levels = config.allocation_levels()
    for seed in range(4):  # several in a row: only changed layers are swapped in
        layers = _random_layers(engine, levels, seed)
        cand = Candidate(WANDA_GENOME, (0.5,) * 4, layers)
        a, b = engine.evaluate(cand), off.evaluate(cand)
        assert a.error == pytest.approx(b.error, rel=1e-6, abs=1e-9)
        assert a.sparsity == b.sparsity
    # a per-block candidate after database ones sees the dense weights again
    block = Candidate(WANDA_GENOME, (0.5,) * 4)
    assert engine.evaluate(block).error == pytest.approx(off.evaluate(block).error, rel=1e-6)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_refit_database_equals_masking_and_refitting_directly(where, tmp_path) -> None:
    model, ids, config = _tiny(
        sparsity=0.5, engine_stats="dense", allocation={"refit": True, "database": where}
    )
    dense_model = copy.deepcopy(model)
    engine = engine_for(model, ids, config, folder=tmp_path)
    assert engine.database is not None
    assert engine.database.storage == where
    if where == "disk":
        assert list(tmp_path.glob("layer-database-*/layer*.npy"))
    layers = _random_layers(engine, config.allocation_levels(), 3)
    cand = Candidate(WANDA_GENOME, (0.5,) * 4, layers)
    got = engine.evaluate(cand)

    # The same prune by hand: dense statistics and Hessians, the genome's masks, OBS update.
    from optishear.model.blocks import capture_block_inputs
    from optishear.recipe.prune import collect_dense_stats

    inputs = capture_block_inputs(dense_model, ids, 4)
    stats = collect_dense_stats(dense_model, inputs, hessian=True)
    direct = copy.deepcopy(dense_model)
    with torch.no_grad():
        for pos, (b, name, lin) in enumerate(iter_linears(direct)):
            st = stats[b][name]
            if layers[pos] == 0:
                continue
            score = meta_log_score(lin.weight, st.act_sq, WANDA_GENOME)
            mask = prune_mask(score, layers[pos], Pattern())
            sparsegpt_prune(lin.weight.data, st.hessian, layers[pos], Pattern(), fixed_mask=mask)
        for pos, (_, _, a) in enumerate(iter_linears(direct)):
            assert torch.allclose(a.weight, engine.weight(pos), atol=1e-6)
        log_p = torch.log_softmax(dense_model(ids).logits.double(), -1)
        log_q = torch.log_softmax(direct(ids).logits.double(), -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert got.error == pytest.approx(kl, rel=1e-3, abs=1e-7)
    engine.close()
    assert not list(tmp_path.glob("layer-database-*"))


def test_the_database_estimate_is_its_size() -> None:
    model, ids, config = _tiny(sparsity=0.5, allocation={"refit": True})
    engine = engine_for(model, ids, config)
    info = engine.database_info()
    weights = sum(lin.weight.numel() for _, _, lin in engine.layers)
    stored = sum(1 for r in config.allocation_levels() if r > 0)
    assert info.bytes == weights * stored * 4
    held = sum(t.numel() * t.element_size() for t in engine.database._mem.values())
    assert held == info.bytes
    assert "GiB in memory" in info.describe()


def test_a_per_layer_plan_ships_with_dense_exceptions_under_2_4() -> None:
    model = build_tiny("llama", layers=4)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    n = len(list(iter_linears(model)))
    layers = tuple(0.0 if i % 5 == 0 else 0.5 for i in range(n))
    report = prune_candidate(model, ids, Candidate(WANDA_GENOME, (0.5,) * 4, layers), Pattern(2, 4))
    for pos, (_b, _name, lin) in enumerate(iter_linears(model)):
        zero = lin.weight == 0
        if layers[pos] == 0:
            assert not zero.any()
        else:  # exactly 2 of every 4 consecutive inputs pruned
            assert (zero.view(zero.shape[0], -1, 4).sum(-1) == 2).all()
    numel = [lin.weight.numel() for _, _, lin in iter_linears(model)]
    expected = sum(r * k for r, k in zip(layers, numel, strict=True)) / sum(numel)
    assert report.achieved == pytest.approx(expected)
    assert measured_sparsity(model)["overall"] == pytest.approx(expected)
    with pytest.raises(ValidationError, match="kept dense"):
        PruneConfig(pattern="2:4", plan=PlanConfig(kind="explicit", linear_sparsity=(0.3,) * n))


def test_a_per_layer_plan_prunes_each_layer_to_its_own_sparsity() -> None:
    model = build_tiny("llama", layers=4)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    n = len(list(iter_linears(model)))
    layers = tuple([0.25, 0.5, 0.75][i % 3] for i in range(n))
    config = PruneConfig(
        method="wanda", plan=PlanConfig(kind="explicit", linear_sparsity=layers), batch_size=4
    )
    prune_model(model, ids, config)
    for pos, (_b, _name, lin) in enumerate(iter_linears(model)):
        assert float((lin.weight == 0).float().mean()) == pytest.approx(layers[pos], abs=0.02)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"allocation": {"selection": "nsga3"}},
        {"allocation": {"granularity": "part"}, "low_fidelity_samples": [2, 4]},
        {"pattern": "2:4", "sparsity": 0.4},
    ],
)
def test_allocation_search_resume_equals_uninterrupted(fields, tmp_path) -> None:
    # the search's own recommendation: no published baseline in the way
    base = {"sparsity": 0.5, "population": 6, "generations": 4, "fallback_baselines": False}
    model, ids, config = _tiny(**(base | fields))
    engine = engine_for(model, ids, config)
    full = run_search(InProcessEvaluator(engine), config)
    assert full.recommended.meets_target
    assert full.recommended.candidate.layer_sparsity
    assert len(full.history) == 4
    # the search found something at least as good as where it started (uniform, or N:M with
    # its first dense exceptions)
    start = full.stages[0].baseline
    assert full.recommended.evaluation.error <= engine.evaluate(start).error + 1e-12

    class Interrupt(Exception):  # noqa: N818
        pass

    def stop(p):
        if p.generation == 2:
            raise Interrupt

    state = tmp_path / "state.json"
    with pytest.raises(Interrupt):
        run_search(InProcessEvaluator(engine), config, state_path=state, progress=stop)
    assert SearchState.from_json(state.read_bytes()).tells
    resumed = run_search(InProcessEvaluator(engine), config, state_path=state, resume=True)
    assert [s.candidate for s in resumed.front] == [s.candidate for s in full.front]
    assert [h["best_error"] for h in resumed.history] == [h["best_error"] for h in full.history]
    assert resumed.recommended.record() == full.recommended.record()


def test_the_evaluation_budget_stops_a_stage() -> None:
    model, ids, config = _tiny(
        sparsity=0.5, population=4, generations=50, max_evaluations=10, low_fidelity_samples=[2]
    )
    result = run_search(InProcessEvaluator(engine_for(model, ids, config)), config)
    costs = [h["cost"] for h in result.history]
    assert sum(costs[:-1]) < 10 <= sum(costs)
    assert costs[1] < 4  # 4 offspring screened on 2 of 8 sequences, 2 promoted: 4 x 1/4 + 2


def test_sparsity_front_is_non_dominated_and_exports_reload_with_their_sparsity(tmp_path) -> None:
    model, ids, config = _tiny(
        sparsity=0.5,
        population=8,
        generations=4,
        allocation={"selection": "nsga3", "front": [0.3, 0.7], "step": 0.1},
    )
    dense = copy.deepcopy(model)
    result = run_search(InProcessEvaluator(engine_for(model, ids, config)), config)
    front = result.front
    assert len(front) >= 3
    points = [(s.evaluation.error, s.evaluation.sparsity) for s in front]
    for e, sp in points:  # nobody on the front is both better and sparser
        assert not any(e2 <= e and s2 >= sp and (e2, s2) != (e, sp) for e2, s2 in points)
    assert max(sp for _, sp in points) - min(sp for _, sp in points) > 0.2
    for s in front[:3]:  # each point ships at its measured sparsity
        shipped = copy.deepcopy(dense)
        prune_candidate(shipped, ids, s.record().candidate(), Pattern(), batch_size=4)
        shipped.save_pretrained(tmp_path / s.candidate.label())
        reloaded = type(dense).from_pretrained(tmp_path / s.candidate.label())
        assert measured_sparsity(reloaded)["overall"] == pytest.approx(
            s.evaluation.sparsity, abs=1e-9
        )


def test_a_genome_other_than_wandas_drives_the_database() -> None:
    genome = Genome.parse("f1=sqrt,alpha=inv_col_sum")
    model, ids, config = _tiny(sparsity=0.5, genome=genome)
    engine = engine_for(model, ids, config)
    off = engine_for(copy.deepcopy(model), ids, _database_off(config))
    cand = Candidate(genome, (0.5,) * 4, _random_layers(engine, config.allocation_levels(), 9))
    assert engine.evaluate(cand).error == pytest.approx(off.evaluate(cand).error, rel=1e-6)
