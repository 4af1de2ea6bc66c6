"""`optishear speed` on a saved tiny model: a checkpoint folder, pruning on the fly, bad input."""

import json

import pytest
from tiny_models import build_tiny, tiny_tokenizer

from optishear.cli import main
from optishear.config import PruneConfig
from optishear.recipe.prune import prune_model

FAST = [
    "--batch-sizes",
    "1,2",
    "--prompt-len",
    "8",
    "--decode-tokens",
    "2",
    "--warmup",
    "0",
    "--repeats",
    "1",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The conftest tiny Llama (seed 0) pruned 2:4 by magnitude, saved as an HF folder."""
    root = tmp_path_factory.mktemp("speed")
    model = build_tiny("llama")
    prune_model(model, None, PruneConfig(method="magnitude", pattern="2:4"))
    model.save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


def test_speed_of_a_checkpoint_as_json(tiny_model_dir, checkpoint, capsys) -> None:
    model = str(tiny_model_dir / "model")
    rc = main(
        [
            "--no-progress",
            "speed",
            "--model",
            model,
            "--checkpoint",
            str(checkpoint),
            *FAST,
            "--json",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pruned"] == {"checkpoint": str(checkpoint)}
    speed = result["speed"]
    assert speed["pattern"] == "2:4"
    assert [(r["variant"], r["batch_size"]) for r in speed["rows"]] == [
        ("dense", 1),
        ("pruned", 1),
        ("dense", 2),
        ("pruned", 2),
    ]
    assert [q["batch_size"] for q in speed["ratios"]] == [1, 2]
    assert speed["config"]["batch_sizes"] == [1, 2]
    assert speed["kernel_note"].startswith("no sparse kernel applies on cpu")


def test_speed_prunes_on_the_fly_and_prints_a_table(tiny_model_dir, capsys) -> None:
    rc = main(
        [
            "--no-progress",
            "speed",
            "--model",
            str(tiny_model_dir / "model"),
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--pattern",
            "unstructured",
            "--calib",
            str(tiny_model_dir / "calib.txt"),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
            *FAST,
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "pruned with wanda, unstructured, 0.5000 sparsity" in captured.err
    lines = captured.out.splitlines()
    assert lines[1].split() == [
        "variant",
        "kernel",
        "batch",
        "prefill",
        "ms",
        "prefill",
        "tok/s",
        "decode",
        "ms/tok",
        "decode",
        "tok/s",
    ]
    assert [line.split()[:3] for line in lines[3:7]] == [
        ["dense", "dense", "1"],
        ["pruned", "dense", "1"],
        ["dense", "dense", "2"],
        ["pruned", "dense", "2"],
    ]
    assert lines[7].startswith("pruned/dense latency (above 1: the pruned model is slower)")
    assert lines[8].startswith("  batch 1: prefill ")
    assert lines[10].startswith(
        "kernels: no sparse kernel applies on cpu: the pruned model runs the dense kernels; "
        "any difference is noise. pruned model: unstructured, 50.0% zeros"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes takes comma-separated integers such as 1,8"),
        (["--batch-sizes", "0"], "every batch size must be an integer in [1, 4096], got 0"),
        (["--repeats", "0"], "repeats must be an integer in [1, 1000], got 0"),
        (
            ["--kernel", "semi_structured"],
            "--kernel semi_structured cannot run here: no sparse kernel applies on cpu",
        ),
        (
            ["--checkpoint", "CKPT", "--method", "wanda"],
            "--checkpoint is measured as it is: leave out the prune and calibration flags (method)",
        ),
        (["--checkpoint", "CKPT", "--prompt-len", "200"], "exceeds the model's 128 positions"),
        (["--checkpoint", "/nonexistent/ckpt"], "'/nonexistent/ckpt' is not a registered name"),
        (["--pattern", "3:4", "--sparsity", "0.5"], "pattern prunes exactly 0.75 of the weights"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_model_dir, checkpoint, capsys, args, message
) -> None:
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    base = ["--no-progress", "speed", "--model", str(tiny_model_dir / "model"), "--device", "cpu"]
    rc = main([*base, *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("optishear: error: ")
    assert message in err
