"""Write the smoke test's inputs into OUT (default /data): a tiny random Llama with its
tokenizer (tests/tiny_models.py, as the service tests use) and two word-text files.

    python make-tiny-model.py [OUT]     # needs the repository's tests/ on PYTHONPATH
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.tiny_models import build_tiny, tiny_tokenizer, word_text


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/data")
    model = build_tiny("llama")
    model.save_pretrained(out / "tiny-llama")
    tiny_tokenizer().save_pretrained(out / "tiny-llama")
    (out / "calib.txt").write_text(word_text(3000, seed=1))
    (out / "eval.txt").write_text(word_text(2000, seed=2))
    sys.stdout.write(f"tiny model and texts in {out}: {sorted(p.name for p in out.iterdir())}\n")


if __name__ == "__main__":
    main()
