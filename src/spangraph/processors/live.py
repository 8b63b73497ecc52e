"""LiveEventProcessor: span starts, events and ends streamed to Redis as they happen."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.trace import SpanLimits

from .. import semconv as sc
from .._redis_replies import is_passing
from .._utf8 import mended
from ..exceptions import LiveUnavailableError
from ..mapping import (
    COMMON_ATTRIBUTES,
    LIVE_ONLY_EVENTS,
    SpanMapper,
    _time_ns,
    attributes_of,
    event_type,
    live_message,
    live_message_parts,
    state_of,
)
from ._records import RESOURCES, attributes_of_start, copy_record, rebuild, snapshot
from ._worker import BatchWorker, QueueingSpanProcessor, ends_a_run

if TYPE_CHECKING:  # redis is imported when a publisher is made: `import spangraph` stays light
    import redis

_hiredis_pack: Callable[..., bytes] | None
try:  # redis-py's C companion (``redis[hiredis]``): packs a command in C
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - only where hiredis could not be installed
    _hiredis_pack = None

_log = logging.getLogger("spangraph")

_START = 0
_END = 1
_START_ATTRIBUTES = 8
"""Index of the attributes in a START record (see ``_records``)."""
_EVENT = 2
_SKIP: Final = (None, None, None)
"""An item of a batch that could not be read (skipped, logged)."""

STREAM_MAXLEN: Final = 10_000
"""Approximate length cap of each workflow's stream (``XADD MAXLEN ~``)."""
KEY_TTL_S: Final = 7 * 24 * 3600
"""Seconds a workflow's stream and sequence counter live after its last event."""
RUN_ENDED_TTL_S: Final = 24 * 3600
"""Seconds a workflow's stream (not its counter) lives after the end of the run's top
workflow span, the last message of a run (a process that goes on with the run later
gives it ``KEY_TTL_S`` again with its next message). Every run kept its stream for a
week: 20 KB a run, gigabytes of Redis in a busy week."""

_PUBLISH_LUA: Final = """
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'EX', 60) then
  return 1
end
local maxlen, keep = ARGV[1], ARGV[2]
local nw = tonumber(ARGV[3])
local tbase = 3 + nw
local pbase = 4 + 2 * nw
local used = {}
for i = pbase + tonumber(ARGV[pbase]) + 1, #ARGV, 4 do
  local w = tonumber(ARGV[i])
  local seq = redis.call('INCR', KEYS[2 * w - 1])
  local msg = ARGV[i + 2] .. seq .. ARGV[i + 3]
  redis.call('XADD', KEYS[2 * w], 'MAXLEN', '~', maxlen, seq .. '-0', 'data', msg)
  redis.call('PUBLISH', ARGV[3 + w], msg)
  redis.call('PUBLISH', ARGV[pbase + tonumber(ARGV[i + 1])], msg)
  used[w] = true
end
for w in pairs(used) do
  redis.call('EXPIRE', KEYS[2 * w - 1], keep)
  redis.call('EXPIRE', KEYS[2 * w], ARGV[tbase + w])
end
return 0
"""
"""For each message in order: number it (INCR), keep it (XADD, stream id ``seq-0``),
publish it on the workflow and project channels; then renew the TTL of the keys it
touched: :data:`KEY_TTL_S` for the counter, and for the stream too unless the
workflow's last message of the call ends its run (then :data:`RUN_ENDED_TTL_S`: a run
that goes on later keeps its ``seq`` order, its stream starts again past 1, and replays
come from the graph). Several hosts of one run therefore still produce one gap-free
``seq`` order.

A call runs once: its first key, ``spangraph:sent:{random id}`` (kept 60 s), marks it
done, and the same call sent again after its reply was lost (the connection dropped after
the write) does nothing and answers 1; without it, each of its messages would go out a
second time under a new ``seq``.

One call carries up to :data:`_CHUNK` messages (a call per message cost about as much
again in the client and in Redis as the work itself). ``KEYS``: the seq and stream key of
each workflow of the call, in pairs, then the call's ``spangraph:sent:`` key. ``ARGV``:
maxlen, the counters' TTL, the number of workflows, their channels, their streams' TTLs,
the number of projects and their channels, then four values a message: workflow index,
project index (both 1-based), head and tail of the message."""

