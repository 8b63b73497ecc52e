"""Logfire's streamed model calls: one ``:LLM`` node a call, with its answer.

Logfire's LLM integrations (``logfire.instrument_openai()``,
``logfire.instrument_anthropic()``) end the span of a streamed call (``Chat Completion
with 'gpt-4o-mini'``) as soon as the request returns the stream, without its answer.
When the stream ends, they write a log record: a span of no length
(``logfire.span_type`` ``log``: ``streaming response from 'gpt-4o-mini' took 0.20s``),
the request span's sibling, with the request's attributes and the stream's answer, ids
and usage. That record is a plain span in the graph (``mapping.kind_of``); the graph
worker gives its results to the request's node here: its answer, usage, response ids and
finish reasons, its end (the stream's end) and, when the stream failed, its failure.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Final

from .. import semconv as sc
from ..mapping import LOGFIRE_SPAN_TYPE, PROMOTED, to_json

MAX_WAITING: Final = 1024
"""Most request spans waiting for their stream's record (the oldest goes first)."""

_RESULTS: Final = ("gen_ai.response.", "gen_ai.usage.")
_RESULT_KEYS: Final = frozenset(
    {"gen_ai.output.messages", "error.type", "operation.cost", "response_data"}
)
_ANSWERED: Final = ("gen_ai.response.id", "gen_ai.usage.input_tokens", "gen_ai.output.messages")
_REQUEST_DATA: Final = "request_data"
"""Set on the spans of both of Logfire's LLM integrations (the request's parameters)."""
_ASKED: Final = (
    sc.GEN_AI_OPERATION_NAME,
    "gen_ai.system",
    "gen_ai.provider.name",
    "gen_ai.input.messages",
    "gen_ai.system_instructions",
    _REQUEST_DATA,
)


def _call_key(attributes: Mapping[str, Any], props: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a request span and its stream's record share: the request's attributes
    (the record repeats them all) and, under a span, the parent and its trace (a call
    made with no span open has its record in a trace of its own). Its request part as a
    hash: the input is not kept."""
    asked = tuple(
        (key, value if type(value) is str else repr(value))
        for key, value in sorted(attributes.items())
        if key in _ASKED or key.startswith("gen_ai.request.")
    )
    parent = props.get("parent_span_id")
    return (props.get("trace_id") if parent else None, parent, hash(asked))


class StreamedCalls:
    """The graph worker's memory of Logfire's model-call spans that ended without an
    answer (a stream's request), until the record of their stream comes.

    Calls with the same parent and request (model, input, parameters) are paired oldest
    first."""

    __slots__ = ("_order", "_waiting")

    def __init__(self) -> None:
        # call key -> (span id, end row props, attributes) of its requests, oldest first
        self._waiting: dict[
            tuple[Any, ...], deque[tuple[str, dict[str, Any], Mapping[str, Any]]]
        ] = {}
        self._order: OrderedDict[str, tuple[Any, ...]] = OrderedDict()  # span id -> key

    def __len__(self) -> int:
        return len(self._order)

    def ended(
        self,
        attributes: Mapping[str, Any],
        span_id: str,
        label: str | None,
        props: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """A span's end was mapped (``label``, ``props``): the end row that gives a
        stream's record to its request's node, when it is that record; else ``None``
        (remembering a request span that ended without an answer)."""
        span_type = attributes.get(LOGFIRE_SPAN_TYPE)
        if span_type is None:  # (not Logfire's: one look-up)
            return None
        if span_type == "span":
            if (
                label == "LLM"
                and _REQUEST_DATA in attributes  # (not another library's, through Logfire's)
                and props.get("status") != "ERROR"
                and not any(key in attributes for key in _ANSWERED)
            ):
                self._remember(_call_key(attributes, props), span_id, props, attributes)
            return None
        if span_type != "log" or attributes.get(sc.GEN_AI_OPERATION_NAME) is None:
            return None
        key = _call_key(attributes, props)
        waiting = self._waiting.get(key)
        if not waiting:
            return None
        request_id, request_props, request = waiting.popleft()
        if not waiting:
            del self._waiting[key]
        del self._order[request_id]
        merged = {k: v for k, v in request.items() if k not in PROMOTED}
        for k, v in attributes.items():
            if k.startswith(_RESULTS) or k in _RESULT_KEYS:
                merged[k] = v
        # the request's whole end row again, with the answer: the node it makes is whole
        # also where the request's own row never reached the store
        row: dict[str, Any] = {**request_props, "attributes": to_json(merged)}
        start_ns = request_props.get("start_ns")
        end = props.get("end_ns")
        if type(end) is int and type(start_ns) is int and end >= start_ns:
            row["end_ns"] = end
            row["duration_ms"] = round((end - start_ns) / 1e6, 3)
        if props.get("status") == "ERROR":
            row["state"] = sc.STATE_FAILED
            row["status"] = "ERROR"
            if props.get("status_message"):
                row["status_message"] = props["status_message"]
        return {"span_id": request_id, "props": row}

    def _remember(
        self,
        key: tuple[Any, ...],
        span_id: str,
        props: Mapping[str, Any],
        attributes: Mapping[str, Any],
    ) -> None:
        if span_id in self._order:  # (its end again: a replay)
            return
        if len(self._order) >= MAX_WAITING:
            _, oldest_key = self._order.popitem(last=False)
            queue = self._waiting[oldest_key]
            queue.popleft()  # (the oldest of its key too)
            if not queue:
                del self._waiting[oldest_key]
        self._waiting.setdefault(key, deque()).append((span_id, dict(props), attributes))
        self._order[span_id] = key
