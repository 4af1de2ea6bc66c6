"""The search state is versioned JSON: resuming equals never stopping, and loading runs nothing."""

import base64
import builtins
import copy
import json
import os
import pickle
from dataclasses import fields, is_dataclass

import pytest
from search_fakes import GENERATIONS, FakeEvaluator, Interrupt, state_config, stop_after

from optishear.core.errors import ConfigError
from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from optishear.search.loop import run_search
from optishear.search.results import StageOutcome
from optishear.search.state import FORMAT, VERSION, SearchState, SearchStateError, Tell


def _history(result) -> list[tuple]:
    """The history without its timings."""
    return [
        (h["stage"], h["generation"], h["evaluations"], h["best_error"]) for h in result.history
    ]


def _assert_same_result(resumed, full) -> None:
    assert resumed.front == full.front
    assert resumed.recommended == full.recommended
    assert [o.stage for o in resumed.stages] == [o.stage for o in full.stages]
    assert [o.front for o in resumed.stages] == [o.front for o in full.stages]
    assert _history(resumed) == _history(full)
    assert resumed.baselines == full.baselines
    assert (resumed.evaluations, resumed.cache_hits) == (full.evaluations, full.cache_hits)
    a, b = resumed.to_dict(), full.to_dict()
    for part in ("config", "recommended", "front", "stages"):
        assert a[part] == b[part]


CASES = [
    pytest.param({}, 2, 0, id="metric-stage-mid"),
    pytest.param({}, GENERATIONS, 0, id="metric-stage-last-generation"),
    pytest.param({}, GENERATIONS + 2, 1, id="layerwise-stage-mid"),
    pytest.param({"low_fidelity_samples": 2}, 3, 0, id="screened-metric-stage-mid"),
    pytest.param({"low_fidelity_samples": 2}, GENERATIONS + 1, 1, id="screened-layerwise-mid"),
    pytest.param({"stages": "joint"}, 2, 0, id="joint-mid"),
]


@pytest.mark.parametrize(("extra", "stop_at", "stage_index"), CASES)
def test_resume_from_a_snapshot_equals_the_uninterrupted_search(extra, stop_at, stage_index):
    config = state_config(**extra)
    full_ev = FakeEvaluator()
    full = run_search(full_ev, config)

    first_ev, snaps = FakeEvaluator(), []
    with pytest.raises(Interrupt):
        run_search(first_ev, config, on_generation=stop_after(stop_at, snaps))
    snap = snaps[-1]
    assert snap.progress.stage_index == stage_index  # stopped inside this stage
    stored = json.loads(snap.state)
    assert stored["format"] == FORMAT
    assert stored["stage_index"] == stage_index
    assert len(stored["tells"]) == stop_at - stage_index * GENERATIONS  # mid-stage: its tells

    again_ev = FakeEvaluator()
    resumed = run_search(again_ev, config, resume_from=snap.state)
    _assert_same_result(resumed, full)
    # nothing evaluated twice: the resumed run asks only for what the first run had not
    assert first_ev.calls + again_ev.calls == full_ev.calls
    assert len(set(first_ev.calls + again_ev.calls)) == len(full_ev.calls)


def test_resume_from_the_state_file_as_the_cli_does(tmp_path) -> None:
    config = state_config()
    full = run_search(FakeEvaluator(), config)
    path = tmp_path / "state.json"
    first_ev, snaps = FakeEvaluator(), []
    with pytest.raises(Interrupt):
        run_search(
            first_ev, config, state_path=path, on_generation=stop_after(GENERATIONS + 1, snaps)
        )
    assert path.read_bytes() == snaps[-1].state  # saved before anyone saw the generation
    assert json.loads(path.read_text())["version"] == VERSION
    assert not (tmp_path / "state.json.tmp").exists()  # written atomically

    again_ev = FakeEvaluator()
    resumed = run_search(again_ev, config, state_path=path, resume=True)
    _assert_same_result(resumed, full)
    assert len(set(first_ev.calls + again_ev.calls)) == len(first_ev.calls + again_ev.calls)
    finished = SearchState.from_json(path.read_bytes(), str(path))
    assert finished.stage_index == 2
    assert finished.tells == []
    # resuming a finished search evaluates nothing more and gives the same result
    idle = FakeEvaluator()
    _assert_same_result(run_search(idle, config, state_path=path, resume=True), full)
    assert idle.calls == []


