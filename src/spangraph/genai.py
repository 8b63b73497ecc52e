"""LLM and tool calls as GenAI spans, with streamed tokens sent live only.

``llm(...)`` follows OpenTelemetry's GenAI conventions (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.provider.name``, ``gen_ai.usage.*``). Tokens streamed
with :meth:`LLMCall.token` go to live subscribers as ``token`` events and are never
written to the graph; the complete message is recorded once, as ``llm.complete`` — stream
tokens, persist complete messages.

Content: the message, streamed tokens' text, a tool's arguments and result are recorded
unless OpenTelemetry's GenAI switch ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
is set to ``false`` (read once, at the first call; see :func:`capture_content_from_env`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import operator
import os
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from types import CoroutineType
from typing import Any, Final, TypeVar, overload

from opentelemetry import trace

from . import semconv as sc
from ._aio import is_cancellation
from ._attrs import clean, clean_value, safe_str, truncate
from ._spans import (
    Handle,
    _add_event,
    _check_attributes,
    _check_name,
    _default_name,
    _Options,
    clean_exit,
)
from .instrument import Scope, _code_of
from .processors.live import emit_event

_log = logging.getLogger(__name__)

__all__ = ["LLMCall", "ToolCall", "llm", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""OpenTelemetry's GenAI content switch: ``false`` (or ``0``, ``no``, ``off``,
``no_content``) leaves content out; unset or anything else keeps it."""


def capture_content_from_env() -> bool:
    """Whether :data:`CAPTURE_CONTENT_ENV` lets content be recorded (it does unless it is
    set to false)."""
    value = os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower()
    return value not in ("false", "0", "no", "off", "no_content")


_capture_content: bool | None = None
"""Whether llm() and tool() record content: read from the environment at the first call
that needs it (``None`` until then: set back to ``None``, it is read again)."""


def _capturing() -> bool:
    global _capture_content
    capture = _capture_content
    if capture is None:
        capture = _capture_content = capture_content_from_env()
    return capture


_MAX_TOKENS = 2**63 - 1
"""The largest token count an OTLP attribute (a signed 64-bit int) holds."""


def _token_count(value: Any, argument: str) -> int:
    """``value`` as a token count: a whole number (not a bool) from 0 to 2**63-1."""
    try:
        count = None if isinstance(value, bool) else operator.index(value)
    except Exception:  # a float, a str, an __index__ that raises
        count = None
    if count is None or not 0 <= count <= _MAX_TOKENS:
        raise ValueError(f"{argument} must be a whole number from 0 to 2**63-1, got {value!r}")
    return int(count)


