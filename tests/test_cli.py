"""The `optishear` CLI end to end on a saved tiny model, and its handling of bad input."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from optishear.artifacts.export import MANIFEST_NAME
from optishear.cli import main, search_cmd
from optishear.cli.common import held_out as measure_held_out
from optishear.config import EvaluationConfig
from optishear.core.settings import LibrarySettings
from optishear.model.blocks import iter_linears


def _common(root):
    return [
        "--calib",
        str(root / "calib.txt"),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--eval-text",
        str(root / "eval.txt"),
        "--eval-seqlen",
        "32",
        "--eval-windows",
        "4",
    ]


def test_prune_eval_export_end_to_end(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "pruned"
    rc = main(
        [
            "--no-progress",
            "prune",
            "--model",
            str(tiny_model_dir / "model"),
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            *_common(tiny_model_dir),
            "--out",
            str(out),
            "--json",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prune"]["achieved_sparsity"] == 0.5
    assert result["eval"]["n_tokens"] == 4 * 31
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["eval"]["perplexity"] == result["eval"]["perplexity"]
    assert manifest["prune"]["method"] == "sparsegpt"
    model = AutoModelForCausalLM.from_pretrained(out)
    for block in model.model.layers:
        W = block.mlp.down_proj.weight
        assert ((W == 0).view(W.shape[0], -1, 4).sum(-1) == 2).all()

    rc = main(
        [
            "--no-progress",
            "eval",
            "--model",
            str(out),
            "--eval-text",
            str(tiny_model_dir / "eval.txt"),
            "--eval-seqlen",
            "32",
            "--eval-windows",
            "4",
            "--json",
        ]
    )
    assert rc == 0
    again = json.loads(capsys.readouterr().out)["eval"]["perplexity"]
    assert again == pytest.approx(result["eval"]["perplexity"], rel=1e-5)


def test_prune_streaming_exports_the_resident_weights(tiny_model_dir, tmp_path, capsys):
    outs = {}
    for mode in ("resident", "streaming"):
        out = tmp_path / mode
        model = str(tiny_model_dir / "model")
        args = ["--model", model, "--method", "wanda", *_common(tiny_model_dir), "--device", "cpu"]
        rc = main(
            ["--no-progress", "prune", *args, "--execution", mode, "--out", str(out), "--json"]
        )
        assert rc == 0
        captured = capsys.readouterr()
        assert f"execution: {mode} (as asked)" in captured.err
        outs[mode] = (json.loads(captured.out), load_file(out / "model.safetensors"))
    (r, rw), (s, sw) = outs["resident"], outs["streaming"]
    assert s["execution"] == "streaming"
    assert s["eval"]["perplexity"] == r["eval"]["perplexity"]
    assert rw.keys() == sw.keys()
    assert all(torch.equal(rw[k], sw[k]) for k in rw)


def test_compare_prints_a_table(tiny_model_dir, capsys) -> None:
    rc = main(
        [
            "--no-progress",
            "compare",
            "--model",
            str(tiny_model_dir / "model"),
            "--methods",
            "magnitude,wanda,ria",
            *_common(tiny_model_dir),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("dense", "magnitude", "wanda", "ria"):
        assert f"\n{name} " in out


@pytest.fixture(scope="module")
def odd_model_dir(tmp_path_factory):
    """A model whose 36-wide layers fit 2:4 but not 4:8."""
    root = tmp_path_factory.mktemp("odd")
    build_tiny("llama", hidden=36, heads=2).save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "foo"], "method: Input should be 'magnitude', 'wanda', 'ria'"),
        (["--sparsity", "1.5"], "sparsity: Input should be less than 1"),
        (["--sparsity", "0"], "sparsity: Input should be greater than 0"),
        (["--sparsity", "half"], "sparsity: Input should be a valid number"),
        (["--pattern", "2:4", "--sparsity", "0.6"], "prunes exactly 0.5 of the weights"),
        (["--pattern", "2-4"], "pattern must be 'unstructured' or 'N:M'"),
        (["--pattern", "4:8", "--odd"], "4:8 does not divide layer 0.self_attn.q_proj"),
        (["--model", "./no/such/model"], "is not a registered name (smollm2-135m, qwen2.5-0.5b)"),
        (["--model", "/tmp/missing.gguf"], "GGUF file /tmp/missing.gguf does not exist"),
        (["--method", "meta", "--genome", "f1=cube"], "bad genome names"),
        (["--plan", "explicit", "--layer-sparsity", "0.5"], "lists 1 sparsities but the model"),
        (["--plan", "owl", "--pattern", "2:4"], "use a uniform plan"),
        (["--method", "sparsegpt", "--reconstruct"], "sparsegpt always reconstructs"),
        (["--refit-holdout", "4"], "refit_holdout chooses the least-squares refit's damping"),
        (["--reconstruct", "--refit-holdout", "8"], "4 sequences hold none; give at least 8"),
        (["--calib", "missing.txt"], "text source 'missing.txt' is not 'wiki'"),
        (["--device", "cuda:0"], "CUDA was asked for but no GPU is available"),
    ],
)
def test_bad_input_gives_clear_error(tiny_model_dir, odd_model_dir, capsys, args, message):
    if torch.cuda.is_available() and "cuda:0" in args:
        pytest.skip("a GPU is present")
    model = str(odd_model_dir if "--odd" in args else tiny_model_dir / "model")
    args = [a for a in args if a != "--odd"]
    if "--model" not in args:
        args = ["--model", model, *args]
    try:
        rc = main(["--no-progress", "prune", *_common(tiny_model_dir), *args])
    except SystemExit as exc:  # argparse's own validation
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err


def test_refuses_to_overwrite_a_folder(tiny_model_dir, tmp_path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    rc = main(
        [
            "--no-progress",
            "prune",
            "--model",
            str(tiny_model_dir / "model"),
            *_common(tiny_model_dir),
            "--no-eval",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_real_process_exit_code_and_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "optishear.cli", "prune", "--model", "/no/such/dir/model"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("optishear: error: model '/no/such/dir/model'")
    assert "Traceback" not in proc.stderr


def test_python_dash_m_optishear_is_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "optishear", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: optishear")
    for command in ("prune", "search", "serve"):
        assert command in proc.stdout


def _search(root, generations: int) -> list[str]:
    """`optishear search` on the tiny model, population 6, screening the 324 first-order
    classes on one rung."""
    model = str(root / "model")
    return [
        "--no-progress",
        "search",
        "--model",
        model,
        "--metric-space",
        "first_order",
        "--screen-rungs",
        "1x8",
        "--population",
        "6",
        "--generations",
        str(generations),
        *_common(root),
    ]


def test_search_writes_front_and_exports(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "search"
    args = [*_search(tiny_model_dir, 2), "--refit-top", "2", "--out", str(out)]
    assert main([*args, "--export"]) == 0
    printed = capsys.readouterr().out
    assert "recommended:" in printed
    assert "held-out perplexity" in printed
    report = json.loads((out / "search.json").read_text())
    assert report["recommended"]["meets_target"]
    assert report["front"]
    assert report["recommended_prune"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    # the recommendation was re-scored with refit weights, and shipped refit
    assert report["summary"]["refitted"][0] == report["recommended"]
    assert report["recommended_prune"]["reconstructed"] is True
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    manifest = json.loads((out / "checkpoint" / MANIFEST_NAME).read_text())
    assert manifest["search"]["recommended"] == report["recommended"]
    assert model.model.layers[0].mlp.up_proj.weight.eq(0).any()

    assert main(args) == 2  # a second search into the same folder must not clobber it
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--no-eval"]) == 0
    again = json.loads((out / "search.json").read_text())
    assert again["front"] == report["front"]


def _counting(monkeypatch, module, name):
    """Count the calls of module.name, which still runs."""
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_search_compares_held_out_perplexity_with_the_baselines(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "search"
    args = [*_search(tiny_model_dir, 1), "--refit-top", "2", "--baselines", "--out", str(out)]
    prunes = _counting(monkeypatch, search_cmd, "prune_model")
    perplexities = _counting(monkeypatch, search_cmd, "held_out")
    assert main([*args, "--export"]) == 0
    # the comparison measured the shipped model: one prune more (for the export), no forward
    assert prunes == ["prune_model"]
    assert perplexities == []
    printed = capsys.readouterr().out
    report = json.loads((out / "search.json").read_text())
    held_out = report["summary"]["held_out"]
    rows = {r["name"]: r for r in held_out["rows"]}
    # OWL+SparseGPT's row too (an unstructured target): from its as-shipped prune
    assert list(rows) == ["dense", "searched", "wanda", "sparsegpt", "owl+sparsegpt"]
    assert report["recommended_eval"]["perplexity"] == rows["searched"]["perplexity"]
    assert report["recommended_eval"]["measured_by"] == "held-out comparison"
    # the searched row is the shipped model: the exported checkpoint, measured here on the
    # same windows, has its perplexity
    exported = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(out / "checkpoint")
    evaluation = EvaluationConfig(**report["config"]["evaluation"])
    again = measure_held_out(exported, tokenizer, evaluation, LibrarySettings())
    assert again.perplexity == pytest.approx(rows["searched"]["perplexity"], rel=1e-5)
    assert again.n_tokens == report["recommended_eval"]["n_tokens"]
    assert rows["wanda"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    for name in ("wanda", "sparsegpt", "owl+sparsegpt"):
        gain = rows["searched"]["perplexity"] / rows[name]["perplexity"] - 1
        assert held_out["gains"][name] == pytest.approx(gain)
        error = held_out["gain_errors"][name]  # the windows' standard error
        assert f"{gain * 100:+.1f}% +- {error * 100:.1f}% vs {name}" in printed
    assert held_out["protocol"]["eval_windows"] == 4
    assert held_out["protocol"]["calibration_samples"] == 4
    manifest = json.loads((out / "checkpoint" / MANIFEST_NAME).read_text())
    assert manifest["held_out_comparison"]["gains"] == held_out["gains"]
    assert manifest["eval"]["perplexity"] == rows["searched"]["perplexity"]
    assert "prune_seconds" not in manifest["held_out_comparison"]["rows"][1]

    # without an export, the comparison's figures are all: no prune, no forward after it
    prunes.clear()
    assert main([*args[:-1], str(tmp_path / "noexport")]) == 0
    assert prunes == []
    assert perplexities == []
    quiet = json.loads((tmp_path / "noexport" / "search.json").read_text())
    assert quiet["recommended_eval"]["perplexity"] == pytest.approx(
        rows["searched"]["perplexity"], rel=1e-9
    )

    # off by default in `optishear search`: the recommended model is pruned and measured here
    assert main([*_search(tiny_model_dir, 1), "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "search.json").read_text())
    assert plain["summary"]["held_out"] is None
    assert prunes == ["prune_model"]
    assert perplexities == ["held_out"]
    assert plain["recommended_eval"]["n_tokens"] == 4 * 31


def test_search_rescore_top_ships_the_best_as_shipped(tiny_model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "search"
    args = [*_search(tiny_model_dir, 1), "--rescore-top", "2", "--no-fallback"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "search.json").read_text())
    assert report["summary"]["rescored"][0] == report["recommended"]
    assert report["summary"]["refitted"] == []
    assert report["recommended_prune"]["reconstructed"] is False
    assert "pruned as shipped" in report["summary"]["selection_rule"]


def test_search_refuses_a_folder_of_the_old_pickle_format(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "state.pkl").write_bytes(b"\x80\x05 a pickle from before the JSON state")
    rc = main([*_search(tiny_model_dir, 1), "--out", str(out), "--resume"])
    assert rc == 2
    assert "old pickle state format" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["state.pkl"]  # nothing written or run


def test_search_allocation_on_disk_database_exports_its_per_layer_plan(
    tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "search"
    args = [
        *_search(tiny_model_dir, 2),
        "--stages",
        "allocation",
        "--sparsity",
        "0.6",
        "--refit-database",
        "--database",
        "disk",
        "--low-fidelity",
        "2",
        "--no-fallback",  # the search's own per-layer plan
        "--out",
        str(out),
        "--export",
    ]
    assert main(args) == 0
    report = json.loads((out / "search.json").read_text())
    assert "refit weights" in report["summary"]["database"]
    assert "in disk" in report["summary"]["database"]
    assert not list(out.glob("layer-database-*"))  # removed once the search is done
    layers = report["recommended"]["layer_sparsity"]
    assert len(layers) == 2 * 7
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    for pos, (_idx, _name, lin) in enumerate(iter_linears(model)):
        assert float(lin.weight.eq(0).float().mean()) == pytest.approx(layers[pos], abs=0.07)
    assert report["recommended_prune"]["achieved_sparsity"] == pytest.approx(0.6, abs=0.01)
    # scored with the database's OBS-updated weights, so shipped with the OBS update
    assert report["recommended_prune"]["update"] == "obs"
    assert report["summary"]["shipped"]["obs_update"] is True
    capsys.readouterr()
    bad = main([*args[:-3], "--front", "0.5,0.7", "--out", str(tmp_path / "x")])
    assert bad == 2
    assert "needs selection nsga3" in capsys.readouterr().err
