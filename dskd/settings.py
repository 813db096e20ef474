"""How a setting describes itself: a dataclass field whose metadata carries its help line and allowed values, and
how its type reads as a command-line flag. Shared by the run settings (`dskd.run.config`, `python -m dskd train`) and
the notebooks' parameters (`dskd.repro.experiment_config`, `./run_all.sh`), so a field reads the same in both."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import Field, field, fields
from typing import Any

from .errors import DskdError


def setting(default: Any = None, help: str = "", choices: Sequence | Callable[[], Sequence] | None = None, *,
            factory: Callable[[], Any] | None = None, cli: bool = True) -> Any:
    """A dataclass field that describes itself: its help line and allowed values travel in its metadata."""
    meta = {"help": help, "choices": choices, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(f: Field) -> tuple | None:
    c = f.metadata.get("choices")
    return None if c is None else tuple(c() if callable(c) else c)


def check_choices(obj: Any) -> None:
    for f in fields(obj):
        allowed = choices_of(f)
        value = getattr(obj, f.name)
        if allowed is not None and value not in allowed:
            raise DskdError(f"{f.name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def flag_type(annotation: Any, default: Any) -> tuple[Any, int | str | None]:
    """(converter, nargs) of the command-line flag for a field's type hint: `X | None` is a flag of type X, a tuple
    takes as many values as its default has, a list one or more."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return args[0], len(default)
    if origin is list:
        return args[0], "+"
    return annotation, None
