"""OTLP ingest: decode ``ExportTraceServiceRequest`` bodies into SDK spans and feed them to
spangraph's own span processors, so spans from any language land in the graph and go out
live exactly as spans made in this process do.

Everything here is synchronous and CPU-bound (decompress, parse, convert); the HTTP
router (:mod:`spangraph.server.otlp`) runs it in the thread pool. Nothing here waits for
the graph store or Redis: the processors queue and write on their worker threads. When
the graph queue has no room for a request, the request is refused as a whole
(:class:`Overloaded`, answered 503 so that the client retries), so a span is either queued
or the client knows it was not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
from google.protobuf import message_factory
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .. import semconv as sc
from .._ids import MAX_ID_CHARS
from .._utf8 import mended_value
from ..mapping import PROMOTED, bounded_text, to_json
from ..processors import GraphSpanProcessor, LiveEventProcessor, RedisPublisher

_log = logging.getLogger("spangraph.server.otlp")

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""Largest request body accepted, before and after decompression (413 above it)."""
MAX_QUEUE_SIZE: Final = 131_072
"""Items the graph processor may hold (two a span: its start and its end)."""
MAX_SPANS_PER_REQUEST: Final = MAX_QUEUE_SIZE // 2
"""Most spans one request may carry (413 above it: the client must send smaller batches);
also the most ``ResourceSpans`` and ``ScopeSpans`` entries."""
MAX_CONCURRENT_DECODES: Final = 2
"""Requests decoded at the same time; the others wait their turn without holding a thread,
so that a burst of large requests neither fills the thread pool the query routes run in
nor holds the memory of more than this many decoded requests at once (a 16 MiB protobuf
body of empty entries decodes to about 600 MB)."""
MAX_WAITING_DECODES: Final = 8
"""Requests that may wait for a decode slot, each holding its body (up to 16 MiB); a
request that finds this many already waiting is refused at once (:class:`Busy`, 503 with
``Retry-After``), so a burst holds at most ``MAX_CONCURRENT_DECODES + MAX_WAITING_DECODES``
bodies instead of one for every open connection."""

_MAX_TIME_NS: Final = 2**63 - 1
"""Timestamps above this do not fit the stores' 64-bit signed integers."""
_MAX_DEPTH: Final = 32
"""Nesting of array / kvlist attribute values kept; deeper values become ``None``."""
_MAX_PUBLISHED: Final = 65_536
"""Spans a replica remembers as published live, so that one sent again is not."""

_SPAN_KINDS: Final = {
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}
"""OTLP ``Span.SpanKind`` (UNSPECIFIED = 0 reads as INTERNAL) -> the API's SpanKind."""

_UNSET = Status(StatusCode.UNSET)
_OK = Status(StatusCode.OK)

_FLAGS_HAS_IS_REMOTE: Final = 0x100
_FLAGS_IS_REMOTE: Final = 0x200

PROTOBUF: Final = "protobuf"
JSON: Final = "json"

_HEX = re.compile(r"[0-9a-fA-F]*")
_NOT_AN_ID: Final = b"\x00neither hex nor base64\x00"
"""What an OTLP/JSON id that is neither hex nor base64 becomes before the request is
parsed (its length is no id's), so that the span is rejected with the right reason."""
_NOT_AN_ID_B64: Final = base64.b64encode(_NOT_AN_ID).decode("ascii")


class RateLimitedLog:
    """Warnings about bad requests: at most one line a ``period`` per kind, with the count
    of the ones left out, so a misbehaving client cannot flood the log."""

    def __init__(self, logger: logging.Logger, period: float = 1.0) -> None:
        self._log = logger
        self._period = period
        self._last: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: Any, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -1e9) < self._period:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg += " (%d similar left out)"
            args = (*args, suppressed)
        self._log.warning(msg, *args)


warn: RateLimitedLog = RateLimitedLog(_log)
"""The receiver's warnings about refused requests and rejected spans."""


# -- errors ---------------------------------------------------------------------------------


class IngestError(Exception):
    """A request that is not accepted; ``status`` is the HTTP status to answer with."""

    status = 400


class BadRequest(IngestError):
    """The body cannot be decompressed or decoded (400: the client must not retry)."""

    status = 400


class PayloadTooLarge(IngestError):
    """The body, decompressed, or its span count is over the cap (413)."""

    status = 413


class UnsupportedMediaType(IngestError):
    """A content type or content encoding the receiver does not speak (415)."""

    status = 415


class Overloaded(IngestError):
    """The graph queue has no room for the request now (503: retry later)."""

    status = 503


class IngestClosed(IngestError):
    """The pipeline has been shut down (503)."""

    status = 503


class Busy(IngestError):
    """Every decode slot is taken and :data:`MAX_WAITING_DECODES` requests already wait
    for one (503: retry later)."""

    status = 503


# -- decompression --------------------------------------------------------------------------


