"""Command-line flags from typed dataclass fields: shared by `python -m dskd train` (the run settings) and
`./run_all.sh` (the notebooks' parameters), so that a field's type reads as the same flag in both."""

from __future__ import annotations

import types
import typing
from typing import Any


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
