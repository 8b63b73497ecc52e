"""Decisions with their options, branches, and monitors between branches.

A :func:`decision` span names every option offered; options that are explored get a
child span of their own (:meth:`Decision.option`), and :meth:`Decision.choose` records
the choice — also the options that were *not* taken appear in the graph. A
:func:`branch` gives every span inside it (in other tasks and threads too) its
``spangraph.branch.id``. A :func:`monitor` span watches another span or branch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

from opentelemetry.trace import Span, SpanContext

from . import semconv as sc
from ._attrs import MAX_VALUE_CHARS, as_text, encodable
from ._spans import Handle, _check_attributes, _check_id, _check_name, _Options, link_to
from ._utf8 import as_stored
from .instrument import Scope
from .mapping import MAX_OPTIONS

__all__ = ["Branch", "Decision", "branch", "decision", "monitor"]


class Decision(Handle):
    """A running decision (what ``with decision(...) as d`` gives)."""

    __slots__ = ("_explored", "_reason", "_recording", "_score", "chosen", "options")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options: tuple[str, ...] = ()
        self._explored: dict[str, Handle] = {}
        self.chosen: str | None = None
        self._reason: Any = None
        self._score: float | None = None
        self._recording = self.span.is_recording()

    def _check_open(self, call: str) -> None:
        """A recorded decision's span that has ended takes no option and no choice."""
        if self._recording and not self.span.is_recording():
            raise ValueError(
                f"decision {self.name!r} has ended: call {call}() inside its with block"
            )

    def _check_offered(self, option: str) -> None:
        if option not in self.options:
            raise ValueError(
                f"option {option!r} was not offered at decision {self.name!r}; "
                f"offered: {', '.join(map(repr, self.options))}"
            )

    def option(self, name: str, **attributes: Any) -> Scope[Handle]:
        """A ``with`` block (or decorator) in which option ``name`` is explored: an
        ``option`` span, child of the current span. Raises ValueError once the
        decision has ended."""
        self._check_open("option")
        _check_name(name, "option name")
        self._check_offered(name)
        _check_attributes(attributes, "option()")

        def explored(handle: Handle) -> None:
            # the last exploration (a retried option: the attempt that counted)
            self._explored[name] = handle

        return Scope(
            _Options(
                kind=sc.KIND_OPTION,
                name=name,
                attributes=attributes,
                # entered (or called, decorated) later: after the decision ended, its
                # span could not record the option
                before_start=lambda: self._check_open("option"),
                on_enter=explored,
            )
        )

    def choose(
        self, option: str, *, reason: object = None, score: SupportsFloat | None = None
    ) -> None:
        """Record the chosen option. ``reason`` is text (another value, e.g. a model's
        structured verdict, is recorded as its JSON text); ``score`` a finite number.
        Choosing again replaces the choice (option, reason and score); the decision span
        carries the final one when it ends, with a ``chosen_option`` link to the option's
        span when it was explored. Raises ValueError once the decision has ended (its
        span can no longer record it)."""
        self._check_open("choose")
        self._check_offered(option)
        value = None if score is None else _finite(score)
        self.chosen = option
        self._reason = None if reason is None else as_text(reason)
        self._score = value

    def _finish(self, exc: BaseException | None) -> None:
        ids = tuple(self._explored[o].span_id if o in self._explored else "" for o in self.options)
        attrs: dict[str, Any] = {sc.DECISION_OPTION_SPAN_IDS: ids}
        if self.chosen is not None:
            attrs[sc.DECISION_CHOSEN] = encodable(self.chosen)  # as the options are
            if self._reason is not None:
                attrs[sc.DECISION_REASON] = self._reason
            if self._score is not None:
                attrs[sc.DECISION_SCORE] = self._score
            explored = self._explored.get(self.chosen)
            if explored is not None:
                link = link_to(explored, sc.LINK_CHOSEN_OPTION)
                self.span.add_link(link.context, link.attributes)
        self.span.set_attributes(attrs)


