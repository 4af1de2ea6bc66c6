"""The offline text tasks: items built reproducibly from text, and scored through lm-eval."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import byte_model, byte_tokenizer, sentence_docs

from optishear.core.errors import ConfigError, DataError
from optishear.core.settings import LibrarySettings
from optishear.evaluation import text_task_files
from optishear.evaluation.tasks import TaskConfig, run_tasks
from optishear.evaluation.text_task_files import tasks_folder
from optishear.evaluation.text_tasks import (
    FEWSHOT,
    LASTWORD,
    NEXTSENTENCE,
    TASKS,
    WORDCHOICE,
    TextTaskSpec,
    build_items,
    split_sentences,
)

SPEC = TextTaskSpec(source="synthetic", items=60, seed=3)


@pytest.fixture(scope="module")
def items():
    return build_items(sentence_docs(), SPEC)


def test_items_are_reproducible_and_seeded(items) -> None:
    assert build_items(sentence_docs(), SPEC) == items
    other = build_items(sentence_docs(), TextTaskSpec(items=60, seed=4))
    assert other[LASTWORD][0] != items[LASTWORD][0]
    for task in TASKS:
        test, shots = items[task]
        assert len(test) == 60
        assert len(shots) == FEWSHOT
        assert [r["id"] for r in test] == list(range(60))


def test_each_sentence_serves_one_item(items) -> None:
    texts = [json.dumps(r, sort_keys=True) for t in TASKS for part in items[t] for r in part]
    assert len(set(texts)) == len(texts)
    prompts = [r["context"] for r in items[LASTWORD][0] + items[LASTWORD][1]]
    assert len(set(prompts)) == len(prompts)


def test_last_word_is_the_sentence_end_and_occurs_before(items) -> None:
    sentences = {s for doc in split_sentences(sentence_docs()) for p in doc for s in p}
    for r in items[LASTWORD][0]:
        words = r["context"].split()
        assert r["target"] in {w.strip(".") for w in words}
        last = " ".join([*words, r["target"]]) + "."
        assert any(last.endswith(s) for s in sentences)


def test_word_choice_answer_follows_the_prompt_and_distractors_do_not_occur(items) -> None:
    text = " ".join(sentence_docs())
    for r in items[WORDCHOICE][0]:
        choices = r["choices"]
        assert len(choices) == len(set(choices)) == 4
        answer = choices[r["answer"]]
        assert f"{r['prompt']} {answer}" in text
        prompt_words = {w.strip(".").lower() for w in r["prompt"].split()}
        for i, c in enumerate(choices):
            if i != r["answer"]:
                assert c not in prompt_words


def test_next_sentence_is_the_true_one_among_other_documents(items) -> None:
    docs = sentence_docs()
    for r in items[NEXTSENTENCE][0]:
        choices = r["choices"]
        answer = choices[r["answer"]]
        home = [d for d in docs if f"{r['prompt']} {answer}" in d]
        assert len(home) == 1
        for i, c in enumerate(choices):
            if i != r["answer"]:
                assert c not in home[0]
                assert 0.75 <= len(c.split()) / len(answer.split()) <= 1.3


def test_too_little_text_and_too_few_items_are_clear_errors() -> None:
    with pytest.raises(DataError, match="too few task items for 60 per task"):
        build_items(sentence_docs(n_docs=2, paragraphs=3), SPEC)
    with pytest.raises(ConfigError, match="task items must be >= 50"):
        TextTaskSpec(items=10)
    with pytest.raises(ConfigError, match="task seed"):
        TextTaskSpec(seed=-1)
    with pytest.raises(ConfigError, match="TextTaskSpec"):
        TaskConfig(("optishear_text",), text="wiki")  # type: ignore[arg-type]


def test_folder_is_built_once_per_text_and_spec(tmp_path) -> None:
    docs = sentence_docs()
    first = tasks_folder(tmp_path, docs, SPEC)
    stamp = (first / f"{LASTWORD}.test.jsonl").stat().st_mtime_ns
    assert tasks_folder(tmp_path, docs, SPEC) == first
    assert (first / f"{LASTWORD}.test.jsonl").stat().st_mtime_ns == stamp
    assert tasks_folder(tmp_path, docs, TextTaskSpec(items=60, seed=4)) != first
    assert tasks_folder(tmp_path, docs[:-1], SPEC) != first
    manifest = json.loads((first / "optishear-tasks.json").read_text())
    assert manifest["items"] == dict.fromkeys(TASKS, 60)
    assert manifest["sha256"] == text_task_files.text_digest(docs)


@torch.no_grad()
def greedy_hits(model, tokenizer, rows) -> float:
    """lm-eval's `acc` of a loglikelihood task: every token of ' target' is the argmax."""
    hits = 0
    for r in rows:
        ctx = tokenizer(r["context"]).input_ids
        cont = tokenizer(" " + r["target"]).input_ids
        logits = model(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]
        hits += bool((logits.argmax(-1) == torch.tensor(cont)).all())
    return hits / len(rows)


def test_tasks_run_through_lm_eval_from_a_jsonl_text(tmp_path) -> None:
    text = tmp_path / "novel.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in sentence_docs()))
    settings = LibrarySettings(cache=tmp_path / "cache")
    tokenizer = byte_tokenizer()
    model = byte_model(tokenizer)
    config = TaskConfig(
        ("optishear_text",),
        limit=12,
        batch_size=16,
        text=TextTaskSpec(source=str(text), items=60),
    )
    report = run_tasks(model, tokenizer, config, settings)
    names = {(s.task, s.metric) for s in report.scores}
    for task in (WORDCHOICE, NEXTSENTENCE):
        assert {(task, "acc"), (task, "acc_norm")} <= names
    assert {(LASTWORD, "acc"), (LASTWORD, "perplexity"), ("optishear_text", "acc")} <= names
    assert all(s.n_samples == 12 for s in report.scores if s.task != "optishear_text")
    rows = build_items(sentence_docs(), TextTaskSpec(items=60))[LASTWORD][0][:12]
    assert report.score(LASTWORD, "acc").value == pytest.approx(greedy_hits(model, tokenizer, rows))
    (built,) = (settings.cache / "tasks").iterdir()  # built under the caller's cache
    assert built.name.startswith("text-")


@pytest.mark.assets
@pytest.mark.slow
def test_bundled_model_beats_chance_on_every_text_task() -> None:
    from optishear.model.hf import load_model

    model, tokenizer, _ = load_model("smollm2-135m")
    report = run_tasks(model, tokenizer, TaskConfig(("optishear_text",), batch_size=16, limit=100))
    # 100 items each: chance is 0.25 (sd 0.043) for the choices, ~0 for the last word.
    assert report.score(WORDCHOICE, "acc").value > 0.5, report
    assert report.score(NEXTSENTENCE, "acc_norm").value > 0.45, report
    assert report.score(LASTWORD, "acc").value > 0.15, report
