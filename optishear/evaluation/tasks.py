"""Downstream zero-shot tasks (ARC, HellaSwag, BoolQ, ...) on an in-memory model, via lm-eval.

lm-evaluation-harness (the `tasks` extra) runs the tasks; this module hands it the model as it
is (pruned, resident or streamed block by block), checks task names before any work, turns hub
and config failures into OptiShear errors, and reports the scores in a small typed record.
Standard tasks download their data from the Hugging Face hub; offline, a folder of local task
YAMLs (`include_path`, `--task-path` on the command line) works the same way, and so do the
three tasks that `text_tasks` builds from local text (`optishear_text`).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optishear.core.errors import ConfigError, DataError
from optishear.core.files import user_path
from optishear.core.settings import LibrarySettings
from optishear.evaluation import text_tasks
from optishear.evaluation.text_task_files import tasks_folder
from optishear.evaluation.text_tasks import TextTaskSpec

if TYPE_CHECKING:
    from torch import nn

# Standard errors of means (acc, acc_norm) are exact; other aggregations (F1, MCC) bootstrap.
# lm-eval's default of 100,000 resamples takes minutes on a large task for a second digit.
_BOOTSTRAP_ITERS = 1000
_FIRST_METRICS = ("acc", "acc_norm")  # reported first, in this order, where a task has them


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Which lm-eval tasks to run, and how.

    `limit` caps the examples per task (the first ones; None: all). `include_path` is a folder
    of local task YAMLs, searched before lm-eval's own tasks. `seed` picks the few-shot examples.
    The offline text tasks (`optishear_text` and its three tasks) are built from `text`.
    """

    tasks: tuple[str, ...]
    num_fewshot: int = 0
    limit: int | None = None
    batch_size: int = 8
    include_path: Path | None = None
    seed: int = 0
    text: TextTaskSpec = field(default_factory=TextTaskSpec)  # optishear_text's source

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            raise ConfigError(
                f"tasks must be a sequence of task names, not one string ({self.tasks!r})"
            )
        names = tuple(self.tasks)
        object.__setattr__(self, "tasks", names)
        if not names:
            raise ConfigError("no task names given")
        for name in names:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ConfigError(f"bad task name {name!r}: a name is non-empty, without spaces")
            if "," in name:
                raise ConfigError(f"bad task name {name!r}: give one name per entry")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"task named more than once: {', '.join(twice)}")
        _check_int("num_fewshot", self.num_fewshot, minimum=0)
        if self.limit is not None:
            _check_int("limit", self.limit, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if not isinstance(self.text, TextTaskSpec):
            raise ConfigError(f"text must be a TextTaskSpec, got {type(self.text).__name__}")
        if self.include_path is not None and not isinstance(self.include_path, Path):
            object.__setattr__(self, "include_path", user_path(str(self.include_path)))


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class TaskScore:
    """One metric of one task (or of a group, averaged over its tasks)."""

    task: str
    metric: str  # lm-eval's name; ',<filter>' follows where the filter is not 'none'
    value: float
    stderr: float | None  # None where lm-eval gives none (one example, or no bootstrap)
    n_samples: int  # examples scored (for a group, over all of its tasks)


@dataclass(frozen=True, slots=True)
class TaskReport:
    """Every metric of every task run; `seconds` is the evaluation, not the loading of tasks."""

    scores: tuple[TaskScore, ...]
    num_fewshot: int
    limit: int | None
    seconds: float
    lm_eval_version: str

    def score(self, task: str, metric: str) -> TaskScore:
        for s in self.scores:
            if s.task == task and s.metric == metric:
                return s
        raise KeyError(f"no {metric} for task {task} in this report")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskReport:
        try:
            return cls(
                scores=tuple(TaskScore(**s) for s in data["scores"]),
                num_fewshot=data["num_fewshot"],
                limit=data["limit"],
                seconds=data["seconds"],
                lm_eval_version=data["lm_eval_version"],
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a task report: {exc}") from exc


@dataclass(frozen=True)
class LoadedTasks:
    """Tasks with their data, ready to run on any number of models (see `load_tasks`)."""

    config: TaskConfig
    objects: tuple[Any, ...] = field(repr=False)  # lm-eval Task and Group objects
    manager: Any = field(repr=False)  # the lm-eval TaskManager that built them


def _lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError as exc:
        raise ConfigError(
            "downstream tasks need lm-evaluation-harness: pip install 'optishear[tasks]'"
        ) from exc
    return lm_eval


def _local_paths(config: TaskConfig, settings: LibrarySettings | None) -> list[str]:
    """The folders of local tasks: the user's, and the text tasks built where asked for."""
    paths = []
    if config.include_path is not None:
        if not config.include_path.is_dir():
            raise ConfigError(f"task path {config.include_path} is not a folder")
        paths.append(str(config.include_path))
    if text_tasks.wants_text_tasks(config.tasks):
        from optishear.data.text import load_texts

        settings = settings or LibrarySettings()
        spec = config.text
        docs = load_texts(spec.source, "evaluation", settings)
        paths.append(str(tasks_folder(settings.cache, docs, spec)))
    return paths


def _manager(config: TaskConfig, settings: LibrarySettings | None) -> Any:
    """lm-eval's task index: the local folders alone when they hold every task asked for.

    Indexing lm-eval's own 14,000 tasks, groups and tags takes seconds; a run of local tasks
    needs none of them. A local *group* may name lm-eval's tasks, so it gets the full index.
    """
    TaskManager = _lm_eval().tasks.TaskManager
    paths = _local_paths(config, settings)
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if set(config.tasks) <= set(local.all_subtasks):
            return local
    manager = TaskManager(include_path=paths or None)
    known = set(manager.all_tasks)
    for name in config.tasks:
        if name not in known:
            raise ConfigError(_unknown_task_message(name, manager.all_tasks, config.include_path))
    return manager


def _unknown_task_message(name: str, known: Sequence[str], path: Path | None) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    where = f"lm-eval's tasks and {path}" if path is not None else "lm-eval's tasks"
    return (
        f"unknown task {name!r} (searched {where}){hint}. `lm-eval ls tasks` lists the "
        "standard ones; for local tasks pass --task-path DIR (a folder of task YAMLs)"
    )


def _data_errors() -> tuple[type[BaseException], ...]:
    """What a task's data loading raises when the hub or a file cannot be read."""
    import datasets.exceptions
    import httpx

    return (OSError, datasets.exceptions.DatasetsError, httpx.HTTPError)


def load_tasks(config: TaskConfig, settings: LibrarySettings | None = None) -> LoadedTasks:
    """Check the names and load every task's data; fails before any model is needed.

    Raises ConfigError for an unknown name or a broken task config, DataError when a task's
    data cannot be downloaded (offline: use a local task) or read.
    """
    manager = _manager(config, settings)
    data_errors = _data_errors()
    objects: list[Any] = []
    for name in config.tasks:
        try:
            loaded = manager.load([name])
        except data_errors as exc:
            raise DataError(
                f"task data for {name} could not be downloaded or read: "
                f"{type(exc).__name__}: {exc}; standard tasks fetch their data from the Hugging "
                "Face hub: offline, pass --task-path with a local task"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"task {name} could not be built from its config: {exc}") from exc
        groups = loaded.get("groups", {})
        if name in groups:
            objects.append(groups[name])
        elif name in loaded["tasks"]:
            objects.append(loaded["tasks"][name])
        else:  # a tag: its tasks, each on its own
            objects.extend(loaded["tasks"].values())
    return LoadedTasks(config, tuple(objects), manager)


def run_loaded_tasks(model: nn.Module, tokenizer: Any, tasks: LoadedTasks) -> TaskReport:
    """Score `model` on tasks loaded by `load_tasks` (the model is not changed)."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ConfigError(
            f"downstream tasks need a transformers causal LM, not {type(model).__name__}"
        )
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    config = tasks.config
    # HFLM gives the tokenizer a pad token where it has none: it works on its own copy.
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=config.batch_size)
    start = time.perf_counter()
    # lm-eval prints some notes ("bootstrapping for stddev: ...") to stdout, which belongs to
    # the caller (`optishear eval --json`): they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        results = _evaluate(lm_eval, lm, tasks)
    seconds = time.perf_counter() - start
    assert results is not None  # None only on a non-zero rank of a distributed run
    return TaskReport(
        scores=_scores(results),
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        seconds=seconds,
        lm_eval_version=lm_eval.__version__,
    )


def _evaluate(lm_eval: Any, lm: Any, tasks: LoadedTasks) -> Any:
    config = tasks.config
    return lm_eval.simple_evaluate(
        lm,
        tasks=list(tasks.objects),
        num_fewshot=config.num_fewshot,
        limit=config.limit,
        task_manager=tasks.manager,
        bootstrap_iters=_BOOTSTRAP_ITERS,
        log_samples=False,
        # The few-shot sampler has its own generator; the process-wide RNGs stay the caller's.
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
        fewshot_random_seed=config.seed,
    )


def run_tasks(
    model: nn.Module, tokenizer: Any, config: TaskConfig, settings: LibrarySettings | None = None
) -> TaskReport:
    """Load the tasks of `config` and score `model` on them (see `load_tasks` for errors)."""
    return run_loaded_tasks(model, tokenizer, load_tasks(config, settings))


def _scores(results: Mapping[str, Any]) -> tuple[TaskScore, ...]:
    scores: list[TaskScore] = []
    for task, entry in results["results"].items():
        n = _n_samples(task, results)
        metrics = []
        for key, value in entry.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr") or not _is_number(value):
                continue
            stderr = entry.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric},{filt}"
            metrics.append(
                TaskScore(
                    task, name, float(value), float(stderr) if _is_number(stderr) else None, n
                )
            )
        rank = {m: i for i, m in enumerate(_FIRST_METRICS)}
        scores += sorted(metrics, key=lambda s: (rank.get(s.metric, len(rank)), s.metric))
    return tuple(scores)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _n_samples(name: str, results: Mapping[str, Any]) -> int:
    """Examples scored for a task, or over all the tasks of a group."""
    counts = results.get("n-samples", {})
    if name in counts:
        return int(counts[name]["effective"])
    children = results.get("group_subtasks", {}).get(name, [])
    return sum(_n_samples(child, results) for child in children)