def _snapshot(number: int, **extra) -> bytes:
    snaps: list = []
    run_search(FakeEvaluator(), state_config(**extra), on_generation=snaps.append)
    return snaps[number - 1].state


@pytest.fixture(scope="module")
def mid_stage_2() -> bytes:
    """A state in the second stage, with a finished first stage and screening caches."""
    return _snapshot(GENERATIONS + 2, low_fidelity_samples=2)


def _tampered(data: bytes, change) -> bytes:
    obj = json.loads(data)
    change(obj)
    return json.dumps(obj).encode()


def _state_error(data: bytes) -> str:
    with pytest.raises(SearchStateError) as info:
        SearchState.from_json(data)
    return str(info.value)


def test_a_state_that_is_not_json_or_not_ours_is_refused_clearly(mid_stage_2) -> None:
    assert "invalid JSON" in _state_error(b"{not json")
    assert "invalid JSON" in _state_error(b"\xff\xfe garbage")
    assert "is not an OptiShear search state" in _state_error(b"[1, 2]")
    other = _tampered(mid_stage_2, lambda o: o.update(format="someone-else.state"))
    assert "is not an OptiShear search state" in _state_error(other)


def test_a_state_of_an_unknown_version_names_it(mid_stage_2) -> None:
    message = _state_error(_tampered(mid_stage_2, lambda o: o.update(version=VERSION + 41)))
    assert f"state format version {VERSION + 41}" in message
    assert f"reads version {VERSION}" in message