class LLMCall(Handle):
    """A running model call (what ``with llm(...) as call`` gives)."""

    __slots__ = ("_capture", "_completed", "_parts", "tokens")

    tokens: int
    """How many tokens (or chunks) :meth:`token` streamed so far."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: list[str] = []
        self._completed = False
        self._capture = _capturing()
        self.tokens = 0

    def token(self, text: str) -> None:
        """Stream one token (or chunk) to live subscribers; kept to build the message.
        Anything else than a str is sent as its ``str``. With content capture off, the
        ``token`` event carries its ``index`` only."""
        if self._ended("token"):
            return
        index = self.tokens
        self.tokens += 1
        if not self._capture:
            emit_event(self.span, sc.TOKEN, {"index": index}, time.time_ns())
            return
        text = safe_str(text)
        self._parts.append(text)
        emit_event(self.span, sc.TOKEN, {"text": text, "index": index}, time.time_ns())

    def usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """Record token usage (``gen_ai.usage.input_tokens`` / ``output_tokens``): whole
        numbers from 0 to 2**63-1, else a ValueError naming the argument."""
        attrs = {}
        if input_tokens is not None:
            attrs[sc.GEN_AI_USAGE_INPUT_TOKENS] = _token_count(input_tokens, "input_tokens")
        if output_tokens is not None:
            attrs[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = _token_count(output_tokens, "output_tokens")
        if not self._ended("usage"):
            self.span.set_attributes(attrs)

    def complete(
        self, message: str | None = None, *, finish_reason: str | None = None, **attributes: Any
    ) -> None:
        """Record the complete message once (``llm.complete``); without ``message``, the
        streamed tokens joined. Called for you at the end when tokens were streamed.
        With content capture off, the event has no ``message``."""
        if self._completed or self._ended("complete"):
            return
        self._completed = True
        text: Any = None
        if self._capture:
            text = "".join(self._parts) if message is None else message
        _add_event(
            self.span,
            sc.LLM_COMPLETE,
            {
                "message": text,
                "finish_reason": finish_reason,
                "streamed_tokens": self.tokens or None,
                **attributes,
            },
        )
        if finish_reason is not None:
            reason = truncate(safe_str(finish_reason))
            self.span.set_attribute(sc.GEN_AI_RESPONSE_FINISH_REASONS, (reason,))

    def _finish(self, exc: BaseException | None) -> None:
        if self.tokens and not self._completed:
            reason = None
            if not clean_exit(exc):  # a stream stopped by a cancellation is no error
                reason = "cancelled" if is_cancellation(exc) else "error"
            self.complete(finish_reason=reason)


def llm(
    model: str,
    /,
    *,
    provider: str | None = None,
    operation: str = "chat",
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Scope[LLMCall]:
    """A model call: ``with llm("gpt-4o", provider="openai") as call:`` then
    ``call.token(chunk)`` while streaming, ``call.usage(input_tokens=…, output_tokens=…)``
    and ``call.complete(message)``. The span is named ``"{operation} {model}"``."""
    _check_name(model, "model")
    _check_name(operation, "operation")
    if provider is not None:
        _check_name(provider, "provider")
    if name is not None:
        _check_name(name, "llm name")
    _check_attributes(attributes, "llm(attributes=)")
    attrs: dict[str, Any] = {sc.GEN_AI_OPERATION_NAME: operation, sc.GEN_AI_REQUEST_MODEL: model}
    if provider is not None:
        attrs[sc.GEN_AI_PROVIDER_NAME] = provider
    attrs.update(attributes or {})
    return Scope(
        _Options(
            kind=sc.KIND_LLM,
            name=f"{operation} {model}" if name is None else name,
            attributes=attrs,
            handle_cls=LLMCall,
            on_finish=lambda h, exc: h._finish(exc),
            span_kind=trace.SpanKind.CLIENT,  # as GenAI's conventions ask of a model call
        )
    )


class ToolCall(Handle):
    """A running tool call (what ``with tool(...) as call`` gives)."""

    __slots__ = ("_responded",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._responded = False

    def respond(self, result: Any, **attributes: Any) -> None:
        """Record the tool's answer (``tool.response``); with content capture off, the
        event has no ``result``."""
        if self._ended("respond"):
            return
        self._responded = True
        recorded = {"result": clean_value(result)} if _capturing() else {}
        _add_event(self.span, sc.TOOL_RESPONSE, {**recorded, **attributes})


def _tool_options(
    name: str | None,
    attributes: Mapping[str, Any] | None,
    on_enter: Callable[[Any], None] | None = None,
    known: Mapping[str, Any] | None = None,
) -> _Options:
    """``known``: what spangraph knows of the tool (its call id, type, description),
    which the caller's ``attributes`` may override."""
    attrs: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: "execute_tool",
        **(known or {}),
        **(attributes or {}),
    }
    if name is not None:
        attrs[sc.GEN_AI_TOOL_NAME] = name
    return _Options(
        kind=sc.KIND_TOOL,
        name=None if name is None else f"execute_tool {name}",
        attributes=attrs,
        handle_cls=ToolCall,
        on_enter=on_enter,
    )


