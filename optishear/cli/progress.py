"""tqdm progress bars keyed by task description, for the library's progress callbacks."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class Bars:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, tqdm[Any]] = {}

    def steps(self, done: int, total: int, what: str) -> None:
        self._update(what, done, total, unit="block")

    def bytes(self, what: str, done: int, total: int | None) -> None:
        self._update(what, done, total, unit="B")

    def _update(self, what: str, done: int, total: int | None, *, unit: str) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(what)
        if bar is None:
            bar = self.bars[what] = tqdm(
                total=total, desc=what, unit=unit, unit_scale=unit == "B", leave=False
            )
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            del self.bars[what]
