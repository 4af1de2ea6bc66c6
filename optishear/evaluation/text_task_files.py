"""The offline text tasks on disk: lm-eval YAMLs, JSONL items and a manifest, built once per
text digest, item count, seed and format (see `text_tasks` for what the items are)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from optishear.core.files import staged_folder
from optishear.evaluation.text_tasks import (
    FORMAT,
    GROUP,
    LASTWORD,
    TASKS,
    TextTaskSpec,
    build_items,
)

_MANIFEST = "optishear-tasks.json"

_YAML_HEAD = """\
# Built by optishear.evaluation.text_tasks from {source} (sha256 {digest}), seed {seed}.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    train: {train}
test_split: test
fewshot_split: train
"""
_LASTWORD_BODY = """\
output_type: loglikelihood
doc_to_text: context
doc_to_target: "{{{{' ' + target}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
metadata:
  version: {version}
"""
_CHOICE_BODY = """\
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""
_GROUP_YAML = """\
group: {group}
task: [{tasks}]
aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: true
metadata:
  version: {version}
"""


def text_digest(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\0")
    return h.hexdigest()


def write_tasks(
    folder: Path, docs: Sequence[str], spec: TextTaskSpec, digest: str | None = None
) -> Path:
    """Build the three tasks from `docs` into `folder` (made whole, or not at all); `digest` is
    the text's, where the caller has it."""
    digest = digest or text_digest(docs)
    items = build_items(docs, spec)
    with staged_folder(folder) as tmp:
        for task, (test, shots) in items.items():
            for name, rows in (("test", test), ("train", shots)):
                with (tmp / f"{task}.{name}.jsonl").open("w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
            body = _LASTWORD_BODY if task == LASTWORD else _CHOICE_BODY
            (tmp / f"{task}.yaml").write_text(
                _YAML_HEAD.format(
                    source=spec.source,
                    digest=digest[:16],
                    seed=spec.seed,
                    task=task,
                    # lm-eval hands data_files to datasets as they are: relative would mean
                    # relative to the working directory, so the final folder's paths go in.
                    test=json.dumps(str(folder / f"{task}.test.jsonl")),
                    train=json.dumps(str(folder / f"{task}.train.jsonl")),
                )
                + body.format(version=FORMAT)
            )
        (tmp / f"{GROUP}.yaml").write_text(
            _GROUP_YAML.format(group=GROUP, tasks=", ".join(TASKS), version=FORMAT)
        )
        manifest = {
            "format": FORMAT,
            "source": spec.source,
            "sha256": digest,
            "seed": spec.seed,
            "items": {t: len(test) for t, (test, _) in items.items()},
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def tasks_folder(cache: Path, docs: Sequence[str], spec: TextTaskSpec) -> Path:
    """The built tasks of this text and spec under `cache`, built on first use."""
    digest = text_digest(docs)
    folder = cache / "tasks" / f"text-{digest[:16]}-n{spec.items}-s{spec.seed}-v{FORMAT}"
    if (folder / _MANIFEST).is_file():
        return folder
    return write_tasks(folder, docs, spec, digest)
