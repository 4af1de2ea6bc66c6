"""`optishear eval`: held-out perplexity of a model, and downstream tasks through lm-eval."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from optishear.cli.common import (
    add_dtype_flag,
    add_runtime_flags,
    ensure_assets,
    held_out,
    load_placed,
)
from optishear.cli.flags import add_config_flags, config_from_flags
from optishear.cli.progress import Bars
from optishear.config import EvaluationConfig
from optishear.core.errors import ConfigError
from optishear.core.files import user_path
from optishear.core.settings import LibrarySettings
from optishear.evaluation.tasks import TaskConfig, TaskReport, load_tasks, run_loaded_tasks
from optishear.evaluation.text_tasks import TextTaskSpec, wants_text_tasks
from optishear.model.hf import torch_device

_TASK_DEFAULTS = TaskConfig(("-",))
# Flags that mean nothing without --tasks (their dests; None when not given).
_TASK_ONLY = (
    "task_path",
    "task_limit",
    "num_fewshot",
    "task_batch_size",
    "task_text",
    "task_items",
)


def register(sub: Any) -> None:
    ev = sub.add_parser(
        "eval",
        help="held-out perplexity of a model, and downstream tasks (lm-eval)",
        description="Held-out perplexity over fixed windows of text the pruning never saw; "
        "with --tasks, also lm-evaluation-harness tasks (accuracy, zero-shot by default) on "
        "the same loaded model.",
    )
    add_runtime_flags(ev)
    add_dtype_flag(ev)
    add_config_flags(ev, EvaluationConfig, prefix="evaluation.")
    g = ev.add_argument_group("downstream tasks (lm-evaluation-harness)")
    g.add_argument(
        "--tasks",
        metavar="NAMES",
        help="comma-separated lm-eval task names, e.g. "
        "boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa (their data comes "
        "from the Hugging Face hub), local tasks found in --task-path, or optishear_text: "
        "three offline tasks of 500 items built from --task-text",
    )
    g.add_argument(
        "--task-path",
        metavar="DIR",
        help="a folder of local task YAMLs, searched first (offline; e.g. "
        "tests/data/lm_eval_tasks holds optishear_cloze)",
    )
    g.add_argument(
        "--task-text",
        metavar="SOURCE",
        help="the text that the offline tasks optishear_text (optishear_lastword, "
        "optishear_wordchoice, optishear_nextsentence) are built from: 'wiki' (the bundled "
        "sample's evaluation articles, the default), a .txt or .jsonl file",
    )
    g.add_argument(
        "--task-items",
        type=int,
        metavar="N",
        help=f"items per optishear_text task (default {_TASK_DEFAULTS.text.items})",
    )
    g.add_argument(
        "--task-limit",
        type=int,
        metavar="N",
        help="score at most the first N examples of each task",
    )
    g.add_argument(
        "--num-fewshot",
        type=int,
        metavar="K",
        help=f"worked examples before each question (default {_TASK_DEFAULTS.num_fewshot})",
    )
    g.add_argument(
        "--task-batch-size",
        type=int,
        metavar="N",
        help=f"requests per forward pass (default {_TASK_DEFAULTS.batch_size})",
    )
    g.add_argument("--no-ppl", action="store_true", help="tasks only: skip held-out perplexity")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.set_defaults(handler=run_eval)


def task_config(args: argparse.Namespace) -> TaskConfig | None:
    """The TaskConfig of the task flags (None without --tasks)."""
    if args.tasks is None:
        given = [f"--{d.replace('_', '-')}" for d in _TASK_ONLY if getattr(args, d) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} need --tasks")
        return None
    names = tuple(n.strip() for n in args.tasks.split(",") if n.strip())
    optional = {
        "num_fewshot": args.num_fewshot,
        "limit": args.task_limit,
        "batch_size": args.task_batch_size,
    }
    text = {"source": args.task_text, "items": args.task_items}
    return TaskConfig(
        names,
        include_path=None if args.task_path is None else user_path(args.task_path),
        text=TextTaskSpec(**{k: v for k, v in text.items() if v is not None}),
        **{k: v for k, v in optional.items() if v is not None},
    )


def run_eval(args: argparse.Namespace, settings: LibrarySettings, bars: Bars) -> int:
    tasks_cfg = task_config(args)
    if args.no_ppl and tasks_cfg is None:
        raise ConfigError("--no-ppl leaves nothing to evaluate: pass --tasks")
    eval_cfg = None if args.no_ppl else config_from_flags(EvaluationConfig, args, "evaluation.")
    device = torch_device(args.device)
    task_text = (
        tasks_cfg.text.source
        if tasks_cfg is not None and wants_text_tasks(tasks_cfg.tasks)
        else None
    )
    ensure_assets(
        settings, bars, args.model, None if eval_cfg is None else eval_cfg.text, task_text
    )
    if tasks_cfg is not None and not args.verbose:
        # lm-eval warns, to its own CLI's users, that a model object was passed in and how
        # few-shot counts were overridden: both by design here. Its errors still show.
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    # Names and task data are checked before the model loads: a typo costs seconds, not a load.
    tasks = None if tasks_cfg is None else load_tasks(tasks_cfg, settings)
    model, tokenizer, _, _ = load_placed(
        args.model, settings, device=device, dtype=args.dtype, execution=args.execution
    )
    result: dict[str, Any] = {"model": args.model}
    if eval_cfg is not None:
        result["eval"] = held_out(model, tokenizer, eval_cfg, settings).to_dict()
    report = None if tasks is None else run_loaded_tasks(model, tokenizer, tasks)
    if report is not None:
        result["tasks"] = report.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "eval" in result:
        ppl = result["eval"]
        print(
            f"{args.model}: held-out perplexity {ppl['perplexity']:.3f} ({ppl['n_tokens']} "
            f"tokens, {ppl['n_windows']} windows of {ppl['seq_len']})"
        )
    if report is not None:
        print(format_task_table(report))
    return 0


def format_task_table(report: TaskReport) -> str:
    width = max(len("task"), *(len(s.task) for s in report.scores))
    head = f"{'task':<{width}}  {'metric':<10}{'value':>8}{'stderr':>9}{'n':>7}"
    lines = [head, "-" * len(head)]
    for s in report.scores:
        stderr = "-" if s.stderr is None else f"{s.stderr:.4f}"
        lines.append(f"{s.task:<{width}}  {s.metric:<10}{s.value:>8.4f}{stderr:>9}{s.n_samples:>7}")
    limit = "" if report.limit is None else f", at most {report.limit} examples per task"
    lines.append(
        f"lm-eval {report.lm_eval_version}, {report.num_fewshot}-shot{limit}, "
        f"{report.seconds:.1f} s"
    )
    return "\n".join(lines)
