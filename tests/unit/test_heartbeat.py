"""Progress lines for output that is not a terminal: at least every 30 s of long work."""

from __future__ import annotations

import logging
import time

from search_fakes import FakeEvaluator, state_config
from tiny_models import build_tiny

from optishear.core import heartbeat
from optishear.core.heartbeat import Activity, Heartbeat
from optishear.core.patterns import Pattern
from optishear.model.blocks import decoder_blocks, iter_linears
from optishear.search.loop import run_search
from optishear.search.scoring_stats import engine_stats


def test_a_line_at_most_every_interval_with_counts_best_and_time_left(caplog) -> None:
    now = [0.0]
    beat = Heartbeat(logging.getLogger("t"), "scoring", 100, seconds=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        for done in range(1, 101):
            now[0] += 1.0  # one step a second: a line every 30 steps
            beat.step(done, best=1.0 / done)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scoring: 30/100 done, best error 0.033333, 30 s, about 70 s left",
        "scoring: 60/100 done, best error 0.016667, 60 s, about 40 s left",
        "scoring: 90/100 done, best error 0.011111, 90 s, about 10 s left",
    ]  # and none for the end: the caller reports that


def test_a_screening_rung_logs_its_progress_between_chunks(caplog, monkeypatch) -> None:
    monkeypatch.setattr(heartbeat, "LOG_SECONDS", 0.0)  # as if every chunk took 30 s
    config = state_config(stages="metric", generations=1, screen={"rungs": "1x16", "keep": 0.05})
    with caplog.at_level(logging.INFO, logger="optishear.search.screening"):
        run_search(FakeEvaluator(), config)
    lines = [r.getMessage() for r in caplog.records if "972 candidates" in r.getMessage()]
    assert lines[0].startswith(
        "stage metric, screen rung 1/1: scoring 972 candidates (1 x 16 tokens): 32/972 done, "
        "best error"
    )
    assert len(lines) == 972 // 32  # one after each chunk but the last
    assert all("s left" in line for line in lines)


def test_a_listener_hears_every_step_of_every_long_step_of_a_search() -> None:
    heard: list[Activity] = []
    config = state_config(stages="metric", generations=1, screen={"rungs": "layers,1x16"})
    config = config.model_copy(update={"fallback_baselines": True})
    run_search(FakeEvaluator(), config, activity=heard.append)
    whats = list(dict.fromkeys(a.what for a in heard))  # in order, once each
    assert whats[:2] == [
        "stage metric, screen rung 1/2: scoring 972 candidates (layer-wise proxy)",
        "stage metric, screen rung 2/2: scoring 243 candidates (1 x 16 tokens)",
    ]
    assert whats[2].startswith("stage metric, generation 1: scoring ")
    assert whats[-1] == "scoring as shipped"
    for what in whats:
        steps = [a for a in heard if a.what == what]
        assert steps[0].done == 0
        assert steps[0].best_error is None
        assert steps[-1].done == steps[-1].total  # and as it ends
        assert [a.done for a in steps] == sorted(a.done for a in steps)
        assert all(a.eta is not None for a in steps[1:])


def test_the_engines_statistics_log_their_blocks(caplog, monkeypatch, calib_ids) -> None:
    monkeypatch.setattr(heartbeat, "LOG_SECONDS", 0.0)  # as if every block took 30 s
    model = build_tiny("llama")
    layers = list(iter_linears(model))
    weights = [lin.weight.data for _, _, lin in layers]
    n = len(decoder_blocks(model))
    with caplog.at_level(logging.INFO, logger="optishear.search.scoring_stats"):
        engine_stats(
            model,
            calib_ids,
            layers,
            weights,
            Pattern(),
            4,
            baseline_at=0.5,
            hessian=False,
            keep=False,
        )
    lines = [r.getMessage() for r in caplog.records]
    # the dense pass (OWL's plan needs it when unstructured), then Wanda's pruned pass
    want = [f"the engine's statistics (blocks run): {k}/{2 * n} done" for k in range(1, 2 * n)]
    assert [line.split(",")[0] for line in lines] == want


def test_a_long_step_still_logs_while_it_runs(caplog) -> None:
    beat = Heartbeat(logging.getLogger("t"), "scoring as shipped", 3, seconds=0.05)
    with caplog.at_level(logging.INFO, logger="t"), beat.ticking():
        beat.step(1, best=0.5)
        time.sleep(0.4)  # the second step takes "minutes": no step, yet lines come
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3, lines
    assert all(line.startswith("scoring as shipped: 1/3 done, best error 0.5, ") for line in lines)
    assert all("s left" in line for line in lines)
    n = len(lines)
    time.sleep(0.2)
    assert len(caplog.records) == n  # the timer stops with the block


def test_no_timer_line_once_every_step_is_done(caplog) -> None:
    beat = Heartbeat(logging.getLogger("t"), "work", 2, seconds=0.05)
    with caplog.at_level(logging.INFO, logger="t"), beat.ticking():
        beat.step(2)
        time.sleep(0.3)
    assert caplog.records == []
