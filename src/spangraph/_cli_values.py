"""Values given on the command line: ``query cypher``'s parameters (``-p NAME=TEXT``,
``--param-json NAME=JSON``) and the checked numbers of other options."""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from . import queries
from ._prune import AGE_TEXT, parse_age

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _NotFinite(ValueError):
    """NaN or an infinity in a ``--param-json`` value."""


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(f"{name}: the stores take finite numbers only")


def json_value(text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except _NotFinite:
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    _check_json_numbers(value)
    return value


_INT64 = range(-(2**63), 2**63)


def _check_json_numbers(value: Any) -> None:
    """Refuse what the stores would round or reject: numbers out of the 64-bit range."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is int and item not in _INT64:
            raise ValueError(f"{item} is out of the 64-bit integer range")
        if type(item) is float and not math.isfinite(item):
            raise ValueError("a number out of the 64-bit float range")
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())


def param(convert: Any) -> Any:
    """An argparse ``type`` for ``NAME=VALUE``: ``(NAME, convert(VALUE))``."""

    def parse(text: str) -> tuple[str, Any]:
        name, eq, value = text.partition("=")
        if not eq or not _PARAM_NAME.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"must be NAME=VALUE with NAME a Cypher parameter name, got {text!r}"
            )
        try:
            return name, convert(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from None

    return parse


def parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in [*args.param, *args.param_json]:
        if name in params:
            raise ValueError(f"parameter {name} given twice")
        params[name] = value
    return params


def checked(convert: Any, ok: Any, what: str) -> Any:
    """An argparse ``type``: ``convert(text)`` when ``ok`` of it, else a usage error
    saying the value must be ``what``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


MAX_LIMIT = queries.MAX_LIMIT
MAX_AGE_S = queries.MAX_AGE_S
count = checked(int, lambda v: 1 <= v <= MAX_LIMIT, f"a whole number from 1 to {MAX_LIMIT}")
seconds = checked(
    float,
    lambda v: math.isfinite(v) and 0 <= v <= MAX_AGE_S,
    f"a number of seconds from 0 to {MAX_AGE_S} (100 years)",
)

duration = checked(parse_age, lambda v: True, AGE_TEXT)
"""An age: seconds, or a number with a unit (``30d``); see :func:`spangraph._prune.parse_age`."""
