"""Typed config fields: how JSON, API bodies and command-line text become patterns, genomes,
per-block plans, screening steps and rungs, and sparsity ranges (and how they are written back).

Each is an `Annotated` type with its validator, serializer and JSON schema, used by the config
models of optishear.config; no torch here either.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from optishear.core.genome import Genome
from optishear.core.patterns import Pattern


def _pattern(value: Any) -> Pattern:
    if isinstance(value, Pattern):
        return value
    if not isinstance(value, str) or len(value) > 32:
        raise ValueError("pattern must be 'unstructured' or 'N:M' (like 2:4)")
    return Pattern.parse(value)  # ConfigError is a ValueError: pydantic reports its message


def _genome(value: Any) -> Genome:
    if isinstance(value, Genome):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Genome.from_index(value)
    if isinstance(value, str) and len(value) <= 256:
        return Genome.parse(value)
    if isinstance(value, dict) and set(value) >= {"f1", "f2", "alpha", "beta"}:
        return Genome.from_names(
            value["f1"], value["f2"], value["alpha"], value["beta"], value.get("h", "none")
        )
    raise ValueError(
        "a genome is 'f1=...,f2=...,alpha=...,beta=...[,h=...]', its index or its names"
    )


def _genomes(value: Any) -> tuple[Genome, ...]:
    if isinstance(value, str):  # the command line's 'spec;spec' (a spec holds commas)
        value = [] if value.strip().lower() in ("", "none") else value.split(";")
    if not isinstance(value, list | tuple) or len(value) > 64:
        raise ValueError("expected at most 64 genomes, separated by ';' on the command line")
    return tuple(_genome(v) for v in value)


def _block_sparsity(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):  # the command line's comma-separated list
        try:
            value = [float(x) for x in value.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"expected comma-separated numbers, got {value!r}") from None
    if not isinstance(value, list | tuple) or len(value) > 4096:
        raise ValueError("expected a list of at most 4096 per-block sparsities")
    out = []
    for r in value:
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
            raise ValueError(f"a per-block sparsity must be a number in [0, 1), got {r!r}")
        out.append(float(r))
    return tuple(out)


def _screen_steps(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):  # the command line's "2" or "2,4"
        try:
            value = [int(x) for x in value.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"expected comma-separated sequence counts, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= 8:
        raise ValueError("expected 1 to 8 screening sequence counts")
    out = []
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
            raise ValueError(f"a screening sequence count is an integer in [1, 1024], got {n!r}")
        out.append(n)
    if out != sorted(set(out)):
        raise ValueError("screening steps must grow: each step uses more sequences than the last")
    return tuple(out)


LAYER_RUNG = (0, 0)  # a rung scored by the layer-wise proxy (optishear.search.layer_proxy)


def _screen_rungs(value: Any) -> tuple[tuple[int, int], ...]:
    """'layers,1x64,2x256' (sequences x tokens per rung; 'layers', first only: the layer-wise
    proxy), a list of such or of pairs; 'off': none."""
    if isinstance(value, str):
        text = value.replace(" ", "").lower()
        value = [] if text in ("", "off", "none") else text.split(",")
    if not isinstance(value, list | tuple) or len(value) > 8:
        raise ValueError("expected at most 8 screening rungs like 'layers,1x64,2x256', or 'off'")
    rungs = []
    for rung in value:
        if rung == "layers" or (isinstance(rung, list | tuple) and tuple(rung) == LAYER_RUNG):
            if rungs:
                raise ValueError("the 'layers' rung (the layer-wise proxy) can only come first")
            rungs.append(LAYER_RUNG)
            continue
        try:
            if isinstance(rung, str):
                n, t = (int(x) for x in rung.split("x"))
            else:
                n, t = rung
            if isinstance(n, bool) or isinstance(t, bool):
                raise TypeError
            n, t = int(n), int(t)
        except (TypeError, ValueError):
            raise ValueError(
                f"a screening rung is 'layers' or 'SEQUENCESxTOKENS' like '2x256', got {rung!r}"
            ) from None
        if not (1 <= n <= 1024 and 1 <= t <= 8192):
            raise ValueError(f"a rung has 1-1024 sequences of 1-8192 tokens, got {n}x{t}")
        rungs.append((n, t))
    if any(a[0] * a[1] >= b[0] * b[1] for a, b in itertools.pairwise(rungs)):
        raise ValueError("screening rungs must grow: each scores more tokens than the last")
    if rungs == [LAYER_RUNG]:
        raise ValueError("the 'layers' rung only promotes: a full-fidelity rung must follow it")
    return tuple(rungs)


def rung_text(rung: tuple[int, int]) -> str:
    return "layers" if rung == LAYER_RUNG else f"{rung[0]}x{rung[1]}"


def _front_range(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        try:
            value = [float(x) for x in value.replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"expected 'low,high', got {value!r}") from None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
    ):
        raise ValueError("a sparsity range is two numbers, low and high (like 0.4,0.7)")
    low, high = float(value[0]), float(value[1])
    if not 0 <= low < high < 1:
        raise ValueError(f"a sparsity range needs 0 <= low < high < 1, got {low:g}, {high:g}")
    return low, high


ScreenSteps = Annotated[
    tuple[int, ...],
    PlainValidator(_screen_steps),
    PlainSerializer(list, return_type=list),
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]}
    ),
]
ScreenRungs = Annotated[
    tuple[tuple[int, int], ...],
    PlainValidator(_screen_rungs),
    PlainSerializer(lambda r: ",".join(map(rung_text, r)) or "off", return_type=str),
    WithJsonSchema({"type": "string", "examples": ["1x64,2x256", "layers,1x32", "off"]}),
]
FrontRange = Annotated[
    tuple[float, float],
    PlainValidator(_front_range),
    PlainSerializer(list, return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}),
]
PatternField = Annotated[
    Pattern,
    PlainValidator(_pattern),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["unstructured", "2:4", "4:8"]}),
]
GenomeField = Annotated[
    Genome,
    PlainValidator(_genome),
    PlainSerializer(lambda g: g.spec(), return_type=str),
    WithJsonSchema({"type": "string", "examples": ["f1=sqrt,f2=identity,alpha=one,beta=one"]}),
]
Genomes = Annotated[
    tuple[Genome, ...],
    PlainValidator(_genomes),
    PlainSerializer(lambda gs: [g.spec() for g in gs], return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "string"}, "examples": [["f1=sqrt,h=rho"]]}),
]
BlockSparsity = Annotated[
    tuple[float, ...],
    PlainValidator(_block_sparsity),
    PlainSerializer(list, return_type=list),
    WithJsonSchema({"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}),
]