_CHUNK: Final = 256
"""Most messages one script call publishes (bounds how long Redis runs one call)."""

_PUBLISH_SHA: Final = hashlib.sha1(_PUBLISH_LUA.encode(), usedforsecurity=False).hexdigest()


def workflow_channel(workflow_id: str) -> str:
    return f"spangraph:workflow:{workflow_id}"


def project_channel(project_id: str) -> str:
    return f"spangraph:project:{project_id}"


def stream_key(workflow_id: str) -> str:
    return f"spangraph:stream:{workflow_id}"


def seq_key(workflow_id: str) -> str:
    return f"spangraph:seq:{workflow_id}"


Message = tuple[str, str, str, str] | tuple[str, str, str, str, bool]
"""``(workflow_id, project_id, head, tail)``, and ``True`` when it ends its run (the end
of the run's root workflow span)."""


def _script_args(messages: list[Message]) -> tuple[Any, ...]:
    """``numkeys, *KEYS, *ARGV`` of one call of :data:`_PUBLISH_LUA`."""
    workflows: dict[str, int] = {}
    ttls: dict[str, int] = {}
    projects: dict[str, int] = {}
    keys: list[str] = []
    body: list[Any] = []
    for message in messages:
        workflow_id, project_id, head, tail = message[:4]
        w = workflows.get(workflow_id)
        if w is None:
            w = workflows[workflow_id] = len(workflows) + 1
            keys += (seq_key(workflow_id), stream_key(workflow_id))
        ttls[workflow_id] = RUN_ENDED_TTL_S if message[4:] == (True,) else KEY_TTL_S
        p = projects.get(project_id)
        if p is None:
            p = projects[project_id] = len(projects) + 1
        body += (w, p, head, tail)
    keys.append(f"spangraph:sent:{os.urandom(12).hex()}")  # unique, even across forks
    return (
        len(keys),
        *keys,
        STREAM_MAXLEN,
        KEY_TTL_S,
        len(workflows),
        *map(workflow_channel, workflows),
        *ttls.values(),  # (in the workflows' order: first seen)
        len(projects),
        *map(project_channel, projects),
        *body,
    )


_attributes_of = attributes_of  # the name this module used to define it under

_MAX_KEPT: Final = 16_384
"""Most open spans whose mapping a LiveEventProcessor keeps between batches (the least
recently used goes first)."""

_MAX_OPEN: Final = 100_000
"""Most spans a LiveEventProcessor remembers as open (and with events sent live): past
it the one open the longest goes first, whichever run it is of (most often a span whose
end never came: a dropped end, a span never ended)."""


_MAX_SENT_EVENTS: Final = 1_000_000
"""Most events a LiveEventProcessor remembers as sent live, all open spans together: past
it the span open the longest forgets them (its end sends them again). Spans never ended
that each had many events sent grew this by about 200 bytes an event, without bound."""


def _sent_per_span() -> int:
    try:
        return max(SpanLimits().max_events or 0, 1024)
    except ValueError:  # a bad OTEL_SPAN_EVENT_COUNT_LIMIT: configure() names it
        return 1024


_SENT_PER_SPAN: Final = _sent_per_span()
"""Events of one open span remembered as sent live (so that its end does not send them
again), for a span whose own event limit is unknown: a span keeps its last
``OTEL_SPAN_EVENT_COUNT_LIMIT`` events (128) only, so older ones cannot come back with its
end; a long span's events grew this for ever."""


def events_kept(span: Any) -> int | None:
    """Events of ``span`` to remember as sent live: as many as it keeps itself (its
    TracerProvider's ``SpanLimits.max_events``; ``None``: all of them), at least 1 024;
    :data:`_SENT_PER_SPAN` for a span that does not say. Remembering fewer than the span
    keeps sent the others again at its end."""
    limits = getattr(span, "_limits", None)  # the SDK's spans
    if limits is None:
        return _SENT_PER_SPAN
    kept = getattr(limits, "max_events", _SENT_PER_SPAN)
    return None if kept is None else max(kept, 1024)


Mapped = tuple[dict[str, Any], tuple[str, str]]
"""A span's ``common`` properties and their :func:`live_message_parts`."""


