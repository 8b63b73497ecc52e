"""OTLP/HTTP trace receiver: ``POST /v1/traces``, as the OTLP specification describes it.

- ``Content-Type: application/x-protobuf`` (binary protobuf) or ``application/json``
  (OTLP/JSON: hex trace and span ids); anything else is 415.
- ``Content-Encoding: gzip`` or ``deflate`` (or none); anything else is 415.
- The body is read as a stream and capped (``Content-Length`` is checked first, then the
  bytes actually read, then the decompressed size): 413 above the cap.
- 200 with an ``ExportTraceServiceResponse`` in the request's encoding: empty when every
  span was accepted, with ``partial_success`` (rejected count and first error) when some
  spans were rejected (invalid ids, timestamps out of range), or with only its
  ``error_message`` when spans were kept with a change: events or links over the span
  limits left out, an end time that was missing or before the start taken as the start.
  With both, ``error_message`` names the first rejected span, then the changes.
- 400 for a body that does not decode, 503 (with ``Retry-After``) while the graph write
  queue is full, while every decode slot is taken and
  :data:`~spangraph.server.ingest.MAX_WAITING_DECODES` requests already wait for one, or
  while the service is shutting down. Every 4xx/5xx body this module writes
  is a ``google.rpc.Status`` (protobuf, or JSON for JSON requests); the 401 of the
  bearer-token check is the service's usual JSON ``detail``.

Decoding runs in the thread pool, never on the event loop, and at most
:data:`~spangraph.server.ingest.MAX_CONCURRENT_DECODES` requests at a time (up to
:data:`~spangraph.server.ingest.MAX_WAITING_DECODES` others wait on the event loop);
queueing never waits for the graph store (see :mod:`spangraph.server.ingest`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Final

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from .ingest import (
    JSON,
    PROTOBUF,
    ExportResult,
    IngestError,
    OTLPIngest,
    warn,
)

_log = logging.getLogger("spangraph.server.otlp")

router: APIRouter = APIRouter(tags=["otlp"])

CONTENT_TYPES: Final = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}
"""Media types accepted, and how each is decoded."""
ENCODINGS: Final = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
"""``Content-Encoding`` values accepted."""
DRAIN_BYTES: Final = 64 * 1024 * 1024
"""A body over the cap is still read (and discarded) up to this many more bytes before the
413 goes out, so that a client that writes its whole body first reads the answer instead
of a reset connection; a longer body has its connection closed."""
RETRY_AFTER_S: Final = "2"
BODY_TIMEOUT: Final = 60.0
"""Seconds a request body may take to arrive (408 after them): a body trickling in, or
stalled, holds its bytes meanwhile."""

_MEDIA: Final = {PROTOBUF: "application/x-protobuf", JSON: "application/json"}
_RPC_CODES: Final = {400: 3, 401: 16, 408: 4, 413: 8, 415: 3, 500: 13, 503: 14}
"""HTTP status -> google.rpc.Code (INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED,
INTERNAL, UNAVAILABLE)."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def status_body(fmt: str, code: int, message: str) -> bytes:
    """A ``google.rpc.Status {code, message}`` in protobuf or JSON (encoded by hand:
    the server does not need googleapis-common-protos for two fields)."""
    if fmt == JSON:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode("utf-8", "replace")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _error(
    fmt: str, status: int, message: str, ingest: OTLPIngest | None = None, **headers: str
) -> Response:
    if ingest is not None:
        ingest.record_error(status)
    return Response(
        status_body(fmt, _RPC_CODES.get(status, 2), message),
        status_code=status,
        media_type=_MEDIA[fmt],
        headers=headers or None,
    )


def success_body(fmt: str, result: ExportResult) -> bytes:
    """The ``ExportTraceServiceResponse`` of an accepted request."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTracePartialSuccess,
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if result.rejected:
        message = result.error or "some spans were rejected"
        if result.warning:
            message += f"; {result.warning}"
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=result.rejected, error_message=message[:1000])
        )
    elif result.warning:  # all accepted, with a warning: rejected_spans stays 0 (OTLP spec)
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(error_message=result.warning[:1000])
        )
    if fmt == JSON:
        from google.protobuf import json_format

        return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()
    return response.SerializeToString()


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


async def _drain(request: Request, stream: Any, budget: int) -> None:
    """Read and discard what is left of the body, up to ``budget`` bytes and for at most
    :data:`BODY_TIMEOUT` seconds."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in stream:
                budget -= len(chunk)
                if budget < 0:
                    return
    except (ClientDisconnect, TimeoutError):
        return


