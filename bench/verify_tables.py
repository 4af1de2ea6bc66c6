"""The tables of bench/RESULTS.md that bench/verify.py checks: each renderer builds one from the
JSON files it names in bench/results/, as Markdown lines."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# the published baselines' names in a search's as-shipped scores (optishear.search.finish)
BASELINES = ("SparseGPT", "Wanda+refit", "Wanda", "OWL+SparseGPT", "OWL+Wanda")


def _load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def status_polls() -> list[str]:
    """Status polls with a search beside them, the API's copy off (0) and on (0.5 s),
    interleaved runs (bench/service_bench.py --status-cache)."""
    rows = [
        "| run | status cache (s) | polls/s | p50 (ms) | p99 (ms) | search |",
        "|---|---|---|---|---|---|",
    ]
    for run in (1, 2):
        for cache in ("0", "0.5"):
            d = _load(f"polls_cache{cache}_run{run}.json")
            p = d["status_polls"]
            search = d["search"]
            state = "running" if search["still_running_after_the_load"] else "ended"
            rows.append(
                f"| {run} | {cache} | {p['requests_per_s']:.0f} | {p['p50_ms']:.1f} | "
                f"{p['p99_ms']:.1f} | {search['status']}, {state} during the polls |"
            )
    return rows


def allocation_fallback() -> list[str]:
    """The 60% allocation search of issue 26: every finalist and baseline scored as shipped on
    validation, and the held-out perplexity of what shipped."""
    d = _load("issue26_allocation60_smollm2.json")
    rows = ["| model | validation error as shipped (KL) | held-out perplexity |", "|---|---|---|"]
    held = {r["name"]: r["perplexity"] for r in d["held_out"]["rows"]}
    # the held-out comparison measured what shipped ("searched") beside Wanda and SparseGPT
    measured = {"Wanda": held["wanda"], "SparseGPT": held["sparsegpt"]}
    measured[d["recommended_name"] or d["recommended"]] = held["searched"]
    for key, error in d["validation_errors_as_shipped"].items():
        ppl = measured.get(key)
        mark = " (recommended)" if key in (d["recommended_name"], d["recommended"]) else ""
        kind = "searched " if key in d["searched_finalists"] else ""
        text = f"{ppl:.3f}" if ppl is not None else "-"
        rows.append(f"| {kind}{key}{mark} | {error:.4f} | {text} |")
    rows.append(f"| dense | 0 | {held['dense']:.3f} |")
    return rows


def proxy_screen() -> list[str]:
    """The metric screen at 2:4 with full-model rungs and opened by the layer-wise proxy, one
    engine, side by side (bench/metric_search.py --rows screen,proxy)."""
    d = _load("metric_search_proxy_smollm2-135m_2-4.json")
    rows = [
        "| row | rungs | screen (s) | search (s) | evaluations | pick | held-out ppl | regret |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        screen = sum(h["seconds"] for h in r["history"] if "screen_rung" in h)
        rungs = ", ".join(
            ("layers" if h["sequences"] == 0 else f"{h['sequences']}x{h['tokens']}")
            + f" on {h['classes']}"
            for h in r["history"]
            if "screen_rung" in h
        )
        rows.append(
            f"| {r['row']} | {rungs} | {screen:.0f} | {r['search_seconds']:.0f} | "
            f"{r['evaluations']} | `{r['genome']}` | {r['perplexity']:.3f} | "
            f"{r['regret'] * 100:+.1f}% |"
        )
    return rows


def proxy_rungs() -> list[str]:
    """Each rung's ranking against the ground truth's full-fidelity errors (Spearman over the
    classes it scored; where the truth's 5 best classes ranked in it)."""
    d = _load("metric_search_proxy_smollm2-135m_2-4.json")
    rows = [
        "| row | rung | classes | s a class | Spearman vs full fidelity | truth's top 5 ranked |",
        "|---|---|---|---|---|---|",
    ]
    seq_len = d["args"]["seqlen"]
    for r in d["rows"]:
        seconds = [h for h in r["history"] if "screen_rung" in h]
        for rung, h in zip(
            r["rungs"], sorted(seconds, key=lambda h: h["screen_rung"]), strict=False
        ):
            tokens = rung["tokens"] or seq_len  # 0: whole sequences
            name = "layers" if rung["sequences"] == 0 else f"{rung['sequences']}x{tokens}"
            ranks = ", ".join("-" if x is None else str(x) for x in rung["truth_top5_ranks"])
            rows.append(
                f"| {r['row']} | {name} | {rung['classes']} | {h['seconds'] / h['classes']:.3f} "
                f"| {rung['spearman_full']:.3f} | {ranks} |"
            )
    return rows


def demo_time(results: str = "demo_fresh_clone.json") -> list[str]:
    """`make demo` from a fresh clone, the environment created (bench/demo_time.py)."""
    d = _load(results)
    held = d["search"]["held_out"]
    rows = ["| measure | value |", "|---|---|"]
    rows.append(f"| `make demo`, wall time | {d['wall_s']:.0f} s (commit {d['commit']}) |")
    rows.append(f"| of it `optishear run` | {d['run_s']} s |")
    rows.append(f"| of it the search | {d['search']['search_seconds']:.0f} s |")
    for name in ("dense", "searched", "wanda", "sparsegpt", "owl+sparsegpt"):
        if name not in held["rows"]:  # OWL+SparseGPT's row since the stop of 2026-12-08
            continue
        ppl = held["rows"][name]
        gain = ""
        if name in held["gains"]:
            gain = (
                f" (searched {held['gains'][name] * 100:+.1f}% "
                f"+- {held['gain_errors'][name] * 100:.1f}% against it)"
            )
        rows.append(f"| held-out perplexity, {name} | {ppl:.3f}{gain} |")
    rec = d["search"]["recommended"]
    for key, error in d["search"]["as_shipped"].items():
        mark = " (recommended)" if key == rec else ""
        rows.append(f"| validation error as shipped (KL), {key}{mark} | {error:.4f} |")
    return rows


def demo_dtype() -> list[str]:
    """`make demo` in float32 and in bfloat16, one after the other (bench/demo_time.py)."""
    runs = [_load(f"demo_dtype_{dt}.json") for dt in ("float32", "bfloat16")]
    rows = ["| measure | float32 | bfloat16 |", "|---|---|---|"]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        rows.append(f"| {label} | " + " | ".join(cell(d) for d in runs) + " |")

    row("`make demo`, wall time", lambda d: f"{d['wall_s']:.0f} s")
    row("of it the search", lambda d: f"{d['search']['search_seconds']:.0f} s")
    row(
        "of it the search's generations",
        lambda d: f"{sum(s['seconds'] for s in d['search']['steps']):.0f} s",
    )
    for name in ("dense", "searched", "wanda", "sparsegpt"):

        def held(d: dict[str, Any], name: str = name) -> str:
            h = d["search"]["held_out"]
            gain = ""
            if name in h["gains"]:
                gain = f" ({h['gains'][name] * 100:+.1f}% +- {h['gain_errors'][name] * 100:.1f}%)"
            return f"{h['rows'][name]:.3f}{gain}"

        row(f"held-out perplexity, {name}", held)

    def validation(d: dict[str, Any]) -> str:
        shipped = d["search"]["as_shipped"]
        best = shipped[d["search"]["recommended"]]
        return f"{best:.4f} ({(best / shipped['Wanda'] - 1) * 100:+.1f}% against Wanda's)"

    row("validation error as shipped, recommended", validation)
    row(
        "validation error as shipped, best baseline",
        lambda d: "{1:.4f} ({0})".format(
            *min(
                ((k, v) for k, v in d["search"]["as_shipped"].items() if k in BASELINES),
                key=lambda kv: kv[1],
            )
        ),
    )
    return rows


def candidate_cost() -> list[str]:
    """A candidate against one dense forward, logits included (bench/search_cost.py)."""
    rows = [
        (
            "| pattern | dense forward | new genome (masking) | ratio | cached masks | ratio "
            "| child, block 10 of 30 | ratio | KL one-pass / torch.logsumexp |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in _load("search_cost_prefix_kl.json"):
        d = r["dense_forward_s"]
        rows.append(
            f"| {r['pattern']} | {d:.2f} s | {r['new_genome_s']:.2f} s ({r['masking_s']:.2f} s) "
            f"| **{r['new_genome_s'] / d:.2f}** | {r['cached_masks_s']:.2f} s "
            f"| **{r['cached_masks_s'] / d:.2f}** | {r['child_s']:.2f} s "
            f"| **{r['child_s'] / d:.2f}** | {r['kl_shifted_s']:.2f} s / {r['kl_exact_s']:.2f} s |"
        )
    return rows


def prefix_reuse() -> list[str]:
    """Searches with and without the kept block outputs, side by side (bench/prefix_reuse.py)."""
    rows = [
        (
            "| search | evaluations | every block run | blocks kept | ratio | blocks skipped "
            "| per evaluation, dense forwards | same errors |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in _load("prefix_reuse_smollm2-135m.json")["rows"]:
        off = sum(r["seconds_every_block"]) / len(r["seconds_every_block"])
        on = sum(r["seconds_kept"]) / len(r["seconds_kept"])
        per = r["evaluations"] * r["dense_forward_s"]
        rows.append(
            f"| {r['row']} | {r['evaluations']} | {off:.0f} s | {on:.0f} s | **{on / off:.2f}** "
            f"| {r['blocks_skipped_share']:.0%} | {off / per:.2f} -> {on / per:.2f} "
            f"| {'yes' if r['identical_errors'] else 'NO'} |"
        )
    return rows


def refit_holdout() -> list[str]:
    """Wanda's 2:4 mask refit with the fixed damping and with dampings chosen per layer on
    held-aside calibration sequences, beside SparseGPT (bench/refit_holdout.py)."""
    d = _load("refit_holdout_smollm2-135m_2-4.json")
    rows = [
        "| calibration | recipe | held-out ppl | prune (s) | dampings chosen (layers) |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        n, t = r["calibration"]
        chosen = ", ".join(f"{k}: {v}" for k, v in r["dampings"].items()) or "-"
        rows.append(
            f"| {n} x {t} | {r['recipe']} | {r['perplexity']:.3f} | {r['prune_seconds']:.1f} | "
            f"{chosen} |"
        )
    return rows


def sparsegpt_speed() -> list[str]:
    """SparseGPT's column loop against the paper's, per layer kind, summed over the measured
    blocks (bench/sparsegpt_speed.py)."""
    d = _load("sparsegpt_speed_smollm2-135m.json")
    rows = [
        (
            "| pattern | layer | d_out x d_in | paper loop (s) | engine (s) | speed-up | "
            "mask entries that differ | max weight diff |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for pattern in dict.fromkeys(r["pattern"] for r in d["rows"]):
        mine = [r for r in d["rows"] if r["pattern"] == pattern]
        for kind in dict.fromkeys(r["layer"].split(".", 1)[1] for r in mine):
            of = [r for r in mine if r["layer"].split(".", 1)[1] == kind]
            paper, engine = sum(r["paper_s"] for r in of), sum(r["engine_s"] for r in of)
            same = sum(r["mask_differences"] for r in of)
            diff = max(r["max_weight_diff"] for r in of)
            rows.append(
                f"| {pattern} | {kind} | {of[0]['shape'][0]} x {of[0]['shape'][1]} | "
                f"{paper:.3f} | {engine:.3f} | {paper / engine:.2f}x | {same} | {diff:.1e} |"
            )
        paper, engine = sum(r["paper_s"] for r in mine), sum(r["engine_s"] for r in mine)
        rows.append(
            f"| **{pattern}** | **all {len(mine)}** | | **{paper:.2f}** | **{engine:.2f}** | "
            f"**{paper / engine:.2f}x** | | |"
        )
    return rows


def refit_warm_start() -> list[str]:
    """CG steps of each damping of the refit's choice, from the dense survivors and from the
    next stronger damping's solution, summed over the measured layers
    (bench/refit_warm_start.py)."""
    d = _load("refit_warm_start_smollm2-135m.json")
    rows = [
        (
            "| damping | layers | steps, dense start | steps, warm start | s, dense start | "
            "s, warm start |"
        ),
        "|---|---|---|---|---|---|",
    ]
    dampings = list(dict.fromkeys(r["damping"] for r in d["rows"]))
    for damping in [*dampings, None]:
        of = [r for r in d["rows"] if damping is None or r["damping"] == damping]
        cells = [
            str(len({r["layer"] for r in of})),
            str(sum(r["cold_steps"] for r in of)),
            str(sum(r["warm_steps"] for r in of)),
            f"{sum(r['cold_s'] for r in of):.2f}",
            f"{sum(r['warm_s'] for r in of):.2f}",
        ]
        label = f"{damping:g}" if damping is not None else "**all four**"
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def text_tasks(*files: str) -> list[str]:
    """The offline text tasks at 2:4 on the bundled model, SparseGPT against Wanda's mask with
    the refit (damping chosen on held-aside sequences), one calibration sample of 64 x 512
    tokens (bench/tasks_accuracy.py); then the rows of any further `files`."""
    rows_in = [
        r
        for name in ("tasks_text_2-4_64x512_smollm2-135m.json", *files)
        for r in _load(name)["rows"]
    ]
    metrics = (
        ("optishear_lastword acc", "last word acc"),
        ("optishear_wordchoice acc", "word choice acc"),
        ("optishear_nextsentence acc", "next sentence acc"),
        ("optishear_nextsentence acc_norm", "next sentence acc_norm"),
        ("optishear_text acc", "mean acc (1,500)"),
    )
    rows = [
        "| model | " + " | ".join(label for _, label in metrics) + " | held-out ppl | prune (s) |",
        "|---" * (len(metrics) + 3) + "|",
    ]
    for r in rows_in:
        cells = [f"{r['accuracy'][m]:.3f} ± {r['stderr'][m]:.3f}" for m, _ in metrics]
        rows.append(
            f"| {r['method']} | "
            + " | ".join(cells)
            + f" | {r['ppl']:.3f} | "
            + (f"{r['prune_seconds']:.0f} |" if r["prune_seconds"] else "- (as loaded) |")
        )
    return rows


def search_large_calibration() -> list[str]:
    """A 2:4 search with 64 x 512 calibration tokens: every finalist and baseline as shipped
    on validation, and the held-out rows of its comparison (optishear search --baselines)."""
    d = _load("search_2-4_64x512_smollm2-135m.json")
    held = d["held_out"]
    rows = [
        "| model | validation error as shipped (KL) | held-out ppl | prune (s) |",
        "|---|---|---|---|",
    ]
    names = {"SparseGPT": "sparsegpt", "Wanda": "wanda"}
    for c in d["as_shipped"]:
        formula = c["formula"].replace("|", "\\|")  # a table cell's own bars
        label = c["name"] or f"searched {formula}, refit"
        if c["key"] == d["recommended"]:
            label += " (recommended)"
        row = held["rows"].get("searched" if c["key"] == d["recommended"] else names.get(c["name"]))
        ppl = "-" if row is None else f"{row['perplexity']:.3f}"
        seconds = "-" if row is None else f"{row['prune_seconds']:.0f}"
        rows.append(f"| {label} | {c['error']:.4f} | {ppl} | {seconds} |")
    dense = held["rows"]["dense"]["perplexity"]
    rows.append(f"| dense | 0 | {dense:.3f} | - |")
    return rows


def worker_scaling() -> list[str]:
    """Evaluations per second on 1 and 2 Ray actors, float32 and bfloat16, one thread each
    (bench/workers_bench.py)."""
    rows = [
        (
            "| dtype | in process (evaluations/s) | 1 actor | 2 actors | efficiency by wall clock "
            "| CPU s per evaluation, 1 -> 2 actors | load average (median) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for dtype in ("float32", "bfloat16"):
        d = _load(f"workers_scaling_{dtype}.json")
        one, two = d["rows"]
        load = statistics.median(d["protocol"]["load_average"])
        rows.append(
            f"| {dtype} | {d['in_process']['evals_per_s']:.3f} | {one['evals_per_s']:.3f} | "
            f"{two['evals_per_s']:.3f} | {two['efficiency']:.2f} | "
            f"{one['cpu_s_per_eval']:.2f} -> {two['cpu_s_per_eval']:.2f} | "
            f"{load:.2f} |"
        )
    return rows


RENDERERS: dict[str, Callable[[], list[str]]] = {
    "text_tasks": text_tasks,
    "text_tasks_searched": lambda: text_tasks("tasks_text_2-4_64x512_searched_smollm2-135m.json"),
    "search_large_calibration": search_large_calibration,
    "refit_warm_start": refit_warm_start,
    "refit_holdout": refit_holdout,
    "sparsegpt_speed": sparsegpt_speed,
    "candidate_cost": candidate_cost,
    "prefix_reuse": prefix_reuse,
    "demo_time": demo_time,
    "demo_dtype": demo_dtype,
    "worker_scaling": worker_scaling,
    "demo_time_sparsegpt_loop": lambda: demo_time("demo_fresh_clone_sparsegpt_loop.json"),
    "demo_time_bf16": lambda: demo_time("demo_fresh_clone_bf16.json"),
    "demo_time_bf16_rows": lambda: demo_time("demo_fresh_clone_bf16_rows.json"),
    "demo_time_bf16_c8d56dc": lambda: demo_time("demo_fresh_clone_bf16_c8d56dc.json"),
    "demo_time_avx2": lambda: demo_time("demo_auto_avx2.json"),
    "demo_time_avx2_fresh": lambda: demo_time("demo_fresh_clone_avx2.json"),
    "proxy_screen": proxy_screen,
    "proxy_rungs": proxy_rungs,
    "status_polls": status_polls,
    "allocation_fallback": allocation_fallback,
}