def decompress(body: bytes, encoding: str, limit: int = MAX_BODY_BYTES) -> bytes:
    """``body`` decoded per its ``Content-Encoding`` (``identity``, ``gzip``, ``deflate``),
    never more than ``limit`` bytes of output (:class:`PayloadTooLarge` above it, so a zip
    bomb costs at most ``limit`` bytes of memory). Concatenated gzip members are read as
    one body, as Go's and Python's gzip readers do."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise PayloadTooLarge(f"body of {len(body)} bytes is over the {limit} byte limit")
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, members=True)
    if encoding == "deflate":
        # RFC 9110 "deflate" is the zlib format; some clients send raw deflate.
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, members=False)
        except BadRequest:
            return _inflate(body, -zlib.MAX_WBITS, limit, members=False)
    raise UnsupportedMediaType(
        f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or identity"
    )


MAX_GZIP_MEMBERS: Final = 32
"""The most gzip members one body may hold (each member copies the rest of the body:
50 000 empty members in 1 MiB took 1.6 s, 4 MiB 63 s)."""


def _inflate(data: bytes, wbits: int, limit: int, *, members: bool) -> bytes:
    out = bytearray()
    first = True
    count = 0
    while data or first:
        first = False
        count += 1
        if count > MAX_GZIP_MEMBERS:
            raise BadRequest(
                f"gzip body has more than {MAX_GZIP_MEMBERS} members; send one (or a few)"
            )
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(data, limit + 1 - len(out))
            out += chunk
            while d.unconsumed_tail and len(out) <= limit:
                out += d.decompress(d.unconsumed_tail, limit + 1 - len(out))
            if len(out) > limit:
                raise PayloadTooLarge(f"decompressed body is over the {limit} byte limit")
            out += d.flush()
        except zlib.error as exc:
            raise BadRequest(f"body is not valid {_wbits_name(wbits)} data: {exc}") from None
        if len(out) > limit:
            raise PayloadTooLarge(f"decompressed body is over the {limit} byte limit")
        if not d.eof:
            raise BadRequest(f"{_wbits_name(wbits)} body is truncated")
        data = d.unused_data
        if data and not members:
            raise BadRequest(f"trailing bytes after the {_wbits_name(wbits)} stream")
        if data and not data.strip(b"\0"):  # padding some writers leave: ignore it
            break
    return bytes(out)


def _wbits_name(wbits: int) -> str:
    return "gzip" if wbits > zlib.MAX_WBITS else "deflate"


# -- decoding -------------------------------------------------------------------------------


def _request_type() -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return ExportTraceServiceRequest


def decode_protobuf(body: bytes) -> Any:
    """An ``ExportTraceServiceRequest`` from its protobuf encoding (:class:`BadRequest`).

    Text that is not valid UTF-8 (which some senders and Collectors pass along, and which
    protobuf refuses in a whole message) is read with each bad sequence as U+FFFD, so that
    one bad attribute value does not cost every span of the request."""
    request_type = _request_type()
    request = request_type()
    try:
        request.ParseFromString(body)
        return request
    except Exception as exc:  # DecodeError, RecursionError, ... : all mean a bad body
        error = exc
    try:
        mended = mend_utf8(body, request_type.DESCRIPTOR)
    except ValueError:
        mended = None
    if mended is not None and mended != body:
        request = request_type()
        try:
            request.ParseFromString(mended)
            return request
        except Exception:
            pass
    raise BadRequest(f"body is not a valid protobuf ExportTraceServiceRequest: {error}") from None


_TYPE_STRING: Final = 9
_TYPE_MESSAGE: Final = 11
_MAX_MESSAGE_DEPTH: Final = 100
"""Nesting protobuf's own parser accepts."""


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _write_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


_PARSERS: dict[Any, Callable[[bytes], Any]] = {}
_CHECKED_DEPTH: Final = 5
"""Down to a span's attributes, each message is tried with protobuf's parser before it is
walked: a byte is parsed at most this many more times, however deep the nesting."""


def _parses(data: bytes, descriptor: Any) -> bool:
    """Whether protobuf's parser takes ``data`` as a ``descriptor`` message."""
    parse = _PARSERS.get(descriptor)
    if parse is None:
        parse = _PARSERS[descriptor] = message_factory.GetMessageClass(descriptor).FromString
    try:
        parse(data)
    except Exception:  # DecodeError (invalid UTF-8 among them), RecursionError, ...
        return False
    return True


def mend_utf8(data: bytes, descriptor: Any, depth: int = 0) -> bytes:
    """The protobuf encoding ``data`` of a ``descriptor`` message with every string field
    (at any depth) made valid UTF-8: each invalid sequence as U+FFFD. Other fields are
    copied as they are. :class:`ValueError` when ``data`` is not protobuf's wire format.

    Only the messages protobuf's parser refuses are walked field by field here (a request
    of 512 spans with one bad string costs about one more parse, not a walk of all)."""
    if depth > _MAX_MESSAGE_DEPTH:
        raise ValueError("messages nested too deep")
    out = bytearray()
    fields = descriptor.fields_by_number
    i, n = 0, len(data)
    while i < n:
        start = i
        key, i = _read_varint(data, i)
        key_end = i
        wire_type = key & 7
        if wire_type == 0:
            _, i = _read_varint(data, i)
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == 2:
            length, begin = _read_varint(data, i)
            i = begin + length
            if i > n:
                raise ValueError("truncated field")
            field = fields.get(key >> 3)
            if field is not None and field.type in (_TYPE_STRING, _TYPE_MESSAGE):
                payload = data[begin:i]
                if field.type == _TYPE_STRING:
                    fixed = payload.decode("utf-8", "replace").encode()
                elif depth < _CHECKED_DEPTH and _parses(payload, field.message_type):
                    fixed = payload  # valid as it is (protobuf's own parser said so, fast)
                else:
                    fixed = mend_utf8(payload, field.message_type, depth + 1)
                if fixed != payload:
                    out += data[start:key_end]
                    _write_varint(out, len(fixed))
                    out += fixed
                    continue
        else:
            raise ValueError(f"wire type {wire_type}")
        if i > n:
            raise ValueError("truncated field")
        out += data[start:i]
    return bytes(out)