class RedisPublisher:
    """Sends prepared live messages to Redis in one write per batch.

    The script calls of a batch are packed in one piece (by ``hiredis`` where it is
    installed: redis-py's own packer takes 1.4 µs an argument, most of the client's work
    for a batch) and written at once on a connection of the client's pool; the replies
    are read in order."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: redis.Redis = client
        # The batch being sent and its calls, kept until it went out: a batch retried after
        # a dropped connection is sent as the same calls, which Redis runs at most once.
        self._unsent: tuple[list[Message], list[tuple[Any, ...]]] | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisPublisher:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2))

    def check_connections(self, check: Callable[[Any], None]) -> None:
        """Have every connection from now on pass ``check`` (a redis-py
        ``redis_connect_func``: it connects, and raises ``ConnectionError`` to refuse the
        server): the client is made anew (its pooled connections would reconnect
        without it). Before the publisher is used."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs = self.client.connection_pool.connection_kwargs
        kwargs["redis_connect_func"] = check
        # a refusal reaches the worker at once, which follows the server (redis-py
        # would try the same port again with backoff for seconds: past give_up_after)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        self.move_to(kwargs.get("port", 6379))

    def move_to(self, port: int) -> None:
        """Send to ``port`` of the same host from now on (the embedded server came back on
        another port). Called by the thread that publishes."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs = self.client.connection_pool.connection_kwargs
        client = redis.Redis(
            host=kwargs.get("host", "localhost"),
            port=port,
            db=kwargs.get("db", 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            socket_timeout=kwargs.get("socket_timeout"),
            socket_connect_timeout=kwargs.get("socket_connect_timeout"),
            redis_connect_func=kwargs.get("redis_connect_func"),
            retry=kwargs.get("retry") or Retry(NoBackoff(), 0),
        )
        old, self.client = self.client, client
        old.close()

    def publish(self, messages: list[Message]) -> None:
        """``messages``: (workflow_id, project_id, head, tail) each, published in order.

        The same list published again after an error (as the worker retries a batch) is
        sent as the same script calls: those Redis already ran are not run twice."""
        import redis

        unsent = self._unsent
        if unsent is not None and unsent[0] is messages:
            calls = unsent[1]
        else:
            calls = [
                ("EVALSHA", _PUBLISH_SHA, *_script_args(messages[i : i + _CHUNK]))
                for i in range(0, len(messages), _CHUNK)
            ]
            self._unsent = (messages, calls)
        for attempt in range(2):
            results = self._send(calls)
            missing = [
                args
                for args, result in zip(calls, results, strict=True)
                if isinstance(result, redis.exceptions.NoScriptError)
            ]
            for result in results:
                if isinstance(result, Exception) and not isinstance(
                    result, redis.exceptions.NoScriptError
                ):
                    if is_passing(result):  # a full disk, maxmemory: retried, not dropped
                        raise LiveUnavailableError(f"Redis cannot take writes now: {result}")
                    raise result
            if not missing:
                self._unsent = None
                return
            if attempt == 0:  # a new or restarted Redis: load the script, send those again
                self.client.script_load(_PUBLISH_LUA)
                calls = missing
        raise redis.exceptions.NoScriptError("the publish script could not be loaded")

    def _send(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``calls`` in one write and read their replies: each reply, or the
        ``ResponseError`` Redis answered with. A connection that fails is closed."""
        import redis

        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            try:
                packed = self._pack(conn, calls)
            except UnicodeEncodeError:  # a lone surrogate: sent as U+FFFD, not dropped
                packed = self._pack(conn, [mended(call) for call in calls])
            results: list[Any] = []
            try:
                conn.send_packed_command(packed)
                for _ in calls:  # every reply is read: the connection stays in step
                    try:
                        results.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        results.append(exc)
            except BaseException:
                conn.disconnect()
                raise
            return results
        finally:
            pool.release(conn)

    @staticmethod
    def _pack(conn: Any, calls: list[tuple[Any, ...]]) -> Any:
        if _hiredis_pack is not None:
            return [b"".join([_hiredis_pack(call) for call in calls])]
        return conn.pack_commands(calls)  # pragma: no cover - hiredis not installed

    def close(self) -> None:
        self.client.close()


_listeners: list[LiveEventProcessor] = []
_listeners_lock = threading.Lock()


