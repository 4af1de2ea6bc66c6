"""Downstream tasks through lm-eval: the shipped offline task on tiny and bundled models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import byte_model, byte_tokenizer

from optishear.core.errors import ConfigError, DataError
from optishear.evaluation.tasks import (
    TaskConfig,
    TaskReport,
    TaskScore,
    load_tasks,
    run_loaded_tasks,
    run_tasks,
)
from optishear.model.streaming import BlockStreamer

TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
CLOZE = TASKS / "optishear_cloze"
CHANCE = 0.25  # four choices per item


def cloze_items(limit: int | None = None) -> list[dict]:
    lines = (CLOZE / "optishear_cloze.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:limit]]


@torch.no_grad()
def accuracy_by_hand(model, tokenizer, items) -> tuple[float, float]:
    """acc and acc_norm as lm-eval defines them: the choice of highest summed log-likelihood
    after the prompt and a space (acc_norm: divided by the choice's length in characters)."""
    hits = hits_norm = 0
    for item in items:
        ctx = tokenizer(item["prompt"]).input_ids
        conts = [tokenizer(" " + c).input_ids for c in item["choices"]]
        width = len(ctx) + max(map(len, conts))
        # one pass for the four choices: right padding leaves a causal LM's earlier logits as
        # they are
        ids = torch.tensor([ctx + c + [0] * (width - len(ctx) - len(c)) for c in conts])
        logprobs = model(ids).logits.log_softmax(-1)
        lls = [
            float(logprobs[i, len(ctx) - 1 + torch.arange(len(c)), torch.tensor(c)].sum())
            for i, c in enumerate(conts)
        ]
        norm = [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        hits += max(range(4), key=lls.__getitem__) == item["answer"]
        hits_norm += max(range(4), key=norm.__getitem__) == item["answer"]
    return hits / len(items), hits_norm / len(items)


def test_local_task_on_a_tiny_model_matches_a_hand_computation() -> None:
    tokenizer = byte_tokenizer()
    model = byte_model(tokenizer)
    report = run_tasks(
        model,
        tokenizer,
        TaskConfig(("optishear_cloze",), include_path=TASKS, batch_size=16, limit=40),
    )
    acc, acc_norm = accuracy_by_hand(model, tokenizer, cloze_items(40))
    assert [(s.task, s.metric) for s in report.scores] == [
        ("optishear_cloze", "acc"),
        ("optishear_cloze", "acc_norm"),
    ]
    assert report.score("optishear_cloze", "acc").value == pytest.approx(acc)
    assert report.score("optishear_cloze", "acc_norm").value == pytest.approx(acc_norm)
    assert all(s.n_samples == 40 for s in report.scores)
    p = acc
    assert report.score("optishear_cloze", "acc").stderr == pytest.approx((p * (1 - p) / 39) ** 0.5)
    assert report.num_fewshot == 0
    assert report.limit == 40
    assert report.seconds > 0
    assert report.lm_eval_version.startswith("0.4.")
    assert tokenizer.pad_token is None  # lm-eval padded its own copy


def test_loaded_tasks_score_each_model_they_are_given() -> None:
    tokenizer = byte_tokenizer()
    loaded = load_tasks(TaskConfig(("optishear_cloze",), include_path=TASKS, limit=16))
    for seed in (1, 2):  # one load, two models (a bench prunes one model several ways)
        model = byte_model(tokenizer, seed=seed)
        report = run_loaded_tasks(model, tokenizer, loaded)
        acc, acc_norm = accuracy_by_hand(model, tokenizer, cloze_items(16))
        assert report.score("optishear_cloze", "acc").value == pytest.approx(acc)
        assert report.score("optishear_cloze", "acc_norm").value == pytest.approx(acc_norm)


def test_few_shot_runs_are_seeded() -> None:
    tokenizer = byte_tokenizer()
    model = byte_model(tokenizer)
    config = TaskConfig(("optishear_cloze",), include_path=TASKS, limit=10, num_fewshot=2)
    loaded = load_tasks(config)
    first = run_loaded_tasks(model, tokenizer, loaded)
    again = run_loaded_tasks(model, tokenizer, loaded)
    fresh = run_tasks(model, tokenizer, config)
    assert first.scores == again.scores == fresh.scores
    assert (first.num_fewshot, first.limit) == (2, 10)


def test_streamed_model_scores_as_the_resident_one() -> None:
    tokenizer = byte_tokenizer()
    config = TaskConfig(("optishear_cloze",), include_path=TASKS, limit=16)
    resident = run_tasks(byte_model(tokenizer), tokenizer, config)
    model = byte_model(tokenizer)
    streamer = BlockStreamer(model, torch.device("cpu"))
    try:
        streamed = run_tasks(model, tokenizer, config)
    finally:
        streamer.close()
    for a, b in zip(resident.scores, streamed.scores, strict=True):
        assert (a.task, a.metric, a.n_samples) == (b.task, b.metric, b.n_samples)
        assert a.value == pytest.approx(b.value)


def test_report_round_trips_through_json() -> None:
    report = TaskReport(
        scores=(
            TaskScore("arc_easy", "acc", 0.5, 0.01, 2376),
            TaskScore("boolq", "acc", 0.61, None, 3270),
        ),
        num_fewshot=0,
        limit=None,
        seconds=12.5,
        lm_eval_version="0.4.13",
    )
    assert TaskReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    with pytest.raises(ConfigError, match="not a task report"):
        TaskReport.from_dict({"scores": []})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ()}, "no task names"),
        ({"tasks": "arc_easy"}, "not one string"),
        ({"tasks": ("arc_easy", "")}, "bad task name"),
        ({"tasks": ("arc_easy,boolq",)}, "one name per entry"),
        ({"tasks": ("boolq", "boolq")}, "more than once: boolq"),
        ({"tasks": ("boolq",), "limit": 0}, "limit must be an integer >= 1"),
        ({"tasks": ("boolq",), "num_fewshot": -1}, "num_fewshot"),
        ({"tasks": ("boolq",), "batch_size": 0}, "batch_size"),
    ],
)
def test_config_is_validated(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TaskConfig(**kwargs)


def test_config_takes_lists_and_strings_for_paths() -> None:
    config = TaskConfig(["boolq", "rte"], include_path=str(TASKS))  # type: ignore[arg-type]
    assert config.tasks == ("boolq", "rte")
    assert config.include_path == TASKS


def test_missing_task_folder_and_non_hf_model_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_tasks(TaskConfig(("optishear_cloze",), include_path=tmp_path / "nope"))
    loaded = load_tasks(TaskConfig(("optishear_cloze",), include_path=TASKS, limit=2))
    with pytest.raises(ConfigError, match="need a transformers causal LM"):
        run_loaded_tasks(torch.nn.Linear(2, 2), byte_tokenizer(), loaded)


def test_unreadable_local_data_is_a_data_error(tmp_path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("optishear_cloze.yaml", "loader.py"):
        (folder / name).write_text((CLOZE / name).read_text())
    with pytest.raises(DataError, match="task data for optishear_cloze could not be"):
        load_tasks(TaskConfig(("optishear_cloze",), include_path=folder))


@pytest.mark.slow
def test_unknown_task_names_close_ones_and_the_local_folder() -> None:
    with pytest.raises(ConfigError) as err:
        load_tasks(TaskConfig(("optishear_clozee",), include_path=TASKS))
    message = str(err.value)
    assert "unknown task 'optishear_clozee'" in message
    assert "close names: optishear_cloze" in message
    assert "--task-path" in message


@pytest.mark.slow
def test_hub_task_offline_is_a_clear_data_error(monkeypatch, tmp_path) -> None:
    """With the hub unreachable (forced offline, empty caches), a standard task says what to do
    instead."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    with pytest.raises(DataError, match="task data for arc_easy could not be") as err:
        load_tasks(TaskConfig(("arc_easy",), limit=4))
    assert "offline, pass --task-path" in str(err.value)


@pytest.mark.assets
@pytest.mark.slow
def test_bundled_model_beats_chance_on_the_local_task() -> None:
    from optishear.model.hf import load_model

    model, tokenizer, _ = load_model("smollm2-135m")
    report = run_tasks(
        model, tokenizer, TaskConfig(("optishear_cloze",), include_path=TASKS, batch_size=16)
    )
    acc = report.score("optishear_cloze", "acc")
    assert acc.n_samples == 100  # the whole task
    # 100 items: chance is 25 right (sd 4.3); a pretrained LM knows most of these facts.
    assert acc.value > CHANCE + 0.4, report
    assert report.score("optishear_cloze", "acc_norm").value > CHANCE + 0.3, report
