"""Settings as data: a dataclass field carries its flag's help, choices and group, and the
command line is generated from the fields, so a setting is written down once.

``option(default, "help", choices=...)`` declares a field; ``add_options(parser, Config)``
adds ``--name-with-dashes`` for every field, with ``argparse.SUPPRESS`` as the default so that
only the flags a user gave reach the parsed namespace (what a resumed run must tell apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence


def option(
    default=dataclasses.MISSING,
    help: str = "",
    *,
    factory=None,
    choices: Sequence | None = None,
    group: str | None = None,
    metavar: str | None = None,
    flag: bool = True,
):
    """A dataclass field with command-line metadata. ``flag=False``: settable from YAML only."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "group": group,
        "metavar": metavar,
        "flag": flag,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _scalar(tp):
    """``int | None`` -> int; ``list[float]`` -> (list, float)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin is list:
        return list, typing.get_args(tp)[0]
    return tp, None


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return " (default: on)" if value else ""
    if isinstance(value, list):
        value = " ".join(map(str, value))
    return f" (default: {value})"


def add_options(
    parser: argparse.ArgumentParser,
    config_cls,
    only: Sequence[str] | None = None,
    suppress: bool = True,
) -> None:
    """One flag per field of ``config_cls`` (in field order; ``only`` these when given), in
    argument groups named by each field's ``group``. ``suppress``: a flag not given leaves no
    attribute (so the caller sees what was given); otherwise it gets the field's default."""
    hints = typing.get_type_hints(config_cls)
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("flag", False) or (only is not None and f.name not in only):
            continue
        name = meta.get("group") or "options"
        if name not in made:
            made[name] = parser.add_argument_group(name)
        kind, item = _scalar(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw: dict = {"default": argparse.SUPPRESS if suppress else default, "dest": f.name}
        text = meta.get("help", "")
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kw.update(nargs="+", type=item)
        elif kind is dict:
            kw.update(nargs="+", type=str)
        else:
            kw["type"] = kind
        kw["help"] = (text + _default_text(f)).strip() or None
        made[name].add_argument(flag_name(f.name), **kw)


_KIND_WORDS = {
    bool: "True or False",
    int: "a whole number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def _optional(tp) -> bool:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return type(None) in typing.get_args(tp)
    return False


def _coerce(kind, value):
    """``value`` as ``kind`` when it is one (an int is a float; a tuple a list; a path a
    string), else raise ``TypeError``."""
    import numbers
    import operator
    import os

    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if kind is int:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # numpy integers too; a float is refused
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError
        return float(value)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError
    if kind is dict:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)  # KEY=VALUE items, parsed by the setting's own reader
        raise TypeError
    return value


def check_types(config_cls, values: dict) -> dict:
    """``values`` (setting name -> value, from YAML or a Python call) checked against the
    types of ``config_cls``'s fields and made exactly those types (an int where a float is
    declared, a tuple where a list, a path where a string); a value of another type is a
    ``ConfigError`` naming the setting (its flag), before anything compares or uses it."""
    from .errors import ConfigError

    hints = typing.get_type_hints(config_cls)
    out = dict(values)
    for name, value in values.items():
        if name not in hints:
            continue
        tp = hints[name]
        if value is None:
            if _optional(tp):
                continue
            kind, _ = _scalar(tp)
            raise ConfigError(f"{flag_name(name)} must be {_KIND_WORDS.get(kind, kind)}, not None")
        kind, item = _scalar(tp)
        try:
            if kind is list:
                if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                    raise TypeError
                out[name] = [_coerce(item, v) for v in value]
            else:
                out[name] = _coerce(kind, value)
        except TypeError:
            what = _KIND_WORDS.get(kind, getattr(kind, "__name__", str(kind)))
            if kind is list:
                what = f"a list of {_KIND_WORDS.get(item, item).removeprefix('a ')}s"
            raise ConfigError(
                f"{flag_name(name)} must be {what}; {value!r} is a {type(value).__name__}"
            ) from None
    return out
