"""``spangraph query events|replay``: the events of a run's spans still running (their
process may have died), which the graph has only once they end, from the run's live
stream in Redis."""

from __future__ import annotations

import json
from typing import Any

from . import queries
from . import semconv as sc
from ._terminal import printable
from .config import ENV_REDIS_URL, Settings, redact_url
from .embedded import EmbeddedServer
from .mapping import event_type

FROM_GRAPH = "graph"
FROM_LIVE = "live"
_NOT_EVENTS = frozenset({sc.SPAN_STARTED, sc.SPAN_ENDED, sc.TOKEN})
"""Live message types that are no span events (tokens are never written to the graph)."""
_STREAM_CHUNK = 1_000


class NoStream(Exception):
    """The run's live stream cannot be read; the message says why."""


def live_events(
    store: Any, settings: Settings, workflow_id: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The live messages of the events of the run's spans still running in the graph
    (whose events the graph gets when they end: never, when their process died), from
    the run's live stream, in its order; and the line to print on stderr when some of
    those spans' events cannot be had from it, else ``None``. No span running: nothing
    is read."""
    started, ended = queries.replayed_spans(store, workflow_id)
    running = started - ended
    if not running:
        return [], None
    try:
        messages = _read_stream(settings, workflow_id)
    except NoStream as exc:
        return [], _not_in_graph(len(running), workflow_id, str(exc))
    events = [
        m
        for m in messages
        if m.get("span_id") in running
        and m.get("type") not in _NOT_EVENTS
        and isinstance(m.get("type"), str)
        and type(m.get("time_unix_nano")) is int
    ]
    have_start = {m.get("span_id") for m in messages if m.get("type") == sc.SPAN_STARTED}
    lost = len(running - have_start)
    if not lost:
        return events, None
    if messages:
        why = (
            f"the run's live stream lacks the start of {'it' if lost == 1 else 'them'} "
            "(trimmed, or recorded with live events off): shown are the events it holds"
        )
    else:
        why = (
            "the run's live stream is gone (expired, or the run was recorded with live "
            "events off): shown is what the graph has"
        )
    return events, _not_in_graph(lost, workflow_id, why)


def _not_in_graph(count: int, workflow_id: str, why: str) -> str:
    """The line saying that ``count`` spans of the run still run and ``why`` their
    events are not shown."""
    if count == 1:
        said = (
            f"1 span of run {workflow_id} is still running (or its process died): "
            "its events are not in the graph until it ends"
        )
    else:
        said = (
            f"{count} spans of run {workflow_id} are still running (or their process "
            "died): their events are not in the graph until they end"
        )
    return printable(f"spangraph: {said}, and {why}")


def live_url(settings: Settings) -> str:
    """The URL of the Redis that holds the runs' live streams; :class:`NoStream` (why
    not) when live events are off or the embedded server is not running."""
    if not settings.live_enabled:
        raise NoStream(f"live events are off ({ENV_REDIS_URL}=off)")
    if settings.redis_is_embedded:
        info = EmbeddedServer(settings.home).status()
        if info is None:
            raise NoStream(
                f"the embedded server of {settings.home}, which holds the runs' live streams, "
                "is not running"
            )
        return info.redis_url
    return settings.redis_url


def _read_stream(settings: Settings, workflow_id: str) -> list[dict[str, Any]]:
    """Every message of the run's live stream (``spangraph:stream:{workflow_id}``), in
    order; :class:`NoStream` when it cannot be read."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .processors.live import stream_key

    try:
        url = live_url(settings)
    except NoStream as exc:
        raise NoStream(f"{exc}: shown is what the graph has") from None
    entries: list[Any] = []
    client = None
    try:  # (options of the URL redis-py refuses, when it makes the client or connects)
        client = redis.Redis.from_url(
            url, socket_connect_timeout=3, socket_timeout=10, retry=Retry(NoBackoff(), 1)
        )
        start: bytes | str = "-"
        while True:
            rows: Any = client.xrange(stream_key(workflow_id), start, "+", _STREAM_CHUNK)
            entries.extend(rows)
            if len(rows) < _STREAM_CHUNK:
                break
            start = b"(" + rows[-1][0]
    except (redis.RedisError, OSError, ValueError, TypeError) as exc:
        raise NoStream(
            f"the run's live stream cannot be read (Redis at {redact_url(url)}: {exc}): "
            "shown is what the graph has"
        ) from None
    finally:
        if client is not None:
            client.close()
    messages = []
    for _, fields in entries:
        try:
            message = json.loads(fields.get(b"data", b""))
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


_MESSAGE_FIELDS = (
    *("type", "workflow_id", "project_id", "trace_id", "span_id", "parent_span_id", "kind"),
    *("name", "time_unix_nano", "timestamp", "attributes", "service", "env", "seq"),
)
"""The fields of a replay's message (:func:`spangraph.queries.replay`), in its order."""


def with_live(
    rows: list[dict[str, Any]], live: list[dict[str, Any]], *, replay: bool
) -> list[dict[str, Any]]:
    """The graph's ``rows`` (of ``query events``, or of ``query replay`` when ``replay``)
    with those of the live messages ``live`` (:func:`_live_events`) that the graph lacks,
    in time order, each marked ``from``: ``graph`` or ``live``. A replay is numbered
    anew, as the graph's is."""
    time_of = "time_unix_nano" if replay else "time_ns"

    def as_live(row: dict[str, Any]) -> tuple[Any, Any, Any]:  # as a live message names it
        kind = row.get("type") if replay else event_type(row.get("name"))
        return (row.get("span_id"), kind, row.get(time_of))

    have = {as_live(row) for row in rows}
    for row in rows:
        row["from"] = FROM_GRAPH
    added = [m for m in live if (m["span_id"], m["type"], m["time_unix_nano"]) not in have]
    if not added:
        return rows
    merged = rows + [_message_row(m) if replay else _event_row(m) for m in added]

    def order(row: dict[str, Any]) -> tuple[bool, int, int, str]:
        at = row.get(time_of)
        if replay:  # at one time: a span's start, its events, its end
            return (at is None, at or 0, queries.replay_rank(str(row.get("type"))), "")
        return (at is None, at or 0, 1, str(row.get("span_id")))  # as the graph orders them

    merged.sort(key=order)  # (stable: the graph's and the stream's own order kept)
    if replay:
        for seq, message in enumerate(merged, start=1):
            message["seq"] = seq
    return merged


def _message_row(message: dict[str, Any]) -> dict[str, Any]:
    """A live message as a replay's message."""
    row = {k: message.get(k) for k in _MESSAGE_FIELDS}
    if not isinstance(row["attributes"], dict):
        row["attributes"] = {}
    return {**row, "from": FROM_LIVE}


def _event_row(message: dict[str, Any]) -> dict[str, Any]:
    """A live message as a row of ``query events``."""
    attributes = message.get("attributes")
    return {
        "span_id": message["span_id"],
        "span_name": message.get("name"),
        "kind": message.get("kind"),
        "seq": None,  # (an event's place among its span's: only the graph has all of them)
        "name": _event_name(message["type"]),
        "time_ns": message["time_unix_nano"],
        "attributes": attributes if isinstance(attributes, dict) else {},
        "from": FROM_LIVE,
    }


def _event_name(message_type: str) -> str:
    """An event's name from its live message type (``event.span.started``: an event
    another program named ``span.started``, see :func:`~spangraph.mapping.event_type`)."""
    inner = message_type.removeprefix("event.")
    return inner if inner in (sc.SPAN_STARTED, sc.SPAN_ENDED) else message_type
