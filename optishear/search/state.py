"""The search state as plain, versioned JSON: what resuming needs, and nothing that runs.

A state holds the config it belongs to, the finished stages' outcomes, the evaluation cache,
the counters and history, and for the stage in progress every generation's asked genes and
told objectives. Resuming rebuilds the stage's NSGA-III from its seed and replays those
tells (no evaluation is repeated), so it continues exactly where an uninterrupted run would:
pymoo's own objects, random generator included, are never stored. Loading is `json.loads`
and type checks; a state of another format, version or search is refused with a message.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from optishear.core.errors import ConfigError, OptiShearError
from optishear.core.genome import Genome
from optishear.recipe.candidates import Candidate, Evaluation, Scored
from optishear.search.results import StageOutcome

FORMAT = "optishear.search-state"
VERSION = 1
Key = tuple[int, tuple[float, ...]]


class SearchStateError(OptiShearError):
    """A stored search state cannot be read: damaged, of another format or version."""


@dataclass
class Tell:
    """One completed generation of the stage in progress: genes asked, objectives told."""

    X: list[list[float]]
    F: list[list[float]]


@dataclass
class SearchState:
    """Everything needed to continue a search after the last completed generation."""

    config: dict[str, Any]  # SearchConfig.resume_identity() of the search it belongs to
    stage_index: int = 0
    tells: list[Tell] = field(default_factory=list)  # of the stage in progress
    full: dict[Key, Evaluation] = field(default_factory=dict)
    # (key, sequences, tokens per sequence; 0: all)
    low: dict[tuple[Key, int, int], Evaluation] = field(default_factory=dict)
    estimated: dict[Key, Evaluation] = field(default_factory=dict)  # not promoted
    outcomes: list[StageOutcome] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    cost: float = 0.0  # evaluations in full-evaluation equivalents
    cache_hits: int = 0
    elapsed: float = 0.0

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "pymoo": _pymoo_version(),
            "config": self.config,
            "stage_index": self.stage_index,
            "tells": [{"X": t.X, "F": t.F} for t in self.tells],
            "cache": {
                "full": [[_key_out(k), _eval_out(e)] for k, e in self.full.items()],
                # a screening entry's sequences and tokens are its evaluation's
                "low": [[_key_out(k), _eval_out(e)] for (k, _, _), e in self.low.items()],
                "estimated": [[_key_out(k), _eval_out(e)] for k, e in self.estimated.items()],
            },
            "outcomes": [
                {
                    "stage": o.stage,
                    "front": [_scored_out(s) for s in o.front],
                    "population": [_scored_out(s) for s in o.population],
                    "baseline": _cand_out(o.baseline) if o.baseline else None,
                }
                for o in self.outcomes
            ],
            "history": self.history,
            "evaluations": self.evaluations,
            "cost": self.cost,
            "cache_hits": self.cache_hits,
            "elapsed": self.elapsed,
        }
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "the search state") -> SearchState:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if raw[:1] == b"\x80":
            raise SearchStateError(
                f"{where} was saved in the old pickle format, which OptiShear no longer loads "
                "(loading it could run code): start the search again"
            )
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SearchStateError(f"{where} is not a search state (invalid JSON: {exc})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise SearchStateError(f"{where} is not an OptiShear search state")
        if obj.get("version") != VERSION:
            raise SearchStateError(
                f"{where} has state format version {obj.get('version')!r}; this OptiShear reads "
                f"version {VERSION}: resume it with the version that wrote it, or start again"
            )
        try:
            return cls._parse(obj)
        except (KeyError, TypeError, ValueError, IndexError, ConfigError) as exc:
            raise SearchStateError(f"{where} is damaged: {type(exc).__name__}: {exc}") from None

    @classmethod
    def _parse(cls, obj: dict[str, Any]) -> SearchState:
        caches = obj["cache"]
        state = cls(
            config=_dict(obj["config"]),
            stage_index=_int(obj["stage_index"]),
            tells=[Tell(_matrix(t["X"]), _matrix(t["F"])) for t in obj["tells"]],
            outcomes=[
                StageOutcome(
                    _str(o["stage"]),
                    [_scored_in(s) for s in o["front"]],
                    tuple(_scored_in(s) for s in o["population"]),
                    _cand_in(o["baseline"]) if o["baseline"] is not None else None,
                )
                for o in obj["outcomes"]
            ],
            history=[_dict(h) for h in obj["history"]],
            evaluations=_int(obj["evaluations"]),
            # states written before multi-step screening counted every evaluation as one
            cost=_float(obj.get("cost", obj["evaluations"])),
            cache_hits=_int(obj["cache_hits"]),
            elapsed=_float(obj["elapsed"]),
        )
        if state.stage_index != len(state.outcomes):  # a stage's outcome is kept as it ends
            raise ValueError(
                f"stage index {state.stage_index} with {len(state.outcomes)} finished stages"
            )
        for name in ("full", "estimated"):
            getattr(state, name).update((_key_in(k), _eval_in(e)) for k, e in caches[name])
        for k, e in caches["low"]:
            low = _eval_in(e)
            state.low[(_key_in(k), low.n_samples, low.n_tokens)] = low
        return state

    def check_config(self, config: dict[str, Any], where: str) -> None:
        if _with_legacy(self.config) != config:
            raise ConfigError(
                f"{where} holds the state of a different search; use the same settings or "
                "another folder (a state saved before validation sequences existed resumes "
                "with --validation-share 0)"
            )


# Settings added since states were first saved, with the values that give the behaviour a
# state saved without them had: it scored candidates on calibration sequences, with genome
# masks in its layer database.
_LEGACY = {("calibration", "validation_share"): 0.0, ("allocation", "masks"): "genome"}


def _with_legacy(stored: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(stored)
    for (group, key), value in _LEGACY.items():
        if isinstance(out.get(group), dict):
            out[group].setdefault(key, value)
    return out


def replay_mismatch(where: str, generation: int) -> SearchStateError:
    return SearchStateError(
        f"{where} does not replay under pymoo {_pymoo_version()} (generation {generation} asked "
        "for other candidates than were stored): resume it with the pymoo that wrote it, or "
        "start again"
    )


def _pymoo_version() -> str:
    return version("pymoo")


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeError(f"expected an object, got {type(v).__name__}")
    return v


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TypeError(f"expected a finite number, got {v!r}")
    return float(v)


def _floats(v: Any) -> tuple[float, ...]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of numbers, got {type(v).__name__}")
    return tuple(_float(x) for x in v)


def _matrix(v: Any) -> list[list[float]]:
    if not isinstance(v, list):
        raise TypeError("expected a list of rows")
    rows = [list(_floats(row)) for row in v]
    if len({len(row) for row in rows}) > 1:
        raise ValueError("expected rows of equal length")
    return rows


def _key_out(k: Key) -> list[Any]:
    return [k[0], list(k[1])]


def _key_in(v: Any) -> Key:
    return _int(v[0]), _floats(v[1])


def _eval_out(e: Evaluation) -> list[Any]:
    out = [e.error, e.sparsity, e.n_samples, e.seconds]
    return [*out, e.n_tokens] if e.n_tokens else out  # states before token screens had 4


def _eval_in(v: Any) -> Evaluation:
    error, sparsity, n_samples, seconds, *rest = v
    if len(rest) > 1:
        raise ValueError(f"an evaluation has 4 or 5 entries, got {len(v)}")
    tokens = _int(rest[0]) if rest else 0
    return Evaluation(_float(error), _float(sparsity), _int(n_samples), _float(seconds), tokens)


def _cand_out(c: Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {"genome": c.genome.index, "block_sparsity": list(c.block_sparsity)}
    if c.layer_sparsity:
        out["layer_sparsity"] = list(c.layer_sparsity)
    return out


def _cand_in(v: Any) -> Candidate:
    return Candidate(
        Genome.from_index(_int(v["genome"])),
        _floats(v["block_sparsity"]),
        _floats(v.get("layer_sparsity", [])),
    )


def _scored_out(s: Scored) -> dict[str, Any]:
    return {
        "candidate": _cand_out(s.candidate),
        "evaluation": _eval_out(s.evaluation),
        "gap": s.gap,
        "name": s.name,
    }


def _scored_in(v: Any) -> Scored:
    name = v["name"]
    return Scored(
        _cand_in(v["candidate"]),
        _eval_in(v["evaluation"]),
        _float(v["gap"]),
        _str(name) if name is not None else None,
    )
