"""OpenAI Python SDK instrumentation: model calls as GenAI ``chat`` spans.

>>> from spangraph.instrumentation.openai import OpenAIInstrumentor
>>> OpenAIInstrumentor().instrument()          # doctest: +SKIP

Covers ``client.chat.completions.create`` / ``.parse`` and ``client.responses.create`` /
``.parse`` on ``OpenAI`` and ``AsyncOpenAI`` (so also the ``.stream()`` helpers built on
``create``), streaming or not; on SDKs before 1.92, ``client.beta.chat.completions.parse``
/ ``.stream`` too. Each call is one span named ``chat {model}`` with
``spangraph.kind = llm``, ``gen_ai.operation.name = chat``, ``gen_ai.provider.name =
openai``, the request and response model, the response id, token usage and finish
reasons. Streamed text deltas go to live subscribers as ``token`` events and are never written to the graph;
the complete message is recorded once, as ``llm.complete``. A stream's span ends when it
is exhausted, fails, is closed, or is garbage-collected after being abandoned; one that
ends before the model's finish reason carries ``spangraph.llm.incomplete`` (and, read
to its end so, fails as ``incomplete_stream``: the answer was cut). A raw
response (``with_raw_response``, ``with_streaming_response``) is recorded when it is
parsed: the answer, or the stream ``parse()`` gives.

Content: prompts are never recorded. The answer's text is recorded once, in the
``llm.complete`` event's ``message`` (cut to spangraph's attribute limit), with the
names (not the arguments) of the tools the model called. ``instrument(capture_content=
False)``, or ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=false`` (OpenTelemetry's
GenAI switch), leaves the text out: ``token`` events then carry their index only, and
``llm.complete`` no ``message``.

Without ``tracer_provider=``, spans come from spangraph's tracer: the provider that
:func:`spangraph.configure` was given (or the global one), followed at call time.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]  # (its module opts out of type checking)
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Tracer, TracerProvider

from .._version import __version__
from ..genai import CAPTURE_CONTENT_ENV as CAPTURE_CONTENT_ENV  # the switch llm() reads too
from ..genai import capture_content_from_env
from ._openai_call import CHAT, RESPONSES, Call, server_of
from ._openai_stream import (
    TracedAPIResponse,
    TracedAsyncAPIResponse,
    TracedAsyncStream,
    TracedRawResponse,
    TracedStream,
    wait_reaped,
)
from ._wrapping import unwrap_ours

__all__ = ["OpenAIInstrumentor", "wait_reaped"]

_log = logging.getLogger("spangraph")

INSTRUMENTATION_NAME: Final = "spangraph.instrumentation.openai"

_instruments: Final = ("openai >= 1.66",)
"""The SDK versions supported: ``client.responses`` arrived in 1.66."""

_TARGETS: Final = (
    ("openai.resources.chat.completions", "Completions", CHAT, False),
    ("openai.resources.chat.completions", "AsyncCompletions", CHAT, True),
    ("openai.resources.responses", "Responses", RESPONSES, False),
    ("openai.resources.responses", "AsyncResponses", RESPONSES, True),
    # SDKs before 1.92: chat's parse() and stream() under client.beta
    ("openai.resources.beta.chat.completions", "Completions", CHAT, False),
    ("openai.resources.beta.chat.completions", "AsyncCompletions", CHAT, True),
)
"""(module, resource class, API, async): each class's ``create`` and ``parse`` are
wrapped where the SDK has them (``parse`` posts the request itself, without
``create``)."""

_METHODS: Final = ("create", "parse")

_in_call: ContextVar[bool] = ContextVar("spangraph_openai_call", default=False)
"""Set while an instrumented method runs: a method that calls another (an SDK whose
``parse`` calls ``create``) makes one span, not two."""


def _start(
    tracer: Tracer | None, api: str, instance: Any, kwargs: dict[str, Any], capture: bool
) -> Call | None:
    if not is_instrumentation_enabled():
        return None
    try:
        server = server_of(getattr(instance, "_client", None))
        return Call(tracer, api, kwargs, capture_content=capture, server=server)
    except Exception:  # never break the user's call
        _log.exception("spangraph: starting an OpenAI span failed")
        return None


class _Types:
    """The SDK's classes that answers are told apart by (resolved at ``instrument``)."""

    __slots__ = ("answers", "async_raw", "async_stream", "legacy_raw", "raw", "stream")

    def __init__(self, openai: Any) -> None:
        from openai.types.chat import ChatCompletion

        answers: list[type] = [ChatCompletion]
        try:
            from openai.types.responses import Response

            answers.append(Response)
        except ImportError:  # pragma: no cover - an SDK without the Responses API
            pass
        self.answers = tuple(answers)
        self.stream = openai.Stream
        self.async_stream = openai.AsyncStream
        # raw responses: with_raw_response's (LegacyAPIResponse) and with_streaming_response's
        self.legacy_raw = _class_of("openai._legacy_response", "LegacyAPIResponse")
        self.raw = _class_of("openai._response", "APIResponse")
        self.async_raw = _class_of("openai._response", "AsyncAPIResponse")