def _finite(score: Any) -> float:
    """``score`` as a finite float (any real number: ``Decimal``, ``Fraction``, a numpy
    float), or a ValueError."""
    if not isinstance(score, bool) and not isinstance(score, str | bytes):
        try:
            value = float(score)
        except Exception:  # (OverflowError: an int past a float's range)
            pass
        else:
            if math.isfinite(value):
                return value
    raise ValueError(f"score must be a finite number, got {score!r}")


def decision(
    name: str, /, options: Iterable[str], *, attributes: Mapping[str, Any] | None = None
) -> Scope[Decision]:
    """A decision point offering ``options``: ``with decision("route", options=[...]) as d:``
    then ``with d.option("a"): ...`` to explore one and ``d.choose("a", reason=...)``.

    Leaving a decision without a choice is allowed (``spangraph.decision.chosen`` absent).
    """
    _check_name(name, "decision name")
    if isinstance(options, str):
        raise TypeError("options must be a list of names, not a single string")
    offered = tuple(options)
    if not offered:
        raise ValueError(f"decision {name!r} needs at least one option")
    if len(offered) > MAX_OPTIONS:
        raise ValueError(
            f"decision {name!r} offers {len(offered)} options; at most {MAX_OPTIONS} are allowed"
        )
    for option in offered:
        _check_name(option, "option name")
        if len(option) > MAX_VALUE_CHARS:  # stored cut: two long names would become one
            raise ValueError(
                f"decision {name!r}: option names are at most {MAX_VALUE_CHARS} characters, "
                f"got one of {len(option)}"
            )
    if len(set(offered)) != len(offered):
        raise ValueError(f"decision {name!r} offers the same option twice: {offered!r}")
    stored: dict[str, str] = {}
    for option in offered:
        other = stored.setdefault(as_stored(option), option)
        if other is not option:
            raise ValueError(
                f"decision {name!r}: options {other!r} and {option!r} would be stored as "
                "one (a NUL or a lone surrogate is stored as U+FFFD)"
            )
    _check_attributes(attributes, "decision(attributes=)")

    def start(handle: Decision) -> None:
        handle.options = offered

    attrs = {**(attributes or {}), sc.DECISION_OPTIONS: list(offered)}
    return Scope(
        _Options(
            kind=sc.KIND_DECISION,
            name=name,
            attributes=attrs,
            handle_cls=Decision,
            on_enter=start,
            on_finish=lambda h, exc: h._finish(exc),
        )
    )


class Branch(Handle):
    """A running branch (what ``with branch(...) as b`` gives); ``b.branch_id``."""

    __slots__ = ()


def branch(
    name: str, /, *, branch_id: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Scope[Branch]:
    """A branch of a run. Every span inside it — in other asyncio tasks and threads
    started from inside it too — carries its ``spangraph.branch.id`` (a new UUIDv7
    unless one is given), except those inside a branch nested in it, which carry that
    branch's. Use as ``with``, ``async with`` or a decorator."""
    _check_name(name, "branch name")
    if branch_id is not None:
        _check_id(branch_id, "branch_id")
    _check_attributes(attributes, "branch(attributes=)")
    return Scope(
        _Options(
            kind=sc.KIND_BRANCH,
            name=name,
            attributes=dict(attributes or {}),
            branch_id=branch_id,
            handle_cls=Branch,
        )
    )


def monitor(
    target: Handle | Span | SpanContext | str,
    /,
    name: str | None = None,
    *,
    attributes: Mapping[str, Any] | None = None,
) -> Scope[Handle]:
    """A ``monitor`` span that watches ``target`` — a branch, any spangraph handle, an
    OTel span or SpanContext, or a ``handle.ref`` string — through a span link of type
    ``monitors`` (a ``MONITORS`` edge in the graph)."""
    link = link_to(target, sc.LINK_MONITORS)
    if name is None:
        label = f"monitor {target.name}" if isinstance(target, Handle) else "monitor"
    else:  # "" or 0 is no name to fall back from: refused as "  " is
        label = name
    _check_name(label, "monitor name")
    _check_attributes(attributes, "monitor(attributes=)")
    return Scope(
        _Options(kind=sc.KIND_MONITOR, name=label, attributes=dict(attributes or {}), links=(link,))
    )