def decode_json(body: bytes, max_spans: int | None = None) -> Any:
    """An ``ExportTraceServiceRequest`` from OTLP/JSON (:class:`BadRequest`).

    OTLP/JSON is proto3's JSON mapping except that trace and span ids are hex strings,
    not base64: they are turned into base64 before ``json_format.ParseDict``. An id that
    is neither hex nor base64 becomes an invalid id, so that its span is rejected alone.
    Unknown fields are ignored, as the OTLP specification requires. Text that is not
    UTF-8, and ``\\ud800``-style escapes of lone surrogates, are read as U+FFFD. With
    ``max_spans``, a document with more spans (or more resource and scope entries) is
    :class:`PayloadTooLarge` before it is converted.
    """
    from google.protobuf import json_format

    try:
        try:
            document = json.loads(body)
        except UnicodeDecodeError:  # not UTF-8: each bad sequence as U+FFFD
            document = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("body is not a JSON object (an ExportTraceServiceRequest)")
    if max_spans is not None:
        _check_size(*_json_counts(document), max_spans)
    for span in _json_spans(document):
        _fix_ids(
            span, ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")
        )
        links = span.get("links")
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict):
                    _fix_ids(link, ("traceId", "trace_id", "spanId", "span_id"))
    request = _request_type()()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        return request
    except Exception as exc:  # ParseError, RecursionError, ... : all mean a bad body
        error = exc
    # "\ud800" escapes are valid JSON but not text protobuf takes: each as U+FFFD; an
    # intValue past int64, or not whole (OpenTelemetry JS writes every integral Number
    # as one: 2**63, 1e21), as the doubleValue it is.
    request = _request_type()()
    try:
        json_format.ParseDict(
            _int_values_mended(mended_value(document)), request, ignore_unknown_fields=True
        )
        return request
    except Exception:
        pass
    raise BadRequest(f"body is not a valid OTLP/JSON ExportTraceServiceRequest: {error}") from None


_INT64: Final = (-(2**63), 2**63 - 1)
_DIGITS: Final = re.compile(r"-?[0-9]+")


def _int_values_mended(document: Any) -> Any:
    """``document`` with each ``intValue`` that no int64 holds (a whole number past its
    range, a fraction, a number in exponent form) given as ``doubleValue``: protobuf
    refuses it, and with it the whole request (every span of the batch, which an
    exporter does not send again after a 400). Changed in place; returned."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in ("intValue", "int_value"):
                if key in item and not _int64(item[key]):
                    number = _number(item.pop(key))
                    if number is not None and number.is_integer() and _int64(int(number)):
                        item[key] = int(number)  # 5.0: the 5 protobuf takes alone
                    elif number is not None:
                        item["doubleValue"] = number
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return document


def _int64(value: Any) -> bool:
    """Whether protobuf takes ``value`` as an int64 of JSON (a whole number in range, as a
    number or a string of digits)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    if isinstance(value, str):  # protobuf's grammar: ASCII digits, a minus sign first
        return _DIGITS.fullmatch(value) is not None and _INT64[0] <= int(value) <= _INT64[1]
    return False