@router.post(
    "/v1/traces",
    summary="OTLP/HTTP trace receiver (protobuf or JSON, gzip)",
    response_class=Response,
    responses={
        200: {"description": "ExportTraceServiceResponse (maybe with partial_success)"},
        400: {"description": "the body does not decode (google.rpc.Status)"},
        408: {"description": "the body did not arrive in time"},
        413: {"description": "body over the size cap"},
        415: {"description": "unsupported Content-Type or Content-Encoding"},
        500: {"description": "an internal error while ingesting the request (google.rpc.Status)"},
        503: {
            "description": "write queue full, too many requests waiting to be decoded or "
            "bytes being received, or shutting down: retry after Retry-After"
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def export_traces(request: Request) -> Response:
    ingest: OTLPIngest | None = getattr(request.app.state, "ingest", None)
    media = _media_type(request.headers.get("content-type"))
    fmt = CONTENT_TYPES.get(media)
    if fmt is None:
        fmt_err = JSON if media.endswith("json") else PROTOBUF
        warn.warning(415, "OTLP: 415 from %s: Content-Type %r", _client(request), media)
        return _error(
            fmt_err,
            415,
            f"unsupported Content-Type {media!r}; use application/x-protobuf or application/json",
            ingest,
        )
    if ingest is None:  # the lifespan has not run (or failed)
        return _error(fmt, 503, "the OTLP receiver is not running", None, **{"Retry-After": "5"})
    encoding = (request.headers.get("content-encoding") or "").strip().lower()
    if encoding not in ENCODINGS:
        warn.warning(415, "OTLP: 415 from %s: Content-Encoding %r", _client(request), encoding)
        return _error(
            fmt,
            415,
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none",
            ingest,
        )
    limit = ingest.max_body_bytes
    too_large = f"request body is over the {limit} byte limit"
    declared = request.headers.get("content-length")
    stream = request.stream()
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            return _error(fmt, 400, f"bad Content-Length {declared!r}", ingest)
        if length > limit:
            warn.warning(413, "OTLP: 413 from %s: Content-Length %d", _client(request), length)
            if length - limit <= DRAIN_BYTES:
                await _drain(request, stream, DRAIN_BYTES + limit)
            return _error(fmt, 413, too_large, ingest, Connection="close")
    slots = ingest.decode_slots
    body = bytearray()
    held = 0  # bytes of this body counted in slots.buffered
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in stream:
                body += chunk
                if len(body) > limit:
                    warn.warning(
                        413, "OTLP: 413 from %s: body over %d bytes", _client(request), limit
                    )
                    del body
                    await _drain(request, stream, DRAIN_BYTES)
                    return _error(fmt, 413, too_large, ingest, Connection="close")
                slots.hold(len(chunk))
                held += len(chunk)
        async with slots.turn():
            result = await anyio.to_thread.run_sync(
                ingest.handle, bytes(body), fmt, encoding, limiter=slots.limiter
            )
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is there to read it
    except TimeoutError:
        warn.warning(408, "OTLP: 408 from %s: body not received in time", _client(request))
        detail = f"the request body did not arrive within {BODY_TIMEOUT:g} s"
        return _error(fmt, 408, detail, ingest, Connection="close")
    except IngestError as exc:
        warn.warning(exc.status, "OTLP: %d from %s: %s", exc.status, _client(request), exc)
        headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else {}
        if exc.status == 503 and held < len(body):  # refused while it was still coming
            headers["Connection"] = "close"
        return _error(fmt, exc.status, str(exc), ingest, **headers)
    except Exception:
        _log.exception("OTLP: could not ingest a request from %s", _client(request))
        return _error(fmt, 500, "internal error while ingesting the request", ingest)
    finally:
        slots.give_back(held)
    return Response(success_body(fmt, result), status_code=200, media_type=_MEDIA[fmt])
