"""`optishear worker` with a slowed-down evaluator, so that a test can kill it mid-search.

Run as a script: the kill test starts it as a real process and sends it SIGKILL.
"""

from __future__ import annotations

import sys
import time

from optishear.search.evaluator import InProcessEvaluator
from service.commands import main

_evaluate = InProcessEvaluator.evaluate


def _slow(self, candidates, n_samples=None, n_tokens=None):  # type: ignore[no-untyped-def]
    time.sleep(float(sys.argv[1]))
    return _evaluate(self, candidates, n_samples, n_tokens)


if __name__ == "__main__":
    InProcessEvaluator.evaluate = _slow  # type: ignore[method-assign]
    sys.exit(main(["worker"]))