def _number(value: Any) -> float | None:
    """``value`` as a float (``None`` when it is no number: left out)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _json_counts(document: dict[str, Any]) -> tuple[int, int]:
    """ResourceSpans + ScopeSpans entries, and spans, of an OTLP/JSON document."""
    containers = spans = 0
    for rs in _items(document, "resourceSpans", "resource_spans"):
        containers += 1
        if isinstance(rs, dict):
            for ss in _items(rs, "scopeSpans", "scope_spans"):
                containers += 1
                if isinstance(ss, dict):
                    spans += len(_items(ss, "spans"))
    return containers, spans


def _pb_counts(request: Any, max_spans: int) -> tuple[int, int]:
    """ResourceSpans + ScopeSpans entries, and spans, of a decoded request (counting
    stops once either is over ``max_spans``)."""
    containers = spans = 0
    for rs in request.resource_spans:
        containers += 1
        for ss in rs.scope_spans:
            containers += 1
            spans += len(ss.spans)
            if containers > max_spans or spans > max_spans:
                return containers, spans
        if containers > max_spans:
            break
    return containers, spans


def _check_size(containers: int, spans: int, max_spans: int) -> None:
    """:class:`PayloadTooLarge` for a request with more spans, or more resource and scope
    entries, than ``max_spans``: refused before its spans are built, which would cost
    seconds of CPU and hundreds of megabytes for a request of 16 MiB."""
    if spans > max_spans:
        raise PayloadTooLarge(f"more than {max_spans} spans in one request: send smaller batches")
    if containers > max_spans:
        raise PayloadTooLarge(
            f"more than {max_spans} resourceSpans and scopeSpans entries in one request"
        )


def _items(obj: Any, *names: str) -> list[Any]:
    """The list under one of ``names`` (a field's JSON and proto names). Both given is a
    :class:`BadRequest`: the counts would be of one and the request built from the other
    (a 14 MiB document of 5 000 000 spans passed the span cap that way)."""
    found = [name for name in names if name in obj]
    if len(found) > 1:
        raise BadRequest(f"both {found[0]!r} and {found[1]!r} are given; send one")
    value = obj.get(found[0]) if found else None
    return value if isinstance(value, list) else []


def _json_spans(document: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for rs in _items(document, "resourceSpans", "resource_spans"):
        if not isinstance(rs, dict):
            continue
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            if not isinstance(ss, dict):
                continue
            for span in _items(ss, "spans"):
                if isinstance(span, dict):
                    yield span


def _fix_ids(obj: dict[str, Any], names: Sequence[str]) -> None:
    """Hex ids -> base64 in place; ids that are neither hex nor base64 ->
    :data:`_NOT_AN_ID`."""
    for name in names:
        value = obj.get(name)
        if not isinstance(value, str):
            continue  # absent, or a type ParseDict reports itself
        if len(value) % 2 == 0 and _HEX.fullmatch(value):
            obj[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            continue
        try:  # lenient: some old clients sent proto3's base64
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            obj[name] = _NOT_AN_ID_B64


# -- conversion -----------------------------------------------------------------------------


def _any_value(value: Any, depth: int = 0) -> Any:
    """An OTLP ``AnyValue`` as a Python attribute value (``None`` when empty)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":  # as OTLP/JSON and the Collector print bytes: base64
        return base64.b64encode(value.bytes_value).decode("ascii")
    if depth >= _MAX_DEPTH:
        return None
    if which == "array_value":  # an empty item stays, as null: the others keep their places
        return tuple(_any_value(v, depth + 1) for v in value.array_value.values)
    if which == "kvlist_value":
        out = {}
        for kv in value.kvlist_value.values:
            v = _any_value(kv.value, depth + 1)
            if v is not None:
                out[kv.key] = v
        return out
    return None


def _attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    """The attributes with a value, by key; an empty key (invalid in OTel, and warned
    about by the SDK's Resource once per key: a log flood) is left out."""
    out: dict[str, Any] = {}
    for kv in key_values:
        if not kv.key:
            continue
        value = _any_value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


_IDS: Final = frozenset({sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.BRANCH_ID, sc.PROJECT_ID})
"""The id attributes, bounded: too long, the span is rejected (a kind or state that long
is only not one spangraph knows)."""


def _span_attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    """Attributes of a span, with spangraph's own keys made safe for the mapping: the
    keys that become node properties are strings (an empty one is left out, as if unset:
    the graph's indexes cannot find an empty id), and the decision's option lists are
    tuples of strings (other values there would reach the store as they are)."""
    attrs = _attributes(key_values)
    for key in PROMOTED.intersection(attrs):
        value = attrs[key]
        if value == "":
            del attrs[key]
            continue
        if not isinstance(value, str):
            value = attrs[key] = to_json(value) if isinstance(value, tuple | dict) else str(value)
        if len(value) > MAX_ID_CHARS and key in _IDS:
            # copied to every span of the run, and into Redis keys: one 1 MB id made
            # 100 MB of graph properties
            raise InvalidSpan(f"{key} has {len(value)} characters, over {MAX_ID_CHARS}")
    for key in (sc.DECISION_OPTIONS, sc.DECISION_OPTION_SPAN_IDS):
        value = attrs.get(key)
        if value is not None:
            # a single value offers one option (names one explored span), as in process
            items = value if isinstance(value, tuple) else (value,)
            attrs[key] = tuple(v if isinstance(v, str) else to_json(v) for v in items)
    return attrs


_RESOURCE_KEYS: Final = frozenset(
    {sc.SERVICE_NAME, sc.DEPLOYMENT_ENVIRONMENT, "deployment.environment"}
)
_MAX_RESOURCES: Final = 1024
_resources: dict[tuple[tuple[str, str], ...], Resource] = {}


def _resource(key_values: Iterable[Any]) -> Resource:
    """The Resource of a ResourceSpans, with only what spangraph reads of it (service and
    environment), and the same object for the same values (up to ``_MAX_RESOURCES``
    of them). The processors keep every Resource they meet (up to 4 096, see
    ``processors._records``): one per request, with all its attributes, held 400 MB
    after 40 requests of a 10 MB resource attribute."""
    kept = []
    for kv in key_values:
        if kv.key in _RESOURCE_KEYS:
            value = _any_value(kv.value)
            if value is not None:
                kept.append((kv.key, bounded_text(value if isinstance(value, str) else str(value))))
    key = tuple(sorted(kept))
    found = _resources.get(key)
    if found is None:
        found = Resource(dict(key))
        if len(_resources) < _MAX_RESOURCES:
            _resources[key] = found
    return found


class InvalidSpan(ValueError):
    """A span that cannot be ingested (bad ids, timestamps out of range)."""


def _check_id(value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        if value == _NOT_AN_ID:
            raise InvalidSpan(f"{name} is neither hex nor base64")
        if not value:
            raise InvalidSpan(f"{name} is missing")
        raise InvalidSpan(f"{name} has {len(value)} bytes, not {size}")


def _ids(trace_id: bytes, span_id: bytes, what: str) -> tuple[int, int]:
    what = f"{what} " if what else ""
    _check_id(trace_id, 16, f"{what}trace_id")
    _check_id(span_id, 8, f"{what}span_id")
    tid = int.from_bytes(trace_id, "big")
    sid = int.from_bytes(span_id, "big")
    if not tid:
        raise InvalidSpan(f"{what}trace_id is all zero")
    if not sid:
        raise InvalidSpan(f"{what}span_id is all zero")
    return tid, sid


def _time(value: int, what: str) -> int:
    if value > _MAX_TIME_NS:
        raise InvalidSpan(f"{what} is out of range")
    return value


@dataclass(slots=True)
class Decoded:
    """Spans of one request, and what was rejected."""

    spans: list[ReadableSpan]
    rejected: int = 0
    error: str | None = None
    dropped_links: int = 0
    cut_events: int = 0
    cut_links: int = 0
    cut_attributes: int = 0
    warning: str | None = None
    """What was left out of spans that were kept (events, links or attributes over the
    limits)."""
    adjusted_ends: int = 0
    end_warning: str | None = None
    """The first span whose start or end time was missing, or whose end was before its
    start."""

    @property
    def warnings(self) -> str | None:
        """What the client is told about spans that were kept but changed."""
        end = self.end_warning
        if end is not None and self.adjusted_ends > 1:
            end += f" ({self.adjusted_ends} spans in all)"
        return "; ".join(w for w in (self.warning, end) if w) or None


def to_spans(
    request: Any,
    *,
    max_events: int | None = None,
    max_links: int | None = None,
    max_attributes: int | None = None,
) -> Decoded:
    """SDK ``ReadableSpan`` objects of an ``ExportTraceServiceRequest``.

    Spans whose ids are invalid (wrong length, all zero) or whose timestamps do not fit a
    signed 64-bit integer are left out and counted; links with invalid ids are left out
    of their span. A span keeps its last ``max_events`` events and its last
    ``max_links`` links (the SDK's span limits, as the Python SDK keeps them), and its
    first ``max_attributes`` attributes and spangraph's own after them; the rest is
    counted. A span whose end
    time is missing (0) or before its start time ends at its start (duration 0) and is
    counted: the start is kept as the time the work began, and no stored span has a
    negative duration. A span whose span_id an earlier span of the request has is left
    out and counted (one node per span id: the first is kept). The spans come back
    parents first (within the request), so that spans without spangraph's ids inherit
    them from their parents.
    """
    out = Decoded(spans=[])
    spans = out.spans
    seen: set[int] = set()  # span ids of this request: a repeated one is rejected
    for rs in request.resource_spans:
        resource = None
        for ss in rs.scope_spans:
            if not ss.spans:
                continue
            if resource is None:
                resource = _resource(rs.resource.attributes)
            scope = ss.scope
            instrumentation_scope = InstrumentationScope(
                scope.name,
                scope.version or None,
                ss.schema_url or None,
                _attributes(scope.attributes) or None,
            )
            for pb in ss.spans:
                try:
                    span, dropped = _span(
                        pb, resource, instrumentation_scope, max_events, max_links, out,
                        max_attributes,
                    )  # fmt: skip
                except InvalidSpan as exc:
                    out.rejected += 1
                    if out.error is None:
                        out.error = f"span {pb.name[:200]!r}: {exc}"
                    continue
                span_id = span.context.span_id
                if span_id in seen:
                    out.rejected += 1
                    if out.error is None:
                        out.error = (
                            f"span {pb.name[:200]!r}: span_id {span_id:016x} appears more than "
                            "once in the request; the first is kept"
                        )
                    continue
                seen.add(span_id)
                out.dropped_links += dropped
                spans.append(span)
    if len(spans) > 1:
        out.spans = parents_first(spans)
    return out


_OWN_PREFIX: Final = "spangraph."


def _span(
    pb: Any,
    resource: Resource,
    scope: InstrumentationScope,
    max_events: int | None = None,
    max_links: int | None = None,
    out: Decoded | None = None,
    max_attributes: int | None = None,
) -> tuple[ReadableSpan, int]:
    trace_id, span_id = _ids(pb.trace_id, pb.span_id, "")
    flags = pb.flags
    trace_flags = TraceFlags((flags & 0xFF) or TraceFlags.SAMPLED)
    parent = None
    parent_id = pb.parent_span_id
    if parent_id:
        _check_id(parent_id, 8, "parent_span_id")
        pid = int.from_bytes(parent_id, "big")
        if pid == span_id:
            raise InvalidSpan("parent_span_id is the span's own id")
        if pid:  # an all-zero parent id reads as "no parent"
            parent = SpanContext(
                trace_id,
                pid,
                is_remote=bool(flags & _FLAGS_IS_REMOTE) if flags & _FLAGS_HAS_IS_REMOTE else False,
                trace_flags=trace_flags,
            )
    start = _time(pb.start_time_unix_nano, "start_time_unix_nano")
    end = _time(pb.end_time_unix_nano, "end_time_unix_nano")
    # what was adjusted goes into ``out`` once the span is taken (a span rejected below
    # was not stored at all, "stored as ..." would be untrue)
    adjusted = 0
    warning: str | None = None
    if not start:  # (a start in 1970 would spread a run's timeline over 56 years)
        start = end or time.time_ns()
        adjusted += 1
        warning = f"span {pb.name[:200]!r}: start_time_unix_nano is not set; " + (
            "stored as starting at its end (duration 0)"
            if end
            else "stored as starting and ending when it was received"
        )
        end = end or start
    if not end or end < start:
        adjusted += 1
        if warning is None:
            why = "is before start_time_unix_nano" if end else "is not set"
            warning = (
                f"span {pb.name[:200]!r}: end_time_unix_nano {why}; "
                "stored as ending at its start (duration 0)"
            )
        end = start
    pb_events, pb_links, pb_attributes = pb.events, pb.links, pb.attributes
    cut_events = cut_links = cut_attributes = 0
    if max_attributes is not None and len(pb_attributes) > max_attributes:
        # (a span of 250 000 attributes made every run list that held it 4 MB); the ones
        # that carry the run's ids and kind are kept wherever they are
        pb_attributes = [*pb_attributes[:max_attributes], *(
            kv for kv in pb_attributes[max_attributes:] if kv.key.startswith(_OWN_PREFIX)
        )]  # fmt: skip
        cut_attributes = len(pb.attributes) - len(pb_attributes)
    if max_events is not None and len(pb_events) > max_events:
        cut_events = len(pb_events) - max_events
        pb_events = pb_events[cut_events:] if max_events else ()
    if max_links is not None and len(pb_links) > max_links:
        cut_links = len(pb_links) - max_links
        pb_links = pb_links[cut_links:] if max_links else ()  # the last, as the SDK
    events = [
        Event(
            bounded_text(e.name),
            _attributes(e.attributes),
            _time(e.time_unix_nano, "an event's time_unix_nano"),
        )
        for e in pb_events
    ]
    links = []
    dropped = 0
    for link in pb_links:
        try:
            ltid, lsid = _ids(link.trace_id, link.span_id, "link")
        except InvalidSpan:
            dropped += 1
            continue
        links.append(
            Link(
                SpanContext(ltid, lsid, is_remote=True, trace_flags=TraceFlags(link.flags & 0xFF)),
                _attributes(link.attributes),
            )
        )
    code = pb.status.code
    if code == 2:
        status = Status(StatusCode.ERROR, pb.status.message or None)
    elif code == 1:
        status = _OK
    else:
        status = _UNSET
    span = ReadableSpan(
        name=pb.name,
        context=SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace_flags),
        parent=parent,
        resource=resource,
        attributes=_span_attributes(pb_attributes),
        events=events,
        links=links,
        kind=_SPAN_KINDS.get(pb.kind, SpanKind.INTERNAL),
        status=status,
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )
    if out is not None and adjusted:
        out.adjusted_ends += adjusted
        if out.end_warning is None:
            out.end_warning = warning
    if out is not None and (cut_events or cut_links or cut_attributes):
        out.cut_events += cut_events
        out.cut_links += cut_links
        out.cut_attributes += cut_attributes
        if out.warning is None:
            out.warning = f"span {pb.name[:200]!r}: " + (
                f"kept its last {max_events} of {len(pb.events)} events "
                "(OTEL_SPAN_EVENT_COUNT_LIMIT)"
                if cut_events
                else f"kept its last {max_links} of {len(pb.links)} links "
                "(OTEL_SPAN_LINK_COUNT_LIMIT)"
                if cut_links
                else f"kept {len(pb_attributes)} of its {len(pb.attributes)} attributes: "
                f"the first {max_attributes} and spangraph's (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT)"
            )
    return span, dropped


def parents_first(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """``spans`` ordered so that a parent in the list comes before its children (a stable
    sort by depth within the list; cycles are cut anywhere)."""
    by_id = {s.context.span_id: s for s in spans}
    depth: dict[int, int] = {}
    for s in spans:
        chain: list[int] = []
        seen: set[int] = set()
        cur: int | None = s.context.span_id
        while cur is not None and cur in by_id and cur not in depth and cur not in seen:
            seen.add(cur)
            chain.append(cur)
            parent = by_id[cur].parent
            cur = parent.span_id if parent is not None else None
        base = depth.get(cur, -1) if cur is not None else -1
        for i, sid in enumerate(reversed(chain)):
            depth[sid] = base + 1 + i
    return sorted(spans, key=lambda s: depth[s.context.span_id])


# -- the pipeline ---------------------------------------------------------------------------


class DecodeSlots:
    """Turns at decoding, taken by the router on the event loop: ``concurrent`` requests
    decode at a time and at most ``waiting`` more wait for a turn (without a thread);
    a request that finds ``waiting`` requests already waiting is refused at once with
    :class:`Busy`. Used from the event loop only (not thread-safe)."""

    __slots__ = (
        "_semaphore",
        "buffered",
        "limiter",
        "max_buffered",
        "max_waiting",
        "refused",
        "waiting",
    )

    def __init__(self, concurrent: int, waiting: int, max_buffered: int) -> None:
        if concurrent < 1:
            raise ValueError("max_concurrent_decodes must be at least 1")
        if waiting < 0:
            raise ValueError("max_waiting_decodes must not be negative")
        self._semaphore = asyncio.Semaphore(concurrent)
        self.limiter: anyio.CapacityLimiter = anyio.CapacityLimiter(concurrent)
        """Threads the decodes run in: their own, so that queries stuck on the graph store
        (in the thread pool every plain route shares) do not hold up the receiver."""
        self.max_waiting: int = waiting
        self.waiting: int = 0
        """Requests waiting for a turn now."""
        self.refused: int = 0
        """Requests refused because too many were waiting, or too many bytes were held."""
        self.max_buffered: int = max_buffered
        self.buffered: int = 0
        """Bytes of request bodies held now: being received, waiting or decoding."""

    def hold(self, size: int) -> None:
        """Count ``size`` more bytes of a body as held; :class:`Busy` past
        ``max_buffered`` (the caller gives back what it holds with :meth:`give_back`)."""
        if self.buffered + size > self.max_buffered:
            self.refused += 1
            raise Busy(
                f"the OTLP receiver is busy ({self.buffered} bytes of requests are being "
                "received or decoded); retry later"
            )
        self.buffered += size

    def give_back(self, size: int) -> None:
        self.buffered -= size

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold a decode slot for the ``async with`` block; :class:`Busy` when none is
        free and ``max_waiting`` requests already wait."""
        if self._semaphore.locked() and self.waiting >= self.max_waiting:
            self.refused += 1
            raise Busy(
                f"the OTLP receiver is busy ({self.max_waiting} requests wait to be "
                "decoded); retry later"
            )
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()


@dataclass(slots=True)
class ExportResult:
    """What one request came to."""

    accepted: int
    rejected: int
    error: str | None = None
    warning: str | None = None
    """Sent in ``partial_success``: spans kept with a change (events or links cut, an end
    time taken as the start)."""


class OTLPIngest:
    """The OTLP receiver's pipeline: its own :class:`GraphSpanProcessor` on ``store`` and,
    when ``redis_url`` is set, its own :class:`LiveEventProcessor`.

    :meth:`handle` decodes a request body and :meth:`ingest` queues its spans: each span
    goes through ``on_start`` and ``on_end`` of both processors, so the graph writes it
    once (start and end coalesce in one batch) and live subscribers get
    ``span.started``, its events and ``span.ended``. Thread-safe; never waits for the
    graph store or Redis.
    """

    def __init__(
        self,
        settings: Any,
        store: Any,
        redis_url: str | None,
        *,
        max_queue_size: int = MAX_QUEUE_SIZE,
        max_body_bytes: int = MAX_BODY_BYTES,
        shutdown_timeout: float = 15.0,
        max_concurrent_decodes: int = MAX_CONCURRENT_DECODES,
        max_waiting_decodes: int = MAX_WAITING_DECODES,
    ) -> None:
        self.settings = settings
        self.decode_slots: DecodeSlots = DecodeSlots(
            max_concurrent_decodes,
            max_waiting_decodes,
            (max_concurrent_decodes + max_waiting_decodes) * max_body_bytes,
        )
        """Taken by the router while it runs :meth:`handle` (on the event loop's side)."""
        self.max_body_bytes: int = max_body_bytes
        self.max_queue_size: int = max_queue_size
        self.max_spans_per_request: int = max_queue_size // 2
        limits = SpanLimits()  # OTEL_SPAN_EVENT_COUNT_LIMIT, OTEL_SPAN_LINK_COUNT_LIMIT, …
        self.max_events: int | None = limits.max_events
        """Events a span keeps (its last ones), as the SDK's span limits: each event is a
        graph node and a live message, and a span with 400 000 of them (5 MB) made one
        graph write too long for the store's timeout."""
        self.max_links: int | None = limits.max_links
        self.max_attributes: int | None = limits.max_span_attributes
        """Attributes a span keeps (its first ones, and spangraph's own): a span with
        250 000 of them made every run list that held it megabytes."""
        project = getattr(settings, "project", None) or "default"
        self.graph: GraphSpanProcessor = GraphSpanProcessor(
            store,
            project=project,
            max_queue_size=max_queue_size,
            shutdown_timeout=shutdown_timeout,
        )
        self.live: LiveEventProcessor | None = None
        self._publisher: RedisPublisher | None = None
        if redis_url is not None:
            self._publisher = RedisPublisher.from_url(redis_url)
            self.live = LiveEventProcessor(
                self._publisher,
                project=project,
                max_queue_size=max_queue_size,
                shutdown_timeout=min(shutdown_timeout, 5.0),
            )
        # (trace id, span id) of the spans published live lately, the oldest first: a
        # span sent again (a Collector's retry) is written again, idempotently, but not
        # published again (its messages went out under new seq numbers)
        self._published: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._counters = {
            "requests": 0,
            "spans_accepted": 0,
            "spans_rejected": 0,
            "links_dropped": 0,
            "events_over_limit": 0,
            "links_over_limit": 0,
            "attributes_over_limit": 0,
            "end_times_adjusted": 0,
            "requests_overloaded": 0,
        }
        self._errors: dict[int, int] = {}

    # -- requests ---------------------------------------------------------------------------

    def handle(self, body: bytes, fmt: str, encoding: str = "identity") -> ExportResult:
        """Decompress, decode and ingest one request body (``fmt``: :data:`PROTOBUF` or
        :data:`JSON`). Raises an :class:`IngestError` for a request that is refused as a
        whole; spans rejected one by one are counted in the result."""
        raw = decompress(body, encoding, self.max_body_bytes)
        limit = self.max_spans_per_request
        if fmt == JSON:
            request = decode_json(raw, limit)
        else:
            request = decode_protobuf(raw)
            _check_size(*_pb_counts(request, limit), limit)
        decoded = to_spans(
            request,
            max_events=self.max_events,
            max_links=self.max_links,
            max_attributes=self.max_attributes,
        )
        if decoded.warning:
            warn.warning(
                "cut-spans",
                "OTLP: cut %d event(s), %d link(s) and %d attribute(s) over the span "
                "limits; first: %s",
                decoded.cut_events,
                decoded.cut_links,
                decoded.cut_attributes,
                decoded.warning,
            )
        if decoded.end_warning:
            warn.warning(
                "adjusted-ends",
                "OTLP: %d span(s) with no start or end time, or an end before the start, "
                "take one for the other (duration 0); first: %s",
                decoded.adjusted_ends,
                decoded.end_warning,
            )
        if decoded.rejected:
            warn.warning(
                "rejected-spans",
                "OTLP: rejected %d span(s) of a request (%d accepted); first: %s",
                decoded.rejected,
                len(decoded.spans),
                decoded.error,
            )
        accepted = self.ingest(decoded.spans)
        with self._lock:
            self._counters["requests"] += 1
            self._counters["spans_rejected"] += decoded.rejected
            self._counters["links_dropped"] += decoded.dropped_links
            self._counters["events_over_limit"] += decoded.cut_events
            self._counters["links_over_limit"] += decoded.cut_links
            self._counters["attributes_over_limit"] += decoded.cut_attributes
            self._counters["end_times_adjusted"] += decoded.adjusted_ends
        return ExportResult(accepted, decoded.rejected, decoded.error, decoded.warnings)

    def ingest(self, spans: Sequence[ReadableSpan]) -> int:
        """Queue ``spans`` (already ended) on the processors; the number queued.

        All or nothing: raises :class:`Overloaded` when the graph queue has no room for
        all of them (nothing is queued then), :class:`PayloadTooLarge` when they could
        never fit, :class:`IngestClosed` after :meth:`shutdown`. The live processor is
        best effort: what its full queue drops is counted in :meth:`stats`."""
        n = len(spans)
        if not n:
            return 0
        if n > self.max_spans_per_request:
            raise PayloadTooLarge(
                f"{n} spans in one request; at most {self.max_spans_per_request}: "
                "send smaller batches"
            )
        graph, live = self.graph, self.live
        with self._lock:
            if self._closed:
                raise IngestClosed("the OTLP receiver is shutting down")
            room = self.max_queue_size - graph.stats()["queued"]
            if room < 2 * n:
                self._counters["requests_overloaded"] += 1
                raise Overloaded(
                    f"the graph write queue is full ({self.max_queue_size - room} items "
                    "queued); retry later"
                )
            published = self._published
            for span in spans:
                graph.on_start(span, None)  # type: ignore[arg-type]
                graph.on_end(span)
                if live is not None:
                    context = span.context
                    key = (context.trace_id, context.span_id)
                    if key in published:
                        published.move_to_end(key)
                        continue
                    published[key] = None
                    if len(published) > _MAX_PUBLISHED:
                        published.popitem(last=False)
                    live.on_start(span, None)  # type: ignore[arg-type]
                    live.on_end(span)
            self._counters["spans_accepted"] += n
        return n

    def record_error(self, status: int) -> None:
        """Count a request the router refused with ``status``."""
        with self._lock:
            self._errors[status] = self._errors.get(status, 0) + 1

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every span queued before this call is written and published."""
        ok = self.graph.force_flush(int(timeout * 1000))
        if self.live is not None:
            ok = self.live.force_flush(int(timeout * 1000)) and ok
        return ok

    def shutdown(self) -> None:
        """Refuse new requests, write what is queued (within the shutdown timeout), stop
        the workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.graph.shutdown()
        finally:
            if self.live is not None:
                self.live.shutdown()
            if self._publisher is not None:
                self._publisher.close()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, spans accepted and rejected, links dropped, end times
        adjusted, requests refused as overloaded (graph queue full) and as busy (too many
        waiting to be decoded), requests waiting to be decoded now, refused requests by
        HTTP status, and each processor's queue."""
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            out["requests_refused"] = dict(self._errors)
        out["requests_busy"] = self.decode_slots.refused
        out["decodes_waiting"] = self.decode_slots.waiting
        out["graph"] = self.graph.stats()
        out["live"] = self.live.stats() if self.live is not None else None
        return out
