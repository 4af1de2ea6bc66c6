"""Command-line flags generated from the config models (optishear.config), never listed by hand.

Every field becomes one flag (its `flag` extra, else its name with dashes), nested models are
flattened (`calibration.n_samples` is `--nsamples`), and the help shows the field's description
and default. Flags are read as text and validated by the model itself, so a bad value gets the
API's message; a flag left out is left out of the body, so the model's defaults apply.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from optishear.config import config_error
from optishear.config.fields import rung_text

M = TypeVar("M", bound=BaseModel)
_DEST = "config:"  # argparse dest prefix of a generated flag; the dotted field path follows


def _fields(
    model: type[BaseModel], prefix: str = "", default: BaseModel | None = None
) -> Iterator[tuple[str, FieldInfo, Any]]:
    """(dotted path, field, default value) for every leaf field, nested models flattened."""
    for name, info in model.model_fields.items():
        value = (
            getattr(default, name)
            if default is not None
            else info.get_default(call_default_factory=True)
        )
        sub = _model_type(info.annotation)
        if sub is not None:
            yield from _fields(sub, f"{prefix}{name}.", value)
        else:
            yield f"{prefix}{name}", info, value


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _choices(arg)
            if found:
                return found
    return None


def _extra(info: FieldInfo) -> Mapping[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if hasattr(value, "spec"):
        return str(value.spec())
    if isinstance(value, tuple | list):
        if value and all(hasattr(v, "spec") for v in value):
            return ";".join(v.spec() for v in value)  # genomes: a spec holds commas
        if value and all(isinstance(v, tuple) for v in value):
            return ",".join(map(rung_text, value))  # screening rungs
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    default: BaseModel | None = None,
) -> None:
    """Add one flag per (leaf) field of `model`; `prefix` nests it under a parent's field.

    `skip` names dotted paths to leave out; `aliases` adds more flag names for a path.
    """
    aliases = aliases or {}
    for path, info, value in _fields(model, "", default):
        full = f"{prefix}{path}"
        if full in skip:
            continue
        extra = _extra(info)
        name = extra.get("flag") or path.rpartition(".")[2].replace("_", "-")
        flags = [f"--{name}", *extra.get("aliases", ()), *aliases.get(full, ())]
        text = info.description or ""
        choices = _choices(info.annotation)
        if choices:
            text += f" ({', '.join(str(c) for c in choices)})"
        if info.annotation is bool:  # --x and --no-x; left out, the model's default applies
            parser.add_argument(
                *flags,
                dest=_DEST + full,
                action=argparse.BooleanOptionalAction,
                help=f"{text} (default {'on' if value else 'off'})",
            )
            continue
        required = info.is_required()
        parser.add_argument(
            *flags,
            dest=_DEST + full,
            metavar="{" + ",".join(map(str, choices)) + "}" if choices else name.upper(),
            required=required,
            help=text if required else f"{text} (default {_show(value)})",
        )


def flag_value(args: argparse.Namespace, path: str) -> Any:
    """What the generated flag of dotted `path` was given (None: left out)."""
    return vars(args).get(_DEST + path)


def config_body(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The nested body of the generated flags given under `prefix` (as text, unvalidated)."""
    body: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(_DEST + prefix) or value is None:
            continue
        *parents, leaf = dest.removeprefix(_DEST + prefix).split(".")
        node = body
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return body


def config_from_flags(
    model: type[M], args: argparse.Namespace, prefix: str = "", **overrides: Any
) -> M:
    """Validate the flags given under `prefix` (and overrides) as `model`; ConfigError."""
    body = {**config_body(args, prefix), **overrides}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise config_error(exc) from None
