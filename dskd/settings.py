"""How a setting describes itself: a dataclass field whose metadata carries its help line, its allowed values or
range, and how its type reads as a command-line flag. Shared by the run settings (`dskd.run.config`, `python -m dskd
train`) and the notebooks' parameters (`dskd.repro.experiment_config`, `./run_all.sh`), so a field reads, and refuses
a value, the same way in both: the flag's parser and the dataclass's validation call the same `check_value`."""

from __future__ import annotations

import argparse
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import Field, field, fields, is_dataclass
from typing import Any

from .errors import DskdError

REQUIRED: Any = object()  # the default of a field that has none: a stored record must give it


def setting(default: Any = None, help: str = "", choices: Sequence | Callable[[], Sequence] | None = None, *,
            factory: Callable[[], Any] | None = None, cli: bool = True, at_least: float | None = None,
            above: float | None = None, at_most: float | None = None, below: float | None = None,
            multiple_of: int | None = None, why: str = "", former: str | None = None) -> Any:
    """A dataclass field that describes itself: its help line, its allowed values (`choices`) or its range
    (`at_least` / `above` / `at_most` / `below`, `multiple_of`, and `why` the range is what it is) travel in its
    metadata. Numbers must be finite. `default=REQUIRED`: no default, and a record without it is refused. `former`:
    the field's earlier name, still read from stored records and accepted as a flag."""
    meta = {"help": help, "choices": choices, "cli": cli, "at_least": at_least, "above": above,
            "at_most": at_most, "below": below, "multiple_of": multiple_of, "why": why,
            "required": default is REQUIRED, "former": former}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if default is REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(f: Field) -> tuple | None:
    c = f.metadata.get("choices")
    return None if c is None else tuple(c() if callable(c) else c)


def _kinds(annotation: Any) -> tuple[Any, bool]:
    """(the type a value must have, None allowed) of a field's type hint; a tuple or list gives its element type."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    return annotation, optional


def _range_problem(f: Field, number: float) -> str | None:
    m = f.metadata
    try:
        value = float(number)
    except OverflowError:  # a whole number beyond any float
        return "must be a finite number"
    if not math.isfinite(value):
        return "must be a finite number"
    for key, fails, words in (("at_least", lambda b: value < b, "at least"), ("above", lambda b: value <= b, "above"),
                              ("at_most", lambda b: value > b, "at most"), ("below", lambda b: value >= b, "below")):
        if m.get(key) is not None and fails(m[key]):
            return f"must be {words} {m[key]:g}"
    if m.get("multiple_of") and value % m["multiple_of"]:
        return f"must be a multiple of {m['multiple_of']}"
    return None


def check_value(f: Field, value: Any, annotation: Any, name: str | None = None) -> None:
    """One line when `value` does not fit the field `f` (its type, choices, finiteness and range)."""
    name = name or f.name
    kind, optional = _kinds(annotation)
    if value is None:
        if optional or f.default is None:
            return
        raise DskdError(f"{name} is missing (None); it needs a value")
    origin = typing.get_origin(kind)
    items = value if origin in (tuple, list) else [value]
    element = typing.get_args(kind)[0] if origin in (tuple, list) and typing.get_args(kind) else kind
    if origin in (tuple, list) and not isinstance(value, (tuple, list)):
        raise DskdError(f"{name}={value!r} must be a list of {getattr(element, '__name__', element)}")
    for item in items:
        problem = type_problem(item, element)
        if problem is None and element in (int, float):
            problem = _range_problem(f, item)
        if problem is not None:
            why = f" ({f.metadata['why']})" if f.metadata.get("why") else ""
            raise DskdError(f"{name}={item!r} {problem}{why}")
    allowed = choices_of(f)
    if allowed is not None and value not in allowed:
        raise DskdError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def flag_names(name: str, f: Field) -> list[str]:
    """A setting's command-line flag, and its former name's."""
    former = f.metadata.get("former")
    return ["--" + name.replace("_", "-")] + ([f"--{former.replace('_', '-')}"] if former else [])


def field_named(cls: type, name: str) -> Field:
    """A settings dataclass's field by name: where another command takes the same value, it takes its range too."""
    return next(f for f in fields(cls) if f.name == name)


def type_problem(value: Any, kind: Any) -> str | None:
    """What is wrong with `value` as a `kind` (int, float, bool, str, a list of one of them, or any other class),
    or None."""
    if typing.get_origin(kind) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        return next((p for v in value if (p := type_problem(v, typing.get_args(kind)[0]))), None)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return "must be a whole number"
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return "must be a number"
    if kind is bool and not isinstance(value, bool):
        return "must be true or false"
    if kind is str and not isinstance(value, (str, os.PathLike)):
        return "must be text"
    if isinstance(kind, type) and kind not in (int, float, bool, str) and not isinstance(value, kind):
        return f"must be a {kind.__name__}"
    return None


def check_values(obj: Any) -> None:
    """Every field of a settings dataclass checked by `check_value`; nested settings dataclasses are their own
    owners' to check."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not is_dataclass(value):
            check_value(f, value, hints[f.name])


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


def checked_flag(f: Field, annotation: Any, convert: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse `type` that converts one flag value and checks it as the field's validation would, so that a flag
    is refused with the same line as the same value given any other way."""
    kind, _ = _kinds(annotation)
    element_hint = typing.get_args(kind)[0] if typing.get_origin(kind) in (tuple, list) else kind

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r} {type_problem(text, element_hint) or 'is invalid'}") \
                from None
        try:
            check_value(f, value, element_hint, name)
        except DskdError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
