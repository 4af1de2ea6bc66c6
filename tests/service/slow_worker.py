"""`optishear worker` whose every stored generation takes a while, so that a test can act
(kill it, cut its database) between two generations.

The pause is in the generation's write, not in the evaluator: a generation whose candidates
are all cached calls no evaluator, and generations would then go by faster than a test polls.

Run as a script: the kill test starts it as a real process and sends it SIGKILL.
"""

from __future__ import annotations

import sys
import time

from service.commands import main
from service.runner import search_job

_store = search_job._Persister.__call__


def _slow(self, snap):  # type: ignore[no-untyped-def]
    time.sleep(float(sys.argv[1]))
    return _store(self, snap)


if __name__ == "__main__":
    search_job._Persister.__call__ = _slow  # type: ignore[method-assign]
    sys.exit(main(["worker"]))
