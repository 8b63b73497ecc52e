"""Conditional edges as ``decision`` spans.

A conditional edge (``add_conditional_edges``) runs as a writer of its source node: a
``RunnableCallable`` around ``BranchSpec._route``. Wrapping ``RunnableCallable.invoke`` /
``ainvoke`` for those opens the decision span before the routing function runs (so a
router that calls a model nests its calls under the decision); ``BranchSpec._finish``
sees the routing function's result and records the choice. The options are the edge's
possible targets (its ``path_map``, or the ``Literal`` its function returns); the chosen
one is the node that runs next, chosen without exploring, so the others stay unexplored
options in the graph. Should the first hook not fire (another LangGraph version), the
second one alone records an instant decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from .. import semconv as sc
from .._spans import _Frame, _Options
from .._wrappers import await_in_frame, call_in_frame
from ..branching import Decision

_log = logging.getLogger("spangraph.instrumentation.langgraph")

_DECISION: Final = otel_context.create_key("spangraph-langgraph-decision")
"""Context key: ``(BranchSpec, Decision)`` of the routing that is running."""

DESTINATIONS: Final = "langgraph.destinations"
SOURCE: Final = "langgraph.node"
RESULT_REPR_CHARS: Final = 200

_branch_types: tuple[type, ...] = ()


def set_branch_types(types: tuple[type, ...]) -> None:
    global _branch_types
    _branch_types = types


def _spec_of(fn: Any) -> Any:
    spec = getattr(fn, "__self__", None)
    return spec if _branch_types and isinstance(spec, _branch_types) else None


def _unique(names: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(n) for n in names))


def _open(spec: Any, config: Any) -> _Frame | None:
    try:
        path = getattr(spec, "path", None)
        name = str(getattr(path, "name", None) or "condition")
        ends = getattr(spec, "ends", None)
        options = _unique(ends.values()) if ends else ()
        metadata = (config.get("metadata") if isinstance(config, dict) else None) or {}
        attrs: dict[str, Any] = {SOURCE: metadata.get("langgraph_node")}
        if options:
            attrs[sc.DECISION_OPTIONS] = list(options)
        opts = _Options(
            kind=sc.KIND_DECISION,
            name=name,
            attributes=attrs,
            handle_cls=Decision,
            on_finish=lambda handle, exc: handle._finish(exc),
        )
        frame = _Frame(opts, name, None, ())
        frame.handle.options = options  # type: ignore[attr-defined]
        frame.ctx = otel_context.set_value(_DECISION, (spec, frame.handle), frame.ctx)
        return frame
    except Exception:
        _log.debug("spangraph: could not start a LangGraph decision span", exc_info=True)
        return None


def _config_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("config")


def wrap_callable_invoke(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    spec = _spec_of(getattr(instance, "func", None))
    if spec is None:
        return wrapped(*args, **kwargs)
    frame = _open(spec, _config_arg(args, kwargs))
    return call_in_frame(frame, lambda: wrapped(*args, **kwargs))


def wrap_callable_ainvoke(
    wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    spec = _spec_of(getattr(instance, "afunc", None)) or _spec_of(getattr(instance, "func", None))
    if spec is None:
        return wrapped(*args, **kwargs)

    return await_in_frame(
        lambda: _open(spec, _config_arg(args, kwargs)), lambda: wrapped(*args, **kwargs)
    )


def _targets(spec: Any, result: Any) -> tuple[list[str], bool]:
    """The node each destination goes to, and whether any was a ``Send``."""
    from langgraph.types import Send

    results = result if isinstance(result, list | tuple) else [result]
    ends = getattr(spec, "ends", None)
    targets, sent = [], False
    for r in results:
        if isinstance(r, Send):
            targets.append(str(r.node))
            sent = True
        elif ends:
            targets.append(str(ends.get(r, r)))
        else:
            targets.append(str(r))
    return targets, sent


def _choose(handle: Decision, spec: Any, result: Any) -> None:
    targets, sent = _targets(spec, result)
    chosen = _unique(targets)
    offered = tuple(handle.options) + tuple(t for t in chosen if t not in handle.options)
    if offered != tuple(handle.options):
        handle.options = offered
        handle.span.set_attribute(sc.DECISION_OPTIONS, list(offered))
    handle.set(**{DESTINATIONS: targets})
    if len(chosen) == 1:
        reason = None
        if not sent:
            path = getattr(getattr(spec, "path", None), "name", None) or "condition"
            reason = f"{path} returned {result!r}"[:RESULT_REPR_CHARS]
        handle.choose(chosen[0], reason=reason)


def wrap_branch_finish(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    # BranchSpec._finish(self, writer, input, result, config)
    result = args[2] if len(args) > 2 else kwargs.get("result")
    entry = otel_context.get_value(_DECISION)
    if (
        isinstance(entry, tuple)
        and entry[0] is instance
        and entry[1].span is trace.get_current_span()
    ):
        out = wrapped(*args, **kwargs)
        _record(entry[1], instance, result)
        return out
    # The routing ran without the first hook: record an instant decision here.
    frame = _open(instance, args[3] if len(args) > 3 else kwargs.get("config"))
    if frame is None:
        return wrapped(*args, **kwargs)
    frame.attach()
    try:
        out = wrapped(*args, **kwargs)
    except BaseException as exc:
        frame.finish(exc)
        raise
    finally:
        frame.detach()
    _record(frame.handle, instance, result)  # type: ignore[arg-type]
    frame.finish(None)
    return out


def _record(handle: Decision, spec: Any, result: Any) -> None:
    try:
        _choose(handle, spec, result)
    except Exception:
        _log.debug("spangraph: could not record a LangGraph decision", exc_info=True)
