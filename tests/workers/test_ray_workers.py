"""Ray workers on a real local Ray runtime (num_cpus=2) with a tiny saved Llama."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from tiny_models import build_tiny, tiny_tokenizer, word_text

from optishear.cli import main
from optishear.config import CalibrationConfig, EvaluationConfig, SearchConfig
from optishear.data.text import sample_calibration
from optishear.model.hf import load_model
from optishear.recipe.candidates import Candidate
from optishear.recipe.comparison import held_out_ids
from optishear.recipe.shipped import shipped_config
from optishear.search.engine_spec import EngineSpec
from optishear.search.evaluator import InProcessEvaluator, compare_held_out
from optishear.search.loop import run_search
from optishear.search.results import SearchResult
from workers.actor import ModelActor
from workers.errors import WorkerStartError
from workers.pool import RayEvaluator
from workers.runtime import start_ray
from workers.startup import wait_ready

pytestmark = pytest.mark.ray

CRASH_FLAG = "crash-once"  # next to the model folder: the first evaluate() that finds it dies


def _front(result: SearchResult) -> list[tuple[Candidate, float, float]]:
    return [(s.candidate, s.evaluation.error, s.gap) for s in result.front]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    started = start_ray(num_cpus=2)
    assert ray.cluster_resources()["CPU"] == 2
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-tiny")
    build_tiny("llama", layers=4).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "calib.txt").write_text(word_text(3000, seed=1))
    return root


@pytest.fixture(scope="module")
def config(model_root: Path) -> SearchConfig:
    calib = CalibrationConfig(source=str(model_root / "calib.txt"), n_samples=8, seq_len=24, seed=0)
    return SearchConfig(
        model=str(model_root / "model"),
        sparsity=0.5,
        population=8,
        generations=3,
        seed=3,
        batch_size=4,
        calibration=calib,
        # every class of the second-order space by the layer-wise proxy, the best 5% on one
        # rung, through the actors
        screen={"rungs": "layers,1x8", "keep": 0.05},
    )


@pytest.fixture(scope="module")
def spec(config: SearchConfig) -> EngineSpec:
    return EngineSpec(config)


@pytest.fixture(scope="module")
def reference(spec: EngineSpec, config: SearchConfig) -> SearchResult:
    """The in-process search, with one thread like each actor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_search(InProcessEvaluator(spec.build()), config)
    finally:
        torch.set_num_threads(threads)


def _cpus_free_again() -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) == 2:
            return True
        time.sleep(0.2)
    return False


def test_two_actors_give_the_in_process_front(
    local_ray: None,
    spec: EngineSpec,
    config: SearchConfig,
    reference: SearchResult,
    model_root: Path,
) -> None:
    _, tokenizer, _ = load_model(spec.config.model)
    calib_ids = sample_calibration(tokenizer, spec.config.calibration)  # object store, once
    with RayEvaluator(spec, 2, calib_ids=calib_ids) as evaluator:
        assert len({i.pid for i in evaluator.infos}) == 2
        assert all(i.threads == 1 and i.device == "cpu" for i in evaluator.infos)
        assert os.getpid() not in {i.pid for i in evaluator.infos}
        result = run_search(evaluator, config)
        done = [i.evaluations for i in evaluator.actor_info()]
        # the finalists' step: candidates pruned as shipped, on the actors as in process
        finalists = [s.candidate for s in reference.front[:1]] + [
            Candidate(reference.baselines[0].candidate.genome, (0.5,) * 4)
        ]
        layout = evaluator.layer_layout
        recipes = {
            update: [
                shipped_config(
                    c,
                    config.pattern,
                    evaluator.block_params,
                    update=update,
                    layer_numel=[n for _, _, n in layout],
                )
                for c in finalists
            ]
            for update in ("none", "obs", "lstsq")
        }
        remote = {update: evaluator.shipped(r) for update, r in recipes.items()}
        # the held-out comparison's rows are shared out among the actors
        evaluation = EvaluationConfig(text=str(model_root / "calib.txt"), seq_len=32, windows=4)
        compared = config.model_copy(update={"evaluation": evaluation})
        eval_ids = held_out_ids(tokenizer, evaluation)
        remote_cmp = compare_held_out(evaluator, recipes["lstsq"][0], compared, eval_ids)
    # Computed as the actors compute, on one thread: the same summation order, so that the
    # tolerance covers the transfer, not a reordering (two threads moved a refit error 1.2e-4).
    with _threads(1):
        engine = spec.build()
        local = {update: [engine.evaluate_shipped(r) for r in recipes[update]] for update in remote}
        local_cmp = compare_held_out(
            InProcessEvaluator(engine), recipes["lstsq"][0], compared, eval_ids
        )
        # the engine's model is dense again: the same candidate scores as before the comparison
        again = engine.evaluate_shipped(recipes["lstsq"][0])
    for update, evals in remote.items():
        assert [e.error for e in evals] == pytest.approx([e.error for e in local[update]], rel=1e-4)
    assert [r.name for r in remote_cmp.rows] == ["dense", "searched", "wanda", "sparsegpt"]
    assert [r.perplexity for r in remote_cmp.rows] == pytest.approx(
        [r.perplexity for r in local_cmp.rows], rel=1e-4
    )
    assert again.error == pytest.approx(remote["lstsq"][0].error, rel=1e-4)
    assert _front(result) == _front(reference)
    assert result.evaluations == reference.evaluations
    # and the finalists and baselines scored as shipped at the end
    assert sum(done) == result.evaluations + len(result.finalists) + len(result.fallbacks)
    assert min(done) > 0  # both actors took work
    assert _cpus_free_again()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _crashing_worker() -> type[ModelActor]:
    # A local class, so that Ray ships it by value to the worker processes.
    class CrashOnceWorker(ModelActor):
        def evaluate(self, candidates, n_samples=None, n_tokens=None):  # type: ignore[no-untyped-def]
            try:
                (Path(self.spec.config.model).parent / CRASH_FLAG).unlink()
            except FileNotFoundError:
                return super().evaluate(candidates, n_samples, n_tokens)
            os._exit(1)  # the process dies in the middle of a call

    return CrashOnceWorker


