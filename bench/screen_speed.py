"""Time the fitness engine's screening evaluations on the bundled model, to compare two
checkouts side by side (PYTHONPATH=<checkout> for each, in one session).

24 first-order genome classes, each pruned at 50% and scored on the first 32 tokens of one of
16 x 128 calibration sequences (the demo's screen rung), on one thread; prints the set-up time,
the time per evaluation and the sum of the errors (equal errors: the same computation).

    PYTHONPATH=/path/to/checkout .venv/bin/python bench/screen_speed.py
"""

import time

import torch

import optishear
from optishear.config import SearchConfig

try:  # the layout since issue 28
    from optishear.core.genome import canonical_genomes
    from optishear.data.text import sample_calibration
    from optishear.model.hf import load_model
    from optishear.recipe.candidates import Candidate
    from optishear.search.engine_spec import engine_for
except ImportError:  # the flat layout before it, for the side-by-side comparison
    from optishear.candidates import Candidate  # type: ignore[no-redef]
    from optishear.genome import canonical_genomes  # type: ignore[no-redef]
    from optishear.hf import load_model  # type: ignore[no-redef]

    from optishear.data import sample_calibration  # type: ignore[no-redef]
    from optishear.search.fitness import engine_for  # type: ignore[no-redef]


def main() -> None:
    torch.set_num_threads(1)
    config = SearchConfig(
        model="smollm2-135m",
        sparsity=0.5,
        calibration={"n_samples": 16, "seq_len": 128},
        fitness_samples=4,
        metric_space="first_order",
    )
    model, tokenizer, _ = load_model("smollm2-135m")
    ids = sample_calibration(tokenizer, config.calibration)
    start = time.perf_counter()
    engine = engine_for(model, ids, config)
    setup = time.perf_counter() - start
    plan = (0.5,) * engine.n_blocks
    genomes = canonical_genomes(second_order=False)[:24]
    start = time.perf_counter()
    errors = [engine.evaluate(Candidate(g, plan), 1, n_tokens=32).error for g in genomes]
    seconds = time.perf_counter() - start
    print(
        f"{optishear.__file__}: set-up {setup:.1f} s, {len(genomes)} screen evaluations "
        f"{seconds:.1f} s ({seconds / len(genomes):.2f} s each), sum of errors {sum(errors):.6f}"
    )


if __name__ == "__main__":
    main()