def test_an_old_pickled_state_is_refused_and_never_unpickled(tmp_path, monkeypatch) -> None:
    def refuse(*_args, **_kw):
        raise AssertionError("a stored state was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    old = pickle.dumps({"settings": "whatever"}, protocol=5)
    assert old[:2] == b"\x80\x05"
    assert "old pickle format" in _state_error(old)
    with pytest.raises(SearchStateError, match="old pickle format"):
        run_search(FakeEvaluator(), state_config(), resume_from=old)
    path = tmp_path / "state.json"
    path.write_bytes(old)
    with pytest.raises(SearchStateError, match=f"{path} was saved in the old pickle format"):
        run_search(FakeEvaluator(), state_config(), state_path=path, resume=True)


DAMAGE = [
    pytest.param(lambda o: o.update(stage_index="1"), "expected an integer", id="int-as-text"),
    pytest.param(lambda o: o.update(evaluations=True), "expected an integer", id="int-as-bool"),
    pytest.param(lambda o: o.update(elapsed="1.5"), "finite number", id="float-as-text"),
    pytest.param(lambda o: o.pop("history"), "KeyError: 'history'", id="missing-field"),
    pytest.param(lambda o: o.update(history=[[1, 2]]), "expected an object", id="history-item"),
    pytest.param(lambda o: o.update(stage_index=7), "stage index 7", id="stage-out-of-step"),
    pytest.param(lambda o: o.update(outcomes=[]), "0 finished stages", id="outcomes-dropped"),
    pytest.param(
        lambda o: o["cache"]["full"][0][1].__setitem__(0, "0.5"),
        "finite number",
        id="error-as-text",
    ),
    pytest.param(
        lambda o: o["cache"]["full"][0][1].__setitem__(2, 8.5),
        "expected an integer, got 8.5",
        id="n-samples-as-float",
    ),
    pytest.param(
        lambda o: o["cache"]["low"][0].__setitem__(1, [1.0, 0.5, 2]),
        "not enough values",
        id="short-evaluation",
    ),
    pytest.param(
        lambda o: o["outcomes"][0]["front"][0]["candidate"].update(genome=10**6),
        "genome index",
        id="genome-out-of-range",
    ),
    pytest.param(
        lambda o: o["outcomes"][0]["front"][0].update(gap=None), "finite number", id="gap-null"
    ),
    pytest.param(
        lambda o: o["outcomes"][0]["front"][0].update(name=5),
        "expected a string",
        id="name-as-number",
    ),
    pytest.param(
        lambda o: o["tells"][0]["X"].__setitem__(0, [1.0]), "equal length", id="ragged-genes"
    ),
    pytest.param(lambda o: o["tells"][0].update(F="1,2"), "list of rows", id="objectives-text"),
]


@pytest.mark.parametrize(("change", "message"), DAMAGE)
def test_a_type_damaged_state_is_refused_with_a_message(mid_stage_2, change, message) -> None:
    text = _state_error(_tampered(mid_stage_2, change))
    assert text.startswith("the search state is damaged: ")
    assert message in text


def test_damaged_tells_are_refused_when_they_are_replayed(mid_stage_2) -> None:
    config = state_config(low_fidelity_samples=2)

    def resume(change) -> str:
        with pytest.raises(SearchStateError) as info:
            run_search(FakeEvaluator(), config, resume_from=_tampered(mid_stage_2, change))
        return str(info.value)

    def wrong_genes(o) -> None:
        o["tells"][1]["X"][0][0] += 1

    assert "generation 2 asked for other candidates" in resume(wrong_genes)
    assert "objectives of shape (1, 1)" in resume(lambda o: o["tells"][0].update(F=[[1.0]]))


def test_a_state_of_another_search_is_a_config_error(mid_stage_2, tmp_path) -> None:
    for other in (
        state_config(low_fidelity_samples=2, seed=2),
        state_config(low_fidelity_samples=2, population=12),
        state_config(low_fidelity_samples=2, sparsity=0.6),
        state_config(),
    ):
        with pytest.raises(ConfigError, match="the given state holds the state of a different"):
            run_search(FakeEvaluator(), other, resume_from=mid_stage_2)
    path = tmp_path / "state.json"
    path.write_bytes(mid_stage_2)
    with pytest.raises(ConfigError, match=f"{path} holds the state of a different search"):
        run_search(FakeEvaluator(), state_config(seed=2), state_path=path, resume=True)


PLAIN = (str, int, float, bool, type(None))
KNOWN = (SearchState, Tell, StageOutcome, Scored, Candidate, Evaluation, Genome)


def _leaves(value, path="state"):
    """Every value held by a loaded state; nothing but plain data and our own records."""
    if isinstance(value, PLAIN):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(k, f"{path} key")
            yield from _leaves(v, f"{path}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    elif is_dataclass(value) and type(value) in KNOWN:
        for f in fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}")
    else:
        raise AssertionError(f"{path} is a {type(value).__name__}, not data")


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_a_state_runs_nothing_it_holds(mid_stage_2, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Payload(str(marker)))
    strings = {
        "pickle": evil.decode("latin-1"),
        "base64": base64.b64encode(evil).decode(),
        "reduce": "__reduce__",
        "py/object": "os.system",
        "code": "__import__('os').mkdir(" + repr(str(marker)) + ")",
    }

    def plant(o) -> None:
        o["history"].append({"__reduce__": ["os.mkdir", [str(marker)]], **strings})
        o["outcomes"][0]["front"][0]["name"] = strings["pickle"]
        o["config"]["__reduce__"] = strings["base64"]

    data = _tampered(mid_stage_2, plant)

    seen: list[str] = []

    def watch(name):
        def refuse(*args, **kw):
            seen.append(name)
            raise AssertionError(f"loading a state called {name}")

        return refuse

    real_import = builtins.__import__
    with monkeypatch.context() as m:
        for name in ("loads", "load", "Unpickler"):
            m.setattr(pickle, name, watch(f"pickle.{name}"))
        for name in ("eval", "exec", "compile", "__import__"):
            m.setattr(builtins, name, watch(name))
        state = SearchState.from_json(data)
    assert builtins.__import__ is real_import
    assert seen == []
    assert not marker.exists()
    # what was planted is kept as the plain data it is
    assert state.history[-1] == {"__reduce__": ["os.mkdir", [str(marker)]], **strings}
    assert state.outcomes[0].front[0].name == strings["pickle"]
    assert dict(_leaves(state))  # every value is plain data or one of the state's records
    # a planted state is still one of another search (its config differs): refused, not run
    with pytest.raises(ConfigError, match="different search"):
        run_search(FakeEvaluator(), state_config(low_fidelity_samples=2), resume_from=data)
    assert not marker.exists()


def test_a_planted_history_is_carried_as_data_through_a_resume(mid_stage_2, tmp_path) -> None:
    marker = tmp_path / "ran"
    payload = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    data = _tampered(mid_stage_2, lambda o: o["history"][0].update(note=payload))
    result = run_search(FakeEvaluator(), state_config(low_fidelity_samples=2), resume_from=data)
    assert result.history[0]["note"] == payload
    assert not marker.exists()


def test_round_trip_is_exact(mid_stage_2) -> None:
    state = SearchState.from_json(mid_stage_2)
    for part in (state.full, state.low, state.estimated, state.outcomes, state.tells):
        assert part  # every part of the state is exercised
    assert state.outcomes[0].population
    assert state.outcomes[0].baseline is not None
    again = SearchState.from_json(state.to_json())
    assert again == state
    assert again.to_json() == state.to_json() == mid_stage_2
    assert SearchState.from_json(mid_stage_2.decode()) == state  # text works too
    # the written state is plain JSON without NaN or other extensions
    json.loads(mid_stage_2, parse_constant=lambda c: pytest.fail(f"JSON constant {c}"))


def test_round_trip_of_a_fresh_and_of_a_finished_state(tmp_path) -> None:
    config = state_config()
    fresh = SearchState(config.resume_identity())
    assert SearchState.from_json(fresh.to_json()) == fresh
    path = tmp_path / "state.json"
    run_search(FakeEvaluator(), config, state_path=path)
    finished = SearchState.from_json(path.read_bytes())
    assert finished.stage_index == len(finished.outcomes) == 2
    assert finished.to_json() == path.read_bytes()
    named = copy.deepcopy(finished)
    front = named.outcomes[0].front
    front[0] = Scored(front[0].candidate, front[0].evaluation, 0.0, "Wanda")
    assert SearchState.from_json(named.to_json()) == named
    assert SearchState.from_json(named.to_json()).outcomes[0].front[0].name == "Wanda"


def test_a_state_saved_before_validation_sequences_resumes_as_it_ran(mid_stage_2) -> None:
    """A state saved without validation_share and database masks ran on calibration sequences
    with genome masks: it resumes under those settings, and is refused under today's defaults
    with the flag that resumes it."""

    def legacy(obj) -> None:
        del obj["config"]["calibration"]["validation_share"]
        del obj["config"]["allocation"]["masks"]

    old = _tampered(mid_stage_2, legacy)
    as_it_ran = state_config(low_fidelity_samples=2, calibration={"validation_share": 0.0})
    mid = _tampered(mid_stage_2, lambda o: o["config"]["calibration"].update(validation_share=0))
    full = run_search(FakeEvaluator(), as_it_ran, resume_from=mid)
    assert run_search(FakeEvaluator(), as_it_ran, resume_from=old).front == full.front
    with pytest.raises(ConfigError, match="resumes with --validation-share 0"):
        run_search(FakeEvaluator(), state_config(low_fidelity_samples=2), resume_from=old)
