"""LiveEventProcessor: span starts, events and ends streamed to Redis as they happen."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import redis
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .. import semconv as sc
from ..mapping import SpanMapper, live_message, state_of
from ._worker import BatchWorker

_log = logging.getLogger("spangraph")

_START = 0
_END = 1
_EVENT = 2

STREAM_MAXLEN: Final = 10_000
"""Approximate length cap of each workflow's stream (``XADD MAXLEN ~``)."""
KEY_TTL_S: Final = 7 * 24 * 3600
"""Seconds a workflow's stream and sequence counter live after its last event."""

_PUBLISH_LUA: Final = """
local seq = redis.call('INCR', KEYS[1])
local msg = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'data', msg)
redis.call('PUBLISH', ARGV[3], msg)
redis.call('PUBLISH', ARGV[4], msg)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return seq
"""
"""One atomic step per message: number it (INCR), keep it (XADD, stream id ``seq-0``),
publish it on the workflow and project channels. Several hosts of one run therefore
still produce one gap-free ``seq`` order."""


def workflow_channel(workflow_id: str) -> str:
    return f"spangraph:workflow:{workflow_id}"


def project_channel(project_id: str) -> str:
    return f"spangraph:project:{project_id}"


def stream_key(workflow_id: str) -> str:
    return f"spangraph:stream:{workflow_id}"


def seq_key(workflow_id: str) -> str:
    return f"spangraph:seq:{workflow_id}"


class RedisPublisher:
    """Sends prepared live messages to Redis in one pipeline per batch."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(_PUBLISH_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisPublisher:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2))

    def publish(self, messages: list[tuple[str, str, str, str]]) -> None:
        """``messages``: (workflow_id, project_id, head, tail) each."""
        pipe = self.client.pipeline(transaction=False)
        for workflow_id, project_id, head, tail in messages:
            self._script(
                keys=[seq_key(workflow_id), stream_key(workflow_id)],
                args=[
                    head,
                    tail,
                    workflow_channel(workflow_id),
                    project_channel(project_id),
                    STREAM_MAXLEN,
                    KEY_TTL_S,
                ],
                client=pipe,
            )
        pipe.execute()

    def close(self) -> None:
        self.client.close()


_listeners: list[LiveEventProcessor] = []
_listeners_lock = threading.Lock()


def emit_event(span: Any, name: str, attributes: Mapping[str, Any], time_ns: int) -> None:
    """Hand an event that was just added to ``span`` to the live processors.

    spangraph's own instrumentation calls this, so its events go out live as they
    happen; events that other code adds with ``span.add_event`` go out when their span
    ends. Never raises.
    """
    for listener in _listeners:
        listener._on_event(span, name, attributes, time_ns)


class LiveEventProcessor(SpanProcessor):
    """Publishes ``span.started``, every span event and ``span.ended`` to Redis:
    PUBLISH on ``spangraph:workflow:{id}`` and ``spangraph:project:{id}``, XADD to
    ``spangraph:stream:{id}``, each message numbered by Redis (``seq``).

    ``on_start`` and ``on_end`` are called synchronously on the thread that starts or ends
    the span, therefore they do not block or throw an exception: each appends to a
    bounded queue, which a worker thread drains at once, in pipelined batches. While
    Redis is down, batches are retried for ``give_up_after`` seconds, then dropped
    (counted and logged); the client reconnects when Redis returns.
    """

    def __init__(
        self,
        publisher: RedisPublisher,
        *,
        project: str = "default",
        max_queue_size: int = 65_536,
        max_batch_size: int = 512,
        give_up_after: float = 2.0,
    ) -> None:
        self.publisher = publisher
        self._mapper = SpanMapper(project)
        self._sent_live: dict[int, set[tuple[str, int]]] = {}
        self._worker: BatchWorker[tuple[Any, ...], list[tuple[str, str, str, str]]] = BatchWorker(
            "live",
            self._prepare,
            publisher.publish,
            transient=(redis.ConnectionError, redis.TimeoutError, OSError),
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay=0.05,
            eager=True,
            give_up_after=give_up_after,
        )
        self._put = self._worker.put
        with _listeners_lock:
            _listeners.append(self)

    # -- hot path -------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._put(
                (_START, span, time.time_ns() if span.start_time is None else span.start_time)
            )
        except Exception:  # pragma: no cover - never raise into user code
            pass

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._put((_END, span, span.end_time))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    def _on_event(self, span: Any, name: str, attributes: Mapping[str, Any], time_ns: int) -> None:
        try:
            self._put((_EVENT, span, time_ns, name, attributes))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    # -- worker ---------------------------------------------------------------------------

    def _prepare(self, items: list[tuple[Any, ...]]) -> tuple[list[tuple[str, str, str, str]], int]:
        mapper = self._mapper
        out: list[tuple[str, str, str, str]] = []
        sent_live = self._sent_live
        for item in items:
            what, span, time_ns = item[0], item[1], item[2]
            try:
                common = mapper.common(span, span.attributes or {})
                if what == _START:
                    msgs = [live_message(sc.SPAN_STARTED, common, time_ns, span.attributes)]
                elif what == _EVENT:
                    sent_live.setdefault(span.context.span_id, set()).add((item[3], time_ns))
                    msgs = [live_message(item[3], common, time_ns, item[4])]
                else:
                    already = sent_live.pop(span.context.span_id, ())
                    msgs = [
                        live_message(e.name, common, e.timestamp, e.attributes)
                        for e in span.events
                        if (e.name, e.timestamp) not in already
                    ]
                    attrs = dict(span.attributes or {})
                    attrs["state"] = state_of(span, attrs)
                    attrs["duration_ms"] = round(
                        ((span.end_time or 0) - (span.start_time or 0)) / 1e6, 3
                    )
                    msgs.append(
                        live_message(sc.SPAN_ENDED, common, time_ns or time.time_ns(), attrs)
                    )
            except Exception:
                _log.exception(
                    "spangraph live: could not map an item of span %r; skipped",
                    getattr(span, "name", "?"),
                )
                continue
            wf, project = common["workflow_id"], common["project_id"]
            out.extend((wf, project, head, tail) for head, tail in msgs)
        if len(sent_live) > 100_000:  # spans that never ended (dropped ends): forget them
            sent_live.clear()
        return out, len(out)

    # -- SpanProcessor ------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._worker.flush(timeout_millis / 1000)

    def shutdown(self) -> None:
        with _listeners_lock:
            if self in _listeners:
                _listeners.remove(self)
        self._worker.shutdown()

    def stats(self) -> dict[str, Any]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return self._worker.stats()