def emit_event(span: Any, name: str, attributes: Mapping[str, Any], time_ns: int) -> None:
    """Hand an event that was just added to ``span`` to the live processors.

    spangraph's own instrumentation calls this, so its events go out live as they
    happen; events that other code adds with ``span.add_event`` go out when their span
    ends. An event of a span that records nothing (one its sampler dropped, or one that
    has ended) is not sent: the span did not take it either. Never raises.
    """
    try:
        if not span.is_recording():
            return
    except Exception:
        return
    for listener in _listeners:
        listener._on_event(span, name, attributes, time_ns)


class LiveEventProcessor(QueueingSpanProcessor):
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
        shutdown_timeout: float = 5.0,
    ) -> None:
        import redis

        self.publisher = publisher
        self._mapper = SpanMapper(project)
        self._known: dict[int, Any] = RESOURCES  # resource key -> Resource (see _records)
        # span id -> the (name, time) of its events already sent live, the last ones only
        self._sent_live: OrderedDict[int, OrderedDict[tuple[str, int], None]] = OrderedDict()
        self._sent_count = 0  # events in _sent_live, all spans together
        # spans whose start this processor saw, the longest open first (worker only)
        self._open: OrderedDict[int, None] = OrderedDict()
        # span id -> (its resource, (name, trace id, parent, the attributes common()
        # reads), lineage entry of its parent, Mapped) of open spans, from their start to
        # their end (worker only), the least recently used first
        self._kept: OrderedDict[int, tuple[Any, tuple[Any, ...], Any, Mapped]] = OrderedDict()
        self._worker: BatchWorker[tuple[Any, ...], list[Message]] = BatchWorker(
            "live",
            self._prepare,
            publisher.publish,
            transient=(redis.ConnectionError, redis.TimeoutError, OSError, LiveUnavailableError),
            max_queue_size=max_queue_size,
            max_batch_size=min(max_batch_size, max_queue_size),  # a batch fits the queue
            schedule_delay=0.05,
            eager=True,
            give_up_after=give_up_after,
            keep_when_full=ends_a_run,  # a run's end, past a full queue (a reserve)
            # one thread maps and publishes: at the event rates live streams carry, a
            # hand-over to a sending thread costs more CPU and latency than it saves
        )
        self._put = self._worker.put
        self._shutdown_timeout = shutdown_timeout
        self._fast_path()
        with _listeners_lock:
            _listeners.append(self)

    def _take_over(self, replaced: LiveEventProcessor) -> None:
        """Go on from ``replaced`` (a configuration ``configure()`` replaced, shut down):
        the spans it saw start and the events it published of spans still open, so that
        at their end those are not published again, under new seq numbers."""
        self._open.update(replaced._open)
        self._sent_live.update(replaced._sent_live)
        self._sent_count = sum(map(len, self._sent_live.values()))

    # -- hot path -------------------------------------------------------------------------

    # on_start / on_end: QueueingSpanProcessor's. They copy the span's raw fields into a
    # record (in C where spangraph._speedups was built, see _records) and let the span go
    # at once: spans held in the queue would survive into the old generations of the
    # program's garbage collector. A span no copy can read goes as it is.

    _ITEMS_WITH_TIME = True  # (what, record, start or end time): see _queue_span

    def _queue_span(self, what: int, span: Any) -> None:
        try:
            record = copy_record(what, span, self._known)
            if record is not None:
                self._put(self._item(what, record))
            elif what == _START:  # the span itself, where no copy could read it
                self._put((what, span, span.start_time or time.time_ns()))
            else:
                self._put((what, span, span.end_time))
        except Exception:  # never raise into user code: a span that cannot be read
            with contextlib.suppress(Exception):
                self._worker._count_drop(1, "a span that could not be read")

    @staticmethod
    def _item(what: int, record: tuple[Any, ...]) -> tuple[Any, ...]:
        return (what, record, (record[7] or time.time_ns()) if what == _START else record[8])

    def _on_event(
        self, span: Any, name: str, attributes: Mapping[str, Any], time_ns: int, *kept: int | None
    ) -> None:
        # (kept: how many events the span keeps, when the span cannot say: a rebuilt one,
        # in the offload agent, which holds light spans of its own)
        try:
            if kept:
                self._put((_EVENT, span, time_ns, name, attributes, *kept))
                return
            # the span as it is now, copied: not the span itself, which a queue would
            # hold (a burst's backlog of spans kept the garbage collector busy)
            record = snapshot(span, self._known)
            self._put(
                (_EVENT, span if record is None else record, time_ns, name, attributes,
                 events_kept(span))
            )  # fmt: skip
        except Exception:  # pragma: no cover - never raise into user code
            pass

    # -- worker ---------------------------------------------------------------------------

    def _mapped(self, span: Any, span_id: int, attributes: dict[str, Any], keep: bool) -> Mapped:
        """``common`` of the span and its message parts: those kept since an earlier item
        of the span when nothing they derive from has changed (then ``common()`` would
        return the same and change no state), else mapped now (and kept if ``keep``)."""
        kept = self._kept
        entry = kept.get(span_id) if keep else kept.pop(span_id, None)
        if entry is not None and keep:
            kept.move_to_end(span_id)
        if entry is None and not keep:  # nothing kept, nothing to keep
            common = self._mapper.common(span, attributes)
            return common, live_message_parts(common)
        parent = span.parent
        key = (
            span.name,
            span.context.trace_id,
            parent.span_id if parent is not None else None,
            *map(attributes.get, COMMON_ATTRIBUTES),
        )
        lineage = self._mapper.lineage
        if entry is not None and entry[1] == key and entry[0] is span.resource:
            common = entry[3][0]
            if (
                lineage.entry(common["parent_span_id"]) is entry[2]
                and lineage.entry(common["span_id"]) is not None
            ):
                return entry[3]
        common = self._mapper.common(span, attributes)
        mapped = (common, live_message_parts(common))
        if keep:
            if len(kept) >= _MAX_KEPT and span_id not in kept:
                # the least recently used goes: with more spans open than the bound, the
                # others keep theirs (clearing them all made every event map again)
                kept.popitem(last=False)
            kept[span_id] = (span.resource, key, lineage.entry(common["parent_span_id"]), mapped)
        return mapped

    def _prepare(self, items: list[tuple[Any, ...]]) -> tuple[list[Message], int]:
        out: list[Message] = []
        sent_live = self._sent_live
        open_spans = self._open
        known = self._known
        # A span that ends within this batch has its final attributes for all its items
        # here: map them once, from its end (the end item, its last, takes the mapping).
        # Records are read back as spans: the ends first; a start whose end is here is
        # read through that end (its id is all the start item needs), not read back.
        items = list(items)
        skipped = 0
        ending: dict[int, Any] = {}
        for i, item in enumerate(items):
            if item[0] == _END:
                try:
                    span = rebuild(item[1], known) if type(item[1]) is tuple else item[1]
                    ending[span.context.span_id] = span
                except Exception:
                    _log.exception("spangraph live: could not read a span record; skipped")
                    items[i] = _SKIP
                    skipped += 1
                    continue
                items[i] = (_END, span, *item[2:])
        # the attributes a span had when it started, for its span.started message when its
        # end is here too (the end's are its final ones: a state, a decision's choice)
        # (an event's record: the span as it was at the event)
        at_start: dict[int, dict[str, Any]] = {}
        for i, item in enumerate(items):
            if item[0] != _END and type(item[1]) is tuple:
                record = item[1]
                try:
                    final = ending.get(record[2])
                    if final is not None and item[0] == _START:
                        at_start[i] = dict(attributes_of_start(record[_START_ATTRIBUTES]) or ())
                    span = final or rebuild(record, known)
                except Exception:
                    _log.exception("spangraph live: could not read a span record; skipped")
                    items[i] = _SKIP
                    skipped += 1
                    continue
                items[i] = (item[0], span, *item[2:])
        in_batch: dict[int, tuple[dict[str, Any], Mapped]] = {}
        for i, item in enumerate(items):
            what, span, time_ns = item[0], item[1], item[2]
            if what is None:
                continue
            try:
                span_id = span.context.span_id
                if what == _EVENT and span_id not in open_spans:
                    # emit_event() reaches every live processor in the process: this span
                    # is not one of this processor's TracerProvider (or its start was
                    # dropped). Its own processor publishes the event; otherwise it goes
                    # out at the end.
                    continue
                hit = in_batch.pop(span_id, None) if what == _END else in_batch.get(span_id)
                if hit is None:
                    final = ending.get(span_id)
                    ends_here = final is not None
                    source = final if ends_here else span
                    attributes = attributes_of(source)
                    mapped = self._mapped(source, span_id, attributes, not ends_here)
                    if what != _END and ends_here:
                        in_batch[span_id] = (attributes, mapped)
                else:
                    attributes, mapped = hit
                    if what == _END:
                        self._kept.pop(span_id, None)
                common, parts = mapped
                if what == _START:
                    open_spans[span_id] = None
                    if len(open_spans) > _MAX_OPEN:  # the longest open goes
                        open_spans.popitem(last=False)
                    started = at_start.get(i, attributes)
                    msgs = [live_message(sc.SPAN_STARTED, common, time_ns, started, parts)]
                elif what == _EVENT:
                    if item[3] not in LIVE_ONLY_EVENTS:  # (tokens: never on the span)
                        sent = sent_live.get(span_id)
                        if sent is None:
                            sent = sent_live[span_id] = OrderedDict()
                            if len(sent_live) > _MAX_OPEN:  # the longest open goes
                                self._sent_count -= len(sent_live.popitem(last=False)[1])
                        before = len(sent)
                        sent[(item[3], time_ns)] = None
                        kept = item[5] if len(item) > 5 else events_kept(span)
                        if kept is not None and len(sent) > kept:  # the span keeps its last
                            sent.popitem(last=False)  # events only (constant time: a dict
                            # walked its holes)
                        self._sent_count += len(sent) - before
                        while self._sent_count > _MAX_SENT_EVENTS and sent_live:
                            self._sent_count -= len(sent_live.popitem(last=False)[1])
                    msgs = [live_message(event_type(item[3]), common, time_ns, item[4], parts)]
                else:
                    open_spans.pop(span_id, None)
                    already = sent_live.pop(span_id, ())
                    self._sent_count -= len(already)
                    msgs = [
                        live_message(event_type(e.name), common, e.timestamp, e.attributes, parts)
                        for e in span.events
                        if (e.name, e.timestamp) not in already
                    ]
                    attrs = attributes  # a copy of its own, used last here: free to extend
                    attrs["state"] = state_of(span, attrs)
                    attrs["duration_ms"] = round(  # an end before the start: 0, as stored
                        max(0, _time_ns(span.end_time or 0) - _time_ns(span.start_time or 0)) / 1e6,
                        3,
                    )
                    ended = max(time_ns or time.time_ns(), span.start_time or 0)  # as stored
                    msgs.append(live_message(sc.SPAN_ENDED, common, ended, attrs, parts))
                    # the run's top workflow span: no parent, a remote one, or one of
                    # another run (a step that called it, a web framework's server span)
                    parent = span.parent
                    ends_run = common["kind"] == sc.KIND_WORKFLOW and (
                        parent is None
                        or parent.is_remote
                        or (up := self._mapper.lineage.entry(common["parent_span_id"])) is None
                        or up[0] != common["workflow_id"]
                    )
            except Exception:
                _log.exception(
                    "spangraph live: could not map an item of span %r; skipped",
                    getattr(span, "name", "?"),
                )
                skipped += 1
                continue
            wf, project = common["workflow_id"], common["project_id"]
            out.extend((wf, project, head, tail) for head, tail in msgs)
            if what == _END and ends_run:
                out[-1] = (*out[-1][:4], True)
        if skipped:
            self._worker._count_drop(skipped, "could not be read or mapped")
        return out, len(out)

    # -- SpanProcessor ------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._worker.flush(timeout_millis / 1000)

    def _request_flush(self) -> Callable[[float | None], bool]:
        """A flush asked for now, waited for by calling the result (see ``Spangraph``)."""
        return self._worker.request_flush()

    def shutdown(self) -> None:
        """Publish what is queued within ``shutdown_timeout`` seconds (what is left is
        counted as dropped), then stop the worker; spans after this are ignored."""
        self._shutdown(self._shutdown_timeout)

    def _shutdown(self, timeout: float) -> None:
        with _listeners_lock:
            if self in _listeners:
                _listeners.remove(self)
        # Processors cannot be removed from a TracerProvider: once shut down (or replaced by
        # a new configure()), ignore spans instead of counting them as drops.
        self._put = _ignore
        self._worker.shutdown(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters: queued, sent, dropped, failed batches, retries."""
        return self._worker.stats()


def _ignore(item: object) -> bool:
    return False