def test_killed_actors_are_restarted_and_the_front_is_unchanged(
    local_ray: None,
    spec: EngineSpec,
    config: SearchConfig,
    model_root: Path,
    reference: SearchResult,
) -> None:
    flag = model_root / CRASH_FLAG
    actor_class = ray.remote(_crashing_worker())
    events: list[str] = []
    with RayEvaluator(spec, 2, actor_class=actor_class) as evaluator:
        first = evaluator.infos[0].pid

        def sabotage(_progress: object) -> None:
            if not events:  # after the first generation: kill an idle actor from outside
                ray.kill(evaluator.actors[0], no_restart=False)
                events.append("killed")
            elif len(events) == 1:  # after the second: the next evaluate() call crashes
                flag.touch()
                events.append("armed")

        result = run_search(evaluator, config, progress=sabotage)
        after = evaluator.actor_info()
    assert events == ["killed", "armed"]
    assert not flag.exists()  # a worker consumed the flag, so it did exit mid-call
    assert after[0].pid != first  # actor 0 runs in a new process
    assert _front(result) == _front(reference)
    assert sum(i.evaluations for i in after) < result.evaluations  # work before the restarts


def test_bad_model_path_fails_within_seconds_with_a_clear_error(
    local_ray: None, tmp_path: Path
) -> None:
    start = time.perf_counter()
    with pytest.raises(WorkerStartError, match=r"could not load model .*missing.*not a registered"):
        RayEvaluator(EngineSpec(SearchConfig(model=str(tmp_path / "missing"))), 2)
    # Not a speed target: it must fail rather than wait for actors that never come up (about
    # 13 s idle here, 80 s with a benchmark sharing the 2 cores).
    assert time.perf_counter() - start < 180
    assert _cpus_free_again()  # the actors that did start were stopped


def test_cli_search_with_two_workers_matches_one_process(
    local_ray: None, model_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--no-progress",
        "search",
        "--model",
        str(model_root / "model"),
        "--calib",
        str(model_root / "calib.txt"),
        "--nsamples",
        "8",
        "--seqlen",
        "24",
        "--batch-size",
        "4",
        "--population",
        "8",
        "--generations",
        "2",
        "--stages",
        "metric",
        "--device",
        "cpu",
        "--no-eval",
    ]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    # a front record holds no timings: the two fronts must be identical
    fronts = [
        json.loads((tmp_path / d / "search.json").read_text())["front"] for d in ("one", "two")
    ]
    assert fronts[0]
    assert fronts[0] == fronts[1]
    assert _cpus_free_again()


def test_allocation_search_on_actors_equals_in_process_and_frees_its_database(
    local_ray: None, config: SearchConfig, tmp_path: Path
) -> None:
    body = config.model_dump(mode="json") | {
        "stages": "allocation",
        "population": 6,
        "generations": 3,
        "allocation": {"refit": True, "database": "disk"},
        "fallback_baselines": False,  # the search's own per-layer candidate is recommended
    }
    alloc = SearchConfig.model_validate(body)
    spec = EngineSpec(alloc, folder=str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = spec.build()
        reference = run_search(InProcessEvaluator(engine), alloc)
        engine.close()
    finally:
        torch.set_num_threads(threads)
    with RayEvaluator(spec, 2) as evaluator:
        assert len(evaluator.layer_layout) == 4 * 7
        info = evaluator.database_info()
        assert info is not None
        assert info.storage == "disk"
        assert info.refit
        assert len(list(tmp_path.glob("layer-database-*"))) == 2  # one per actor
        result = run_search(evaluator, alloc)
    assert _front(result) == _front(reference)
    assert result.recommended.candidate.layer_sparsity
    assert "refit weights" in result.database
    assert not list(tmp_path.glob("layer-database-*"))  # closing the pool removed them
    assert _cpus_free_again()


@ray.remote(num_cpus=0)
class _SlowStart:
    """Stands in for a worker whose model and statistics take a while."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def ready(self) -> str:
        time.sleep(self.seconds)
        return "up"


def test_a_slow_worker_start_logs_while_it_waits(
    local_ray: None, caplog: pytest.LogCaptureFixture
) -> None:
    actors = [_SlowStart.remote(s) for s in (0.1, 2.5)]
    with caplog.at_level(logging.INFO, logger="workers.startup"):
        infos = wait_ready(actors, 60, {"CPU": 0}, "tiny", log_seconds=0.5)
    assert infos == ["up", "up"]
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.startup"]
    # one worker up early, the other still loading: lines keep coming while it loads
    assert len([m for m in lines if "1/2 done" in m]) >= 2, lines
    assert all(m.startswith("starting 2 Ray worker(s): each loads tiny") for m in lines)
    for a in actors:
        ray.kill(a)


def test_a_worker_start_past_its_timeout_fails_with_the_count(local_ray: None) -> None:
    actor = _SlowStart.remote(30)
    with pytest.raises(WorkerStartError, match=r"1 of 1 Ray workers were not up after 2s"):
        wait_ready([actor], 2, {"CPU": 0}, "tiny", log_seconds=0.5)
    ray.kill(actor)