def _class_of(module: str, name: str) -> tuple[type, ...]:
    """``module.name`` as a tuple for ``isinstance``; empty in an SDK without it."""
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # pragma: no cover - an SDK that moved it
        return ()
    return (cls,) if isinstance(cls, type) else ()


def _result(call: Call, result: Any, types: _Types) -> Any:
    """Wrap a stream (its span ends later); record a complete answer and end now.

    A raw response (``with_raw_response``, ``with_streaming_response``) has nothing
    parsed yet: it is wrapped so that what its ``parse()`` gives goes through here too."""
    answered = False
    try:
        if isinstance(result, types.stream):
            if call.span.is_recording():
                return TracedStream(result, call)
        elif isinstance(result, types.async_stream):
            if call.span.is_recording():
                return TracedAsyncStream(result, call)
        elif isinstance(result, types.legacy_raw + types.raw + types.async_raw):
            if call.span.is_recording():
                return _traced_raw(call, result, types)
        elif isinstance(result, types.answers):
            call.record(result)
            answered = True
    except Exception:
        _log.exception("spangraph: recording an OpenAI answer failed")
    call.finish(None, exhausted=answered)
    return result


def _traced_raw(call: Call, raw: Any, types: _Types) -> Any:
    def on_parsed(parsed: Any) -> Any:
        return _result(call, parsed, types)

    if isinstance(raw, types.async_raw):
        return TracedAsyncAPIResponse(raw, call, on_parsed)
    if isinstance(raw, types.raw):
        return TracedAPIResponse(raw, call, on_parsed)
    return TracedRawResponse(raw, call, on_parsed)


class _Switch:
    """On while the ``instrument()`` that made a wrapper is in force. The SDK keeps the
    method it found when it first builds a client's ``with_raw_response`` object, so a
    wrapper can outlive ``uninstrument()``: switched off, it only calls through."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


def _sync_wrapper(
    tracer: Tracer | None, api: str, types: _Types, capture: bool, switch: _Switch
) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        on = switch.on and not _in_call.get()
        call = _start(tracer, api, instance, kwargs, capture) if on else None
        if call is None:
            return wrapped(*args, **kwargs)
        token = otel_context.attach(trace.set_span_in_context(call.span))
        inside = _in_call.set(True)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.finish(exc)
            raise
        finally:
            _in_call.reset(inside)
            otel_context.detach(token)
        return _result(call, result, types)

    return wrapper


def _async_wrapper(
    tracer: Tracer | None, api: str, types: _Types, capture: bool, switch: _Switch
) -> Callable[..., Any]:
    async def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        on = switch.on and not _in_call.get()
        call = _start(tracer, api, instance, kwargs, capture) if on else None
        if call is None:
            return await wrapped(*args, **kwargs)
        token = otel_context.attach(trace.set_span_in_context(call.span))
        inside = _in_call.set(True)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.finish(exc)
            raise
        finally:
            _in_call.reset(inside)
            otel_context.detach(token)
        return _result(call, result, types)

    return wrapper


class OpenAIInstrumentor(BaseInstrumentor):
    """Instruments the OpenAI Python SDK (see the module's docstring).

    ``instrument(tracer_provider=...)`` takes spans from that provider; without it they
    come from spangraph's tracer. ``instrument(capture_content=False)`` leaves the
    answer's text out (default: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``,
    on when unset). ``uninstrument()`` restores the SDK's methods.
    """

    if TYPE_CHECKING:  # BaseInstrumentor's module opts out of type checking: typed here

        def instrument(
            self,
            *,
            tracer_provider: TracerProvider | None = None,
            capture_content: bool | None = None,
            skip_dep_check: bool = False,
            raise_exception_on_conflict: bool = False,
        ) -> None:
            """Patch the OpenAI SDK (once a process; again after :meth:`uninstrument`)."""

        def uninstrument(self) -> None:
            """Undo :meth:`instrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        import openai

        provider = kwargs.get("tracer_provider")
        if provider is not None and not callable(getattr(provider, "get_tracer", None)):
            raise TypeError(
                f"tracer_provider must be an OpenTelemetry TracerProvider, got {provider!r}"
            )
        tracer = (
            trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=provider)
            if provider is not None
            else None
        )
        types = _Types(openai)
        capture = kwargs.get("capture_content")
        if capture is None:
            capture = capture_content_from_env()
        elif not isinstance(capture, bool):
            raise TypeError(f"capture_content must be True or False, got {capture!r}")
        self._patched: list[tuple[type, str, Any]] = []
        self._switch = switch = _Switch()
        for module_name, class_name, api, is_async in _TARGETS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):  # an SDK without this API
                continue
            make = _async_wrapper if is_async else _sync_wrapper
            for method in _METHODS:
                if method in vars(cls):  # an SDK without parse() on this resource
                    wrapper = make(tracer, api, types, capture, switch)
                    wrapt.wrap_function_wrapper(cls, method, wrapper)
                    self._patched.append((cls, method, wrapper))

    def _uninstrument(self, **kwargs: Any) -> None:
        switch = getattr(self, "_switch", None)
        if switch is not None:  # wrappers the SDK still holds call through from now on
            switch.on = False
        for cls, name, wrapper in getattr(self, "_patched", ()):
            unwrap_ours(cls, name, wrapper)
        self._patched = []
