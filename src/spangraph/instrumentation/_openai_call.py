"""One OpenAI call as a GenAI ``chat`` span: what is recorded from the request, from a
response, and from each streamed chunk or event, and how the span ends (exactly once)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from .. import _spans, _state
from .. import semconv as sc
from .._aio import is_cancellation
from .._attrs import clean
from .._spans import _current_ids, _error_attrs, _record_exception, error_status
from ..processors.live import emit_event

_log = logging.getLogger("spangraph")

CHAT: Final = "chat.completions"
"""``client.chat.completions.create``."""
RESPONSES: Final = "responses"
"""``client.responses.create``."""

PROVIDER: Final = "openai"

_API_TYPES: Final = {CHAT: "chat_completions", RESPONSES: "responses"}
"""``openai.api.type`` of each API."""

_REQUEST_PARAMS: Final = (
    ("temperature", sc.GEN_AI_REQUEST_TEMPERATURE, float),
    ("top_p", sc.GEN_AI_REQUEST_TOP_P, float),
    ("max_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    ("max_completion_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    ("max_output_tokens", sc.GEN_AI_REQUEST_MAX_TOKENS, int),
    ("frequency_penalty", sc.GEN_AI_REQUEST_FREQUENCY_PENALTY, float),
    ("presence_penalty", sc.GEN_AI_REQUEST_PRESENCE_PENALTY, float),
    ("seed", sc.GEN_AI_REQUEST_SEED, int),
)
"""(keyword of ``create``, GenAI attribute, type): request parameters that are recorded."""


def _stop_sequences(value: Any) -> tuple[str, ...] | None:
    """``stop`` of ``create``: one text or a list of them."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


_OUTPUT_TYPES: Final = {"json_object": "json", "json_schema": "json", "text": "text"}
"""``gen_ai.output.type`` of each output format a request names."""


def _output_type(kwargs: Mapping[str, Any]) -> str | None:
    """``gen_ai.output.type`` of a request that names its output format: chat's
    ``response_format``, the Responses API's ``text={"format": ...}``, or the model class
    a ``parse()`` is given (structured output: ``json``)."""
    if isinstance(kwargs.get("text_format"), type):  # responses.parse(text_format=Model)
        return "json"
    fmt = kwargs.get("response_format")
    if not isinstance(fmt, Mapping | type):  # absent, None or the SDK's NOT_GIVEN
        text = kwargs.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
    if isinstance(fmt, type):  # chat.completions.parse(response_format=Model)
        return "json"
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return _OUTPUT_TYPES.get(kind) if isinstance(kind, str) else None


def server_of(client: Any) -> tuple[str | None, int | None]:
    """(host, port) of the server an OpenAI client calls (its ``base_url``); the port
    also when the URL leaves it to its scheme. ``(None, None)`` when not found."""
    try:
        url = client.base_url
        host, port = url.host, url.port
        if port is None:
            port = {"https": 443, "http": 80}.get(url.scheme)
        return (str(host) or None, port if isinstance(port, int) else None)
    except Exception:
        return None, None


_INCOMPLETE_REASONS: Final = {"max_output_tokens": "length", "content_filter": "content_filter"}
"""A Responses-API ``incomplete_details.reason`` as a chat-style finish reason."""


INCOMPLETE_STREAM: Final = "incomplete_stream"
"""``error.type`` of a stream read to its end without the model's finish reason: the
server (or a proxy) ended the answer before the model finished it."""

_INT64: Final = (-(2**63), 2**63 - 1)
"""OTLP carries integer attributes as int64: a larger one would fail the export of the
whole batch the span is in."""


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # Omit / NotGiven / None / anything odd
    if kind is int and not _INT64[0] <= value <= _INT64[1]:
        return None
    if kind is float:
        try:
            if not math.isfinite(value):
                return None  # nan / inf are no request setting (and not JSON)
        except OverflowError:  # an int too large for a float (10**400)
            return None
    return kind(value)


