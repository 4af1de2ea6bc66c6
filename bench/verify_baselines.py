"""More renderers for bench/verify.py: the baselines on the bundled model, the metric space's
ground truth and 128 x 2048 calibration, each from committed outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from verify_tables import _load  # beside this script: the same reader of bench/results/

BENCH = Path(__file__).resolve().parent


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def metric_truth(name: str = "metric_truth_smollm2-135m_2-4.jsonl") -> list[str]:
    """The classes pruned as shipped in the ground truth (bench/metric_truth.py), ranked by
    held-out perplexity, with their full-fidelity engine error; the file is bench/data's."""
    records = [json.loads(line) for line in (BENCH / "data" / name).read_text().splitlines()]
    engine = {r["index"]: r["error"] for r in records if r["kind"] == "full"}
    shipped = sorted((r for r in records if r["kind"] == "shipped"), key=lambda r: r["perplexity"])
    wanda = next(r["perplexity"] for r in shipped if r["formula"] == "|W| * sqrt(X)")
    rows = [
        "| rank by ppl | genome | engine error | shipped error | held-out ppl | vs Wanda |",
        "|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(shipped, 1):
        label = "`" + r["formula"] + "`" + (" (Wanda)" if r["formula"] == "|W| * sqrt(X)" else "")
        rows.append(
            f"| {rank} | {_cell(label)} | {engine[r['index']]:.4f} | {r['shipped_error']:.4f} | "
            f"{r['perplexity']:.3f} | {(r['perplexity'] / wanda - 1) * 100:+.1f}% |"
        )
    return rows


def quality() -> list[str]:
    """Held-out perplexity of every library method in each pattern (bench/quality.py)."""
    rows = _load("quality_smollm2-135m.json")["rows"]
    patterns = ("unstructured", "2:4", "4:8")
    ppl = {(r["method"], r["pattern"]): r["ppl"] for r in rows}
    seconds = {(r["method"], r["pattern"]): r.get("seconds") for r in rows}
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if not m.startswith("ref")]
    out = [
        "| method | 50% unstructured | 2:4 | 4:8 | prune s (50% / 2:4 / 4:8) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in methods:
        if m == "dense":
            out.append(f"| dense | {ppl[('dense', '-')]:.3f} | | | |")
            continue
        cells = [f"{ppl[m, p]:.3f}" if ppl.get((m, p)) else "n/a" for p in patterns]
        secs = " / ".join(f"{seconds[m, p]:.0f}" if ppl.get((m, p)) else "-" for p in patterns)
        out.append(f"| {m} | {' | '.join(cells)} | {secs} |")
    return out


def quality_reference() -> list[str]:
    """The independent re-implementations against the library (bench/reference_prune.py)."""
    rows = _load("quality_smollm2-135m.json")["rows"]
    lib = {(r["method"], r["pattern"]): r["ppl"] for r in rows}
    out = [
        "| check | pattern | library ppl | reference ppl | difference | masks agree | result |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r["method"].startswith("reference"):
            continue
        base = r["method"].removeprefix("reference ").removesuffix(" (ties last)")
        out.append(
            f"| {r['method']} | {r['pattern']} | {lib[base, r['pattern']]:.3f} | {r['ppl']:.3f} | "
            f"{r['rel_diff'] * 100:+.2f}% | {r['agree'] * 100:.2f}% | {r['check']} |"
        )
    return out


def baselines_high() -> list[str]:
    """Wanda and SparseGPT, uniform and with OWL's plan, at 60% and 70% (optishear compare)."""
    out = [
        "| target | Wanda | OWL+Wanda | SparseGPT | OWL+SparseGPT | dense |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target in ("0.6", "0.7"):
        ppl = {}
        for plan in ("uniform", "owl"):
            for r in _load(f"compare_{target}_{plan}_smollm2-135m.json"):
                ppl[plan, r["method"]] = r["perplexity"]
        cells = []
        for method in ("wanda", "sparsegpt"):
            uniform, owl = ppl["uniform", method], ppl["owl", method]
            cells += [f"{uniform:.3f}", f"{owl:.3f} ({(owl / uniform - 1) * 100:+.1f}%)"]
        out.append(f"| {float(target):.0%} | {' | '.join(cells)} | {ppl['uniform', 'dense']:.3f} |")
    return out


def calibration_128x2048() -> list[str]:
    """A 2:4 prune from 128 x 2048 calibration tokens: time, peak memory and held-out
    perplexity (bench/memory_profile.py --phases prune); Wanda + refit was not run to its end."""
    out = [
        (
            "| method | calibration | prune s | peak RSS of the prune (MiB) | over the weights "
            "| held-out ppl |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("sparsegpt",):
        (d,) = _load(f"memory_128x2048_{name}.json")["phases"]
        label = name + (f", damping chosen on every {d['refit_holdout']}th sequence"
                        if d["refit_holdout"] else "")  # fmt: skip
        n, t = d["calibration"]
        out.append(
            f"| {label} | {n} x {t} | {d['prune_seconds']:.0f} | "
            f"{d['rss_peak_prune'] / 2**20:,.0f} | {d['rss_peak_prune'] / d['weight_bytes']:.2f} | "
            f"{d['perplexity']:.3f} |"
        )
    return out


def calibration_spill(names: tuple[str, ...] = ("16x2048_memory", "16x2048_spilled",
                                               "64x2048_spilled")) -> list[str]:  # fmt: skip
    """Wanda's sequential prune with the hidden states in memory or in a file
    (bench/memory_profile.py --hidden-memory-gib): the process's anonymous peak and its RSS."""
    out = [
        (
            "| calibration | hidden states | prune s | anonymous peak (MiB) | RSS peak (MiB) "
            "| held-out ppl |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        (d,) = _load(f"memory_spill_{name}.json")["phases"]
        n, t = d["calibration"]
        where = "in a file" if name.endswith("spilled") else "in memory"
        out.append(
            f"| {n} x {t} | {where} | {d['prune_seconds']:.0f} | "
            f"{d['anon_peak_prune'] / 2**20:,.0f} | {d['rss_peak_prune'] / 2**20:,.0f} | "
            f"{d['perplexity']:.3f} |"
        )
    return out


def dtype_speed(name: str = "dtype_speed_avx2.json") -> list[str]:
    """The decoder blocks' time in float32 and bfloat16, one thread (bench/dtype_speed.py)."""
    d = _load(name)
    fp32, bf16 = min(d["seconds"]["float32"]), min(d["seconds"]["bfloat16"])
    n, t = d["tokens"]
    return [
        "| CPU | native bf16 | `--dtype auto` | tokens | float32 s | bfloat16 s | bf16 / fp32 |",
        "|---|---|---|---|---:|---:|---:|",
        (
            f"| {d['cpu']['model']} | {'yes' if d['cpu']['native_bfloat16'] else 'no'} "
            f"| {d['cpu']['auto']} "
            f"| {n} x {t} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f} |"
        ),
    ]


def headline(name: str = "headline.json", *, cost: bool = False) -> list[str]:
    """The goals of issue 26 per model and target, a search rerun per seed, or (`cost`) each
    search's time against a SparseGPT prune (bench/headline.py, whose tables these are)."""
    from headline import cost_table, table  # beside this script

    if cost:
        table = cost_table
    runs = _load(name)["runs"]
    lines: list[str] = []
    for model in dict.fromkeys(r["model"] for r in runs):
        body = table(model, [r for r in runs if r["model"] == model]).splitlines()
        lines += body if not lines else body[2:]  # one header for every model
    return lines


def refit_choice(*names: str) -> list[str]:
    """The refit's damping choice, every damping solved against the scan stopped once the
    held-aside error stops falling, per model: all measured layers, then the widest ones
    (bench/refit_choice.py)."""
    lines = [
        (
            "| model | layers | same damping chosen | held-aside error, after / before (max) | "
            "CG steps, before | CG steps, after | s, before | s, after |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        d = _load(name)
        widest = max(r["shape"][1] for r in d["rows"])
        for label, rows in (
            ("all", d["rows"]),
            (f"{widest} inputs", [r for r in d["rows"] if r["shape"][1] == widest]),
        ):
            same = sum(r["before_damping"] == r["after_damping"] for r in rows)
            ratio = max(r["after_held_error"] / r["before_held_error"] for r in rows)
            cells = [
                f"{d['protocol']['model']}",
                f"{len(rows)} ({label})",
                f"{same} of {len(rows)}",
                f"{ratio:.4f}",
                str(sum(r["before_steps"] for r in rows)),
                str(sum(r["after_steps"] for r in rows)),
                f"{sum(r['before_s'] for r in rows):.1f}",
                f"{sum(r['after_s'] for r in rows):.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


RENDERERS: dict[str, Callable[[], list[str]]] = {
    "refit_choice": lambda: refit_choice(
        "refit_choice_smollm2-135m.json", "refit_choice_qwen2.5-0.5b.json"
    ),
    "headline": headline,
    "headline_cost": lambda: headline(cost=True),
    "headline_before_owl_refit": lambda: headline("headline_before_owl_refit.json"),
    "metric_truth": metric_truth,
    "quality": quality,
    "quality_reference": quality_reference,
    "baselines_high": baselines_high,
    "calibration_128x2048": calibration_128x2048,
    "calibration_spill": calibration_spill,
    "dtype_speed": dtype_speed,
}
