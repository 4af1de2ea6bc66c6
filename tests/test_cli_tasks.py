"""`optishear eval --tasks`: lm-eval tasks on a saved tiny model, and its handling of bad input."""

import json
from pathlib import Path

import pytest
from tiny_models import sentence_docs

from optishear.cli import main

TASKS = Path(__file__).resolve().parent / "data" / "lm_eval_tasks"


def _eval(root, *extra):
    return [
        "--no-progress",
        "eval",
        "--model",
        str(root / "model"),
        "--device",
        "cpu",
        "--eval-text",
        str(root / "eval.txt"),
        "--eval-seqlen",
        "32",
        "--eval-windows",
        "4",
        *extra,
    ]


def test_eval_runs_the_local_task_from_any_folder(
    tiny_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # the task's data files are found beside its YAML, not here
    rc = main(
        _eval(
            tiny_model_dir,
            "--tasks",
            "optishear_cloze",
            "--task-path",
            str(TASKS),
            "--task-limit",
            "8",
            "--json",
        )
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["eval"]["n_tokens"] == 4 * 31
    tasks = result["tasks"]
    assert [(s["task"], s["metric"], s["n_samples"]) for s in tasks["scores"]] == [
        ("optishear_cloze", "acc", 8),
        ("optishear_cloze", "acc_norm", 8),
    ]
    assert all(0 <= s["value"] <= 1 for s in tasks["scores"])
    assert tasks["limit"] == 8
    assert tasks["num_fewshot"] == 0


def test_eval_tasks_only_prints_a_table(tiny_model_dir, capsys) -> None:
    rc = main(
        _eval(
            tiny_model_dir,
            "--tasks",
            "optishear_cloze,",
            "--task-path",
            str(TASKS),
            "--task-limit",
            "4",
            "--num-fewshot",
            "1",
            "--task-batch-size",
            "2",
            "--no-ppl",
        )
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "perplexity" not in out
    lines = out.splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr", "n"]
    assert [line.split()[:2] for line in lines[2:4]] == [
        ["optishear_cloze", "acc"],
        ["optishear_cloze", "acc_norm"],
    ]
    assert all(line.split()[-1] == "4" for line in lines[2:4])
    assert "1-shot, at most 4 examples per task" in lines[4]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task-limit", "3"], "--task-limit need --tasks"),
        (["--no-ppl"], "--no-ppl leaves nothing to evaluate"),
        (["--tasks", "optishear_cloze", "--task-limit", "0"], "limit must be an integer >= 1"),
        (["--tasks", ",", "--no-ppl"], "no task names given"),
        (["--tasks", "optishear_cloze", "--task-path", "/nonexistent/tasks"], "not a folder"),
    ],
)
def test_bad_task_flags_are_refused(tiny_model_dir, capsys, extra, message) -> None:
    assert main(_eval(tiny_model_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_unknown_task_is_refused_before_the_model_loads(tiny_model_dir, capsys) -> None:
    rc = main(_eval(tiny_model_dir, "--tasks", "optishear_clozee", "--task-path", str(TASKS)))
    assert rc == 2
    err = capsys.readouterr().err
    assert "optishear: error: unknown task 'optishear_clozee'" in err
    assert "close names: optishear_cloze" in err
    assert "execution:" not in err  # printed when the model is placed: it never was


def test_eval_builds_the_text_tasks_from_a_given_text(
    tiny_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("OPTISHEAR_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "novel.jsonl"
    text.write_text("".join(json.dumps({"text": d}) + "\n" for d in sentence_docs()))
    args = ["--tasks", "optishear_lastword,optishear_nextsentence", "--task-text", str(text)]
    rc = main(_eval(tiny_model_dir, *args, "--task-items", "60", "--task-limit", "4", "--json"))
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.out, captured.err
    scores = json.loads(captured.out)["tasks"]["scores"]
    assert {(s["task"], s["metric"], s["n_samples"]) for s in scores} == {
        ("optishear_lastword", "acc", 4),
        ("optishear_lastword", "perplexity", 4),
        ("optishear_nextsentence", "acc", 4),
        ("optishear_nextsentence", "acc_norm", 4),
    }
    assert len(list((tmp_path / "cache" / "tasks").iterdir())) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task-text", "wiki"], "--task-text need --tasks"),
        (["--tasks", "optishear_text", "--task-items", "10"], "task items must be >= 50"),
        (["--tasks", "optishear_text", "--task-text", "/no/such.txt"], "is not 'wiki'"),
        (["--tasks", "optishear_text", "--task-text", "SHORT"], "too few task items for 500"),
    ],
)
def test_bad_text_task_flags_are_refused(
    tiny_model_dir, tmp_path, monkeypatch, capsys, extra, message
) -> None:
    monkeypatch.setenv("OPTISHEAR_CACHE", str(tmp_path / "cache"))
    short = tmp_path / "short.txt"
    short.write_text(sentence_docs(n_docs=1, paragraphs=2)[0])
    extra = [str(short) if a == "SHORT" else a for a in extra]
    assert main(_eval(tiny_model_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