class Call:
    """The span of one ``create`` call and what its answer has told so far.

    ``finish`` ends the span exactly once, whichever of exhaustion, ``close()``, an
    error, or garbage collection of an abandoned stream comes first (from any thread).
    """

    __slots__ = (
        "_capture",
        "_error",
        "_first_chunk_s",
        "_generation",
        "_last_ns",
        "_once",
        "_reasons",
        "_started",
        "_texts",
        "_tokens",
        "_tool_calls",
        "api",
        "cache_read_tokens",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "response_id",
        "response_model",
        "service_tier",
        "span",
        "stream",
        "stream_opened",
        "system_fingerprint",
    )

    def __init__(
        self,
        tracer: Tracer | None,
        api: str,
        kwargs: Mapping[str, Any],
        *,
        capture_content: bool = True,
        server: tuple[str | None, int | None] = (None, None),
    ) -> None:
        model = kwargs.get("model")
        model = model if isinstance(model, str) and model else None
        attrs: dict[str, Any] = {
            sc.KIND: sc.KIND_LLM,
            sc.PROJECT_ID: _state.project,
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_PROVIDER_NAME: PROVIDER,
        }
        if model is not None:
            attrs[sc.GEN_AI_REQUEST_MODEL] = model
        for param, key, kind in _REQUEST_PARAMS:
            value = _number(kwargs.get(param), kind)
            if value is not None:
                attrs[key] = value
        choices = _number(kwargs.get("n"), int)
        if choices is not None and choices != 1:
            attrs[sc.GEN_AI_REQUEST_CHOICE_COUNT] = choices
        stop = _stop_sequences(kwargs.get("stop"))
        if stop is not None:
            attrs[sc.GEN_AI_REQUEST_STOP_SEQUENCES] = stop
        self.stream = kwargs.get("stream") is True
        if self.stream:  # (unset: not streamed, as the conventions read it)
            attrs[sc.GEN_AI_REQUEST_STREAM] = True
        output = _output_type(kwargs)
        if output is not None:
            attrs[sc.GEN_AI_OUTPUT_TYPE] = output
        tier = kwargs.get("service_tier")
        if isinstance(tier, str) and tier and tier != "auto":
            attrs[sc.OPENAI_REQUEST_SERVICE_TIER] = tier
        attrs[sc.OPENAI_API_TYPE] = _API_TYPES.get(api, api)
        host, port = server
        if host is not None:
            attrs[sc.SERVER_ADDRESS] = host
            if port is not None:
                attrs[sc.SERVER_PORT] = port
        run = _current_ids()
        if run is not None:
            if run.workflow_id:
                attrs[sc.WORKFLOW_ID] = run.workflow_id
                attrs[sc.EXECUTION_ID] = run.execution_id
                attrs[sc.WORKFLOW_NAME] = run.workflow_name
            if run.branch_id:
                attrs[sc.BRANCH_ID] = run.branch_id
        self.api = api
        attrs = clean(attrs)  # the model's name is cut like any attribute
        name = f"chat {attrs[sc.GEN_AI_REQUEST_MODEL]}" if model else "chat"
        self.span = (tracer or _state.tracer).start_span(
            name, kind=SpanKind.CLIENT, attributes=attrs
        )
        self._once = threading.Lock()  # acquired once, never released: "already ended"
        self._generation = _spans._process_generation  # (a forked child leaves it alone)
        self._capture = capture_content  # the answer's text recorded and sent live
        self._texts: dict[int, list[str]] = {}
        self._reasons: dict[int, str] = {}
        self._tool_calls: list[str] = []
        self._tokens = 0
        self._error: tuple[str, str] | None = None
        self._last_ns = time.time_ns()
        self._started = time.monotonic_ns()
        self._first_chunk_s: float | None = None
        self.stream_opened = False  # a stream's answer arrived (its wrapper was made)
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.service_tier: str | None = None
        self.system_fingerprint: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_tokens: int | None = None
        self.reasoning_tokens: int | None = None

    @property
    def ended(self) -> bool:
        return self._once.locked()

    def touch(self) -> None:
        """Note that the answer is alive now (an abandoned stream's span ends at the last
        such moment)."""
        self._last_ns = time.time_ns()

    # -- answers --------------------------------------------------------------------------

    def record(self, result: Any) -> None:
        """A complete (non-streamed) answer: ``ChatCompletion`` or ``Response``."""
        if self.api == CHAT:
            self._chat_meta(result)
            for choice in getattr(result, "choices", None) or ():
                index = getattr(choice, "index", 0) or 0
                message = getattr(choice, "message", None)
                content = getattr(message, "content", None)
                if isinstance(content, str):
                    self._texts.setdefault(index, []).append(content)
                else:
                    self._texts.setdefault(index, [])
                for tool_call in getattr(message, "tool_calls", None) or ():
                    self._tool_call(getattr(tool_call, "function", None))
                reason = getattr(choice, "finish_reason", None)
                if reason:
                    self._reasons[index] = str(reason)
        else:
            self._response(result)
            text = getattr(result, "output_text", None)
            self._texts[0] = [text] if isinstance(text, str) else []

    def _chat_meta(self, result: Any) -> None:
        if self.response_id is None:
            self.response_id = getattr(result, "id", None) or None
            self.response_model = getattr(result, "model", None) or None
        if self.system_fingerprint is None:
            self.system_fingerprint = _text(getattr(result, "system_fingerprint", None))
        if self.service_tier is None:
            self.service_tier = _text(getattr(result, "service_tier", None))
        usage = getattr(result, "usage", None)
        if usage is not None:
            self.input_tokens = getattr(usage, "prompt_tokens", None)
            self.output_tokens = getattr(usage, "completion_tokens", None)
            self._usage_details(usage, "prompt_tokens_details", "completion_tokens_details")

    def _usage_details(self, usage: Any, input_details: str, output_details: str) -> None:
        """The prompt's tokens served from the cache and the answer's spent reasoning,
        when the usage tells them (chat: ``prompt_tokens_details`` /
        ``completion_tokens_details``; Responses: ``input_tokens_details`` /
        ``output_tokens_details``)."""
        cached = _field(_field(usage, input_details), "cached_tokens")
        reasoning = _field(_field(usage, output_details), "reasoning_tokens")
        self.cache_read_tokens = _number(cached, int)
        self.reasoning_tokens = _number(reasoning, int)

    def _tool_call(self, function: Any) -> None:
        name = getattr(function, "name", None)
        if name:
            self._tool_calls.append(str(name))

    def _response(self, response: Any) -> None:
        """A Responses-API ``Response`` (complete, or carried by a stream event)."""
        self.response_id = getattr(response, "id", None) or self.response_id
        self.response_model = getattr(response, "model", None) or self.response_model
        self.service_tier = _text(getattr(response, "service_tier", None)) or self.service_tier
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.input_tokens = getattr(usage, "input_tokens", None)
            self.output_tokens = getattr(usage, "output_tokens", None)
            self._usage_details(usage, "input_tokens_details", "output_tokens_details")
        status = getattr(response, "status", None)
        output = getattr(response, "output", None) or ()
        names = [getattr(item, "name", None) for item in output if _type(item) == "function_call"]
        if status == "completed":
            self._reasons[0] = "tool_calls" if names else "stop"
            self._tool_calls = [str(n) for n in names if n]
        elif status == "incomplete":
            reason: Any = getattr(getattr(response, "incomplete_details", None), "reason", None)
            self._reasons[0] = _INCOMPLETE_REASONS.get(reason, reason or "incomplete")
        elif status in ("failed", "cancelled"):
            self._reasons[0] = "error" if status == "failed" else "cancelled"
            error = getattr(response, "error", None)
            if status == "failed":
                self._error = (
                    str(getattr(error, "code", None) or "response_failed"),
                    str(getattr(error, "message", None) or "the response failed"),
                )

    # -- streams --------------------------------------------------------------------------

    def on_chunk(self, chunk: Any) -> None:
        """One streamed ``ChatCompletionChunk`` or Responses-API stream event."""
        self._last_ns = now = time.time_ns()
        if self._first_chunk_s is None:
            self._first_chunk_s = (time.monotonic_ns() - self._started) / 1e9
        if self.api == CHAT:
            # chunks are not validated by the SDK: an OpenAI-compatible server may send
            # null (or no) choices, deltas or indexes
            self._chat_meta(chunk)
            for choice in getattr(chunk, "choices", None) or ():
                index = getattr(choice, "index", None)
                index = index if isinstance(index, int) else 0
                delta = getattr(choice, "delta", None)
                content = getattr(delta, "content", None)
                if content and isinstance(content, str):
                    self._token(content, index, now)
                for tool_call in getattr(delta, "tool_calls", None) or ():
                    self._tool_call(getattr(tool_call, "function", None))
                reason = getattr(choice, "finish_reason", None)
                if reason:
                    self._reasons[index] = str(reason)
            return
        kind = getattr(chunk, "type", None)
        if kind == "response.output_text.delta":
            delta = getattr(chunk, "delta", None)
            if delta and isinstance(delta, str):
                self._token(delta, 0, now)
        elif kind in ("response.created", "response.in_progress", "response.queued"):
            response = getattr(chunk, "response", None)
            self.response_id = getattr(response, "id", None) or self.response_id
            self.response_model = getattr(response, "model", None) or self.response_model
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._response(getattr(chunk, "response", None))
        elif kind == "error":
            self._error = (
                str(getattr(chunk, "code", None) or "error"),
                str(getattr(chunk, "message", None) or "the stream reported an error"),
            )

    def _token(self, text: str, index: int, now: int) -> None:
        """A text delta: kept for the complete message and sent live as ``token`` (its
        text left out when content is not captured)."""
        attrs: dict[str, Any] = {"index": self._tokens}
        if self._capture:
            self._texts.setdefault(index, []).append(text)
            attrs["text"] = text
        if index:
            attrs["choice"] = index
        self._tokens += 1
        emit_event(self.span, sc.TOKEN, attrs, now)

    # -- the end --------------------------------------------------------------------------

    def finish(
        self, exc: BaseException | None = None, *, exhausted: bool = False, abandoned: bool = False
    ) -> None:
        """End the span, once. ``exhausted``: the answer was read to its end (else only
        what was received is recorded); ``abandoned``: ended by garbage collection, at the
        time of the last chunk."""
        if self._generation != _spans._process_generation:
            return  # started by the process this one was forked from: that one ends it
        if not self._once.acquire(blocking=False):
            return
        try:
            self._end(exc, exhausted, self._last_ns if abandoned else None)
        except Exception:  # never break the caller, a finalizer or the reaper
            _log.exception("spangraph: ending the OpenAI span %r failed", self.span)
            self.span.end()

    def _end(self, exc: BaseException | None, exhausted: bool, end_ns: int | None) -> None:
        span = self.span
        cancelled = is_cancellation(exc) or isinstance(exc, GeneratorExit)
        incomplete = self.stream_opened and not self._reasons
        if incomplete:
            # the answer ended before the model's finish reason: say so, and why
            if exc is None and self._error is None and exhausted:
                self._error = (
                    INCOMPLETE_STREAM,
                    "the stream ended before the model finished its answer",
                )
            if cancelled:
                self._reasons[0] = "cancelled"
            elif exc is not None or self._error is not None:
                self._reasons[0] = "error"
        attrs: dict[str, Any] = {
            sc.LLM_INCOMPLETE: True if incomplete else None,
            sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: self._first_chunk_s,
            sc.GEN_AI_RESPONSE_ID: self.response_id,
            sc.GEN_AI_RESPONSE_MODEL: self.response_model,
            sc.GEN_AI_USAGE_INPUT_TOKENS: self.input_tokens,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: self.output_tokens,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: self.cache_read_tokens,
            sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: self.reasoning_tokens,
            sc.OPENAI_RESPONSE_SERVICE_TIER: self.service_tier,
            sc.OPENAI_RESPONSE_SYSTEM_FINGERPRINT: self.system_fingerprint,
        }
        if self._reasons:
            attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(
                self._reasons[i] for i in sorted(self._reasons)
            )
        span.set_attributes(clean(attrs))
        if exhausted or self._tokens:
            self._complete(end_ns)
        if exc is None and self._error is None:
            span.set_attribute(sc.STATE, sc.STATE_COMPLETED)
        elif cancelled:
            span.set_attribute(sc.STATE, sc.STATE_CANCELLED)
        else:
            span.set_attribute(sc.STATE, sc.STATE_FAILED)
            stamp = end_ns or time.time_ns()
            if exc is not None:
                error_type = _error_attrs(exc)[sc.ERROR_TYPE]
                _record_exception(span, exc, stamp)  # also live
                status = error_status(exc)
            else:
                error_type, message = self._error or ("error", "")
                status = Status(StatusCode.ERROR, message)
            span.set_attribute(sc.ERROR_TYPE, error_type)
            span.set_status(status)
        span.end(end_time=end_ns)

    def _complete(self, end_ns: int | None) -> None:
        """``llm.complete``: the message (choice 0), once; every choice when there are more."""
        attrs: dict[str, Any] = {
            "finish_reason": self._reasons.get(0),
            "streamed_tokens": self._tokens or None,
            "tool_calls": tuple(self._tool_calls) or None,
        }
        if self._capture:
            texts = {i: "".join(parts) for i, parts in sorted(self._texts.items())}
            attrs["message"] = texts.get(0, next(iter(texts.values()), ""))
            if len(texts) > 1:
                attrs["choices"] = tuple(texts.values())
        attrs = clean(attrs)
        stamp = end_ns or time.time_ns()
        self.span.add_event(sc.LLM_COMPLETE, attrs, timestamp=stamp)
        emit_event(self.span, sc.LLM_COMPLETE, attrs, stamp)


def _type(item: Any) -> Any:
    return getattr(item, "type", None)


def _text(value: Any) -> str | None:
    """``value`` if it is a non-empty str (an answer's optional field), else ``None``."""
    return value if isinstance(value, str) and value else None


def _field(value: Any, name: str) -> Any:
    """``value``'s field ``name``: an attribute of the SDK's model, or the key of a dict
    (what an older SDK keeps of a field its models do not declare yet)."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