def _description(fn: Any) -> str | None:
    """The first line of a tool's docstring: a function's or method's (a partial's
    function's), a callable object's class's when its ``__call__`` is Python code;
    ``None`` without one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    doc: Any = None
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        doc = fn.__doc__
    elif inspect.isfunction(inspect.getattr_static(type(fn), "__call__", None)):
        # the class's own docstring (not one it inherits, nor the signature a dataclass
        # without one is given), else its __call__'s
        cls = type(fn)
        doc = cls.__dict__.get("__doc__")
        if dataclasses.is_dataclass(cls) and doc == _dataclass_doc(cls):
            doc = None
        if not doc and "__call__" in cls.__dict__:
            doc = cls.__dict__["__call__"].__doc__
    # (a builtin, operator.itemgetter(0) …: its doc is about itself, not the tool)
    if not isinstance(doc, str):
        return None
    first = inspect.cleandoc(doc).split("\n", 1)[0].strip()
    return first or None


def _dataclass_doc(cls: type) -> str | None:
    """The docstring ``dataclasses`` gives a class without one: its signature."""
    try:
        return cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return None


def _record_io(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so that its arguments and result become tool.call / tool.response."""
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (ValueError, TypeError):  # a builtin without one (operator.itemgetter(0) …)
        signature = None
    parameters = signature.parameters if signature is not None else {}
    first = next(iter(parameters), None)
    # a method's instance or class is not an argument the model gave (and its repr may
    # hold what should not be recorded): the first parameter of a function defined in a
    # class body, named so
    in_class = "." in getattr(fn, "__qualname__", "").rsplit("<locals>.", 1)[-1]
    instance = first if in_class and first in ("self", "cls") else None
    # *args and **kwargs are recorded only when they took something
    variadic = {p.name for p in parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            record_call(args, kwargs)
        except Exception:  # recording never stops the tool from running
            _log.warning(
                "spangraph: recording the arguments of tool %r failed", name, exc_info=True
            )

    def record_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not _capturing():
            _add_event(trace.get_current_span(), sc.TOOL_CALL, {"tool": name})
            return
        if signature is None:  # no names to give: positions, and the keywords given
            bound = {**{str(i): v for i, v in enumerate(args)}, **kwargs}
        else:
            try:
                bound_args = signature.bind(*args, **kwargs)
                bound_args.apply_defaults()  # the arguments the call ran with, defaults too
                bound = bound_args.arguments
            except TypeError:
                bound = {}
        arguments = {
            f"arguments.{k}": v
            for k, v in bound.items()
            # (the truth of a value may raise: a numpy array's does)
            if k != instance and (k not in variadic or len(v))
        }
        _add_event(trace.get_current_span(), sc.TOOL_CALL, {"tool": name, **arguments})

    def respond(result: Any) -> None:
        try:
            recorded = {"result": clean_value(result)} if _capturing() else {}
            _add_event(trace.get_current_span(), sc.TOOL_RESPONSE, recorded)
        except Exception:
            _log.warning("spangraph: recording the result of tool %r failed", name, exc_info=True)

    if inspect.iscoroutinefunction(_code_of(fn)):  # an async callable object too

        @functools.wraps(fn)
        async def async_inner(*args: Any, **kwargs: Any) -> Any:
            call(args, kwargs)
            result = await fn(*args, **kwargs)
            respond(result)
            return result

        return async_inner

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        call(args, kwargs)
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):  # async work the span covers: its answer is awaited
            return _responding(result, respond)
        respond(result)
        return result

    return inner


def _responding(
    coro: CoroutineType[Any, Any, Any], respond: Callable[[Any], None]
) -> Coroutine[Any, Any, Any]:
    """A coroutine that awaits ``coro`` and records its result with ``respond``, for a
    sync tool that returns a coroutine: the tool span covers it as it covers any
    coroutine a sync function returns (``_wrappers._covered``)."""

    async def run() -> Any:
        closer.detach()
        result = await coro
        respond(result)
        return result

    outer = run()
    # named as the program's coroutine, as _covered names its own after this one
    # (outer is a native coroutine too, which has both: mypy types run() as a Coroutine)
    outer.__name__, outer.__qualname__ = coro.__name__, coro.__qualname__  # type: ignore[attr-defined]
    # dropped without being awaited: no "never awaited" warning for coro too
    closer = weakref.finalize(outer, coro.close)
    return outer


class _ToolScope(Scope[ToolCall]):
    """``tool("name")``: a block that records ``tool.call`` with ``arguments``, or a
    decorator that records the call's arguments and result."""

    __slots__ = ("_tool_attrs", "_tool_known", "_tool_name")

    def __init__(
        self,
        name: str | None,
        arguments: Mapping[str, Any] | None,
        attributes: Mapping[str, Any] | None,
        call_id: str | None = None,
    ) -> None:
        def called(handle: ToolCall) -> None:
            args = {}
            if _capturing():
                args = {f"arguments.{k}": v for k, v in clean(arguments).items()}
            _add_event(handle.span, sc.TOOL_CALL, {"tool": name, **args})

        known = {} if call_id is None else {sc.GEN_AI_TOOL_CALL_ID: call_id}
        super().__init__(_tool_options(name, attributes, called, known))
        self._tool_name = name
        self._tool_attrs = attributes
        self._tool_known = known

    def __call__(self, fn: F) -> F:
        if isinstance(fn, staticmethod | classmethod):  # @tool above @staticmethod
            return type(fn)(self(fn.__func__))
        if not callable(fn):
            raise TypeError(f"tool() decorates a function, got {fn!r}")
        if sc.GEN_AI_TOOL_CALL_ID in self._tool_known:
            raise TypeError(
                "tool(call_id=) names one call of the tool: give it to a `with tool(...)` "
                "block around that call, not to a decorator (every call would share it)"
            )
        code = _code_of(fn)
        if inspect.isgeneratorfunction(code) or inspect.isasyncgenfunction(code):
            raise TypeError(
                "tool() cannot decorate a generator: its result is not known when it returns"
            )
        # the name a model calls it by: the function's own (a partial's function's, a
        # callable object's class's), without its enclosing class
        name = self._tool_name or _default_name(fn).rsplit(".", 1)[-1]
        known = {**self._tool_known, sc.GEN_AI_TOOL_TYPE: "function"}
        description = _description(fn)
        if description is not None:
            known[sc.GEN_AI_TOOL_DESCRIPTION] = description
        scope: Scope[ToolCall] = Scope(_tool_options(name, self._tool_attrs, known=known))
        return scope(_record_io(name, fn))  # type: ignore[return-value]


@overload
def tool(fn: F, /, *, attributes: Mapping[str, Any] | None = None) -> F: ...
@overload
def tool(
    name: str | None = None,
    /,
    *,
    arguments: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    call_id: str | None = None,
) -> Scope[ToolCall]: ...
def tool(
    name_or_fn: Any = None,
    /,
    *,
    arguments: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    call_id: str | None = None,
) -> Any:
    """A tool call (``execute_tool`` span). As a decorator (``@tool``, ``@tool("search")``)
    it records the call's arguments (``tool.call``) and its result (``tool.response``),
    the tool's type (``function``) and description (its docstring's first line); as a
    block, ``with tool("search", arguments={...}, call_id="call_…") as call: …
    call.respond(result)``, ``call_id`` the id of the model's tool call, if known."""
    _check_attributes(attributes, "tool(attributes=)")
    if call_id is not None:
        _check_name(call_id, "call_id")
    if isinstance(name_or_fn, staticmethod | classmethod) or (
        callable(name_or_fn) and not isinstance(name_or_fn, str)
    ):
        # (a staticmethod or classmethod, not callable itself, is taken too: __call__)
        return _ToolScope(None, None, attributes, call_id)(name_or_fn)  # type: ignore[type-var]
    if name_or_fn is not None:
        _check_name(name_or_fn, "tool name")
    if arguments is not None and not isinstance(arguments, Mapping):
        raise TypeError(f"arguments must be a mapping of names to values, got {arguments!r}")
    return _ToolScope(name_or_fn, arguments, attributes, call_id)
