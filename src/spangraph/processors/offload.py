"""OffloadSpanProcessor: spans mapped and written by a spangraph agent process.

In this process, ``on_start``/``on_end`` copy each span's raw fields (ids, name, kind,
times, status, attributes, events, links: a record of plain values, see ``_records``; in
C where ``spangraph._speedups`` was built) and append the record to a bounded queue. A
worker thread writes the records, ``marshal``-ed and each Resource once, to the stdin
of an agent: ``python -m spangraph._agent``, a child process that rebuilds the spans and
feeds them to its own
:class:`~spangraph.processors.GraphSpanProcessor` and
:class:`~spangraph.processors.LiveEventProcessor`. Mapping, JSON and the store and Redis
protocols run there, off this process's GIL: what a traced program pays per span is
close to the copy alone (see ``docs/performance.md``).

Frames on the agent's stdin: a 4-byte little-endian length, then ``marshal.dumps`` of a
list of records (tuples whose first item says what they are, see ``_START`` ...). Lines
on its stdout: ``ready``, ``error <message>``, ``flushed <token> <stats JSON>``.
"""

from __future__ import annotations

import itertools
import json
import logging
import marshal
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..exceptions import ConfigurationError
from . import live as _live
from ._records import END, START, end_record, py_end_record, py_start_record, start_record
from ._worker import BatchWorker

_log = logging.getLogger("spangraph")

_START: Final = START
_END: Final = END
_EVENT: Final = 2
_RESOURCE: Final = 3
_FLUSH: Final = 4

_ENV_CONFIG: Final = "SPANGRAPH_AGENT_CONFIG"
_AGENT_NICENESS: Final = 10
"""How much lower than the traced program the agent process runs (``os.nice``)."""


class AgentGone(OSError):
    """The agent process is not there to take what is sent."""


def _plain(value: Any) -> Any:
    """``value`` as ``marshal`` takes it (the SDK keeps attribute values to these types)."""
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _plain_record(record: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_plain(v) for v in record)


def _frame(records: list[tuple[Any, ...]]) -> bytes:
    """One frame: the length, then ``marshal`` of the records."""
    try:
        body = marshal.dumps(records)
    except ValueError:  # a value marshal does not take: made plain (str) first
        body = marshal.dumps([_plain_record(r) for r in records])
    return len(body).to_bytes(4, "little") + body


class OffloadSpanProcessor(SpanProcessor):
    """Ships spans to a spangraph agent process, which writes the graph and publishes
    live events. ``config``: what the agent needs to open the store and Redis
    (``graph_url``, ``redis_url``, ``project``, ``graph``, ``live``); the agent reads the
    rest of the settings (Neo4j credentials) from the environment it inherits.

    Never raises into user code and never blocks it: a bounded queue (drops counted and
    logged), worker threads that copy spans and write to the agent, a new agent when the
    one before died (what was sent to it and not yet written is lost), a batch kept and
    retried with backoff while no agent can start.
    ``force_flush`` returns once the agent has written everything sent before it.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        max_queue_size: int = 65_536,
        max_batch_size: int = 2048,
        start_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self._config = dict(config)
        self._closed = False
        self._start_timeout = start_timeout
        self._shutdown_timeout = shutdown_timeout
        self._agent: subprocess.Popen[bytes] | None = None
        self._agent_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._acks: dict[int, threading.Event] = {}
        self._agent_stats: dict[str, Any] = {}
        # id -> Resource of every span copied (filled on the hot path, see _records), and
        # the ids the current agent has been told about
        self._known: dict[int, Any] = {}
        self._announced: set[int] = set()
        # Two threads: one copies spans into frames as they come (a span is let go of at
        # once: spans held in a queue are costly for the program's garbage collector),
        # one writes the frames to the agent, which may be slower than the program for a
        # while; the frames (bytes, invisible to the collector) wait meanwhile, up to as
        # many items again as the queue holds.
        self._worker: BatchWorker[tuple[Any, ...], Any] = BatchWorker(
            "offload",
            self._prepare,
            self._send,
            transient=(OSError,),
            max_queue_size=max_queue_size,
            max_batch_size=min(max_batch_size, max_queue_size),
            schedule_delay=0.05,
            eager=True,
            # as the graph worker: a batch is retried until it is written (or shutdown);
            # meanwhile the queue fills, and what does not fit is dropped, counted
            give_up_after=None,
            pipelined=True,
            extend=self._extend,
            finalize=b"".join,
            max_staged=max_queue_size,
        )
        self._put = self._worker.put
        try:
            self._start_agent()  # fails here, with a clear error, if the agent cannot start
        except BaseException:
            self._closed = True
            self._worker.shutdown(0.1)  # no worker threads left behind
            raise
        with _live._listeners_lock:
            _live._listeners.append(self)  # type: ignore[arg-type]
        ref = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    # -- hot path -------------------------------------------------------------------------
    # Called on the thread that starts or ends the span: each copies the span's raw fields
    # into a record of plain values (C, about half a microsecond; see _records) and
    # appends it to the bounded queue. The span itself is let go of at once: spans held
    # in a queue survive into the old generations of the program's garbage collector.

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._put(start_record(span, self._known))
        except Exception:
            self._copy_slowly(py_start_record, span)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._put(end_record(span, self._known))
        except Exception:
            self._copy_slowly(py_end_record, span)

    def _copy_slowly(self, copy: Any, span: Any) -> None:
        try:
            self._put(copy(span, self._known))
        except Exception:  # never raise into user code
            try:
                self._worker._count_drop(1, "could not read a span")
                _log.exception("spangraph offload: could not read a span; dropped")
            except Exception:  # pragma: no cover
                pass

    def _on_event(self, span: Any, name: str, attributes: Mapping[str, Any], time_ns: int) -> None:
        try:
            span_id = span.get_span_context().span_id
            self._put((_EVENT, span_id, name, time_ns, dict(attributes) if attributes else None))
        except Exception:  # pragma: no cover - never raise into user code
            pass

    # -- worker ---------------------------------------------------------------------------

    def _prepare(self, items: list[tuple[Any, ...]]) -> tuple[list[bytes], int]:
        frames: list[bytes] = []
        return frames, self._extend(frames, items)

    def _extend(self, frames: list[bytes], items: list[tuple[Any, ...]]) -> int:
        """Append the frame of ``items`` (records) to ``frames``; how many items it holds.
        Resources the agent has not been told about go first."""
        records = items
        if len(self._known) != len(self._announced):
            records = self._resource_records(set(self._announced)) + items
        frames.append(_frame(records))
        return len(items)

    def _resource_records(self, skip: set[int]) -> list[tuple[Any, ...]]:
        records = []
        for key, resource in list(self._known.items()):
            if key not in skip:
                self._announced.add(key)
                attributes = getattr(resource, "attributes", None)
                records.append((_RESOURCE, key, dict(attributes) if attributes else None))
        return records

    def _send(self, frame: bytes) -> None:
        agent = self._agent
        if agent is None or agent.poll() is not None:
            with self._agent_lock:
                if self._agent is None or self._agent.poll() is not None:
                    if self._agent is not None:
                        _log.warning(
                            "spangraph offload: the agent exited (code %s); starting another",
                            self._agent.returncode,
                        )
                        self._agent = None
                    try:
                        self._start_agent()
                    except ConfigurationError as exc:  # e.g. the store is down: retried
                        raise AgentGone(str(exc)) from exc
                    # a new agent knows no Resource yet: all of them first
                    self._announced = set()
                    self._write(_frame(self._resource_records(set())))
                agent = self._agent
        self._write(frame, agent)

    def _write(self, frame: bytes, agent: subprocess.Popen[bytes] | None = None) -> None:
        agent = agent or self._agent
        if agent is None or agent.stdin is None:
            raise AgentGone("no agent process")
        try:
            view = memoryview(frame)
            fd = agent.stdin.fileno()
            while view:
                view = view[os.write(fd, view) :]
        except (OSError, ValueError) as exc:  # ValueError: the pipe is closed
            raise AgentGone(f"the agent process is gone: {exc}") from exc

    # -- the agent ------------------------------------------------------------------------

    def _start_agent(self) -> None:
        env = dict(os.environ)
        env[_ENV_CONFIG] = json.dumps(self._config)
        # Unbuffered pipes (plain file descriptors): a buffered file's lock, held by a
        # thread at the moment of a fork, would never be released in the child.
        agent = subprocess.Popen(
            [sys.executable, "-m", "spangraph._agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert agent.stdout is not None
        line, rest = _read_line(agent.stdout.fileno(), self._start_timeout)
        if line != "ready":
            agent.kill()
            agent.wait(5)
            detail = line[6:] if line.startswith("error ") else (line or "no answer")
            raise ConfigurationError(
                "offload", f"the spangraph agent process did not start: {detail}"
            )
        self._agent = agent
        threading.Thread(
            target=self._read_acks,
            args=(agent.stdout.fileno(), rest),
            name="spangraph-offload-acks",
            daemon=True,
        ).start()

    def _read_acks(self, fd: int, pending: bytes) -> None:
        """The agent's ``flushed <token> <stats>`` lines, until its stdout closes."""
        while True:
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                parts = raw.decode(errors="replace").split(" ", 2)
                if parts[0] == "flushed" and len(parts) == 3:
                    try:
                        self._agent_stats = json.loads(parts[2])
                    except ValueError:
                        pass
                    event = self._acks.pop(int(parts[1]), None)
                    if event is not None:
                        event.set()
            try:
                data = os.read(fd, 65_536)
            except OSError:
                return
            if not data:
                return
            pending += data

    def _after_fork(self) -> None:
        # The agent and its pipes are the parent's: close this child's copies (so that
        # the agent sees the parent leave) and start an agent of its own when needed.
        agent, self._agent = self._agent, None
        self._agent_lock = threading.Lock()
        self._acks = {}
        if agent is not None:
            for pipe in (agent.stdin, agent.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:  # pragma: no cover - best effort
                    pass

    # -- SpanProcessor --------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until the agent has written and published everything before this call."""
        if self._closed:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        token = next(self._tokens)
        event = self._acks[token] = threading.Event()
        if not self._worker.put((_FLUSH, token)):
            self._acks.pop(token, None)
            return False
        if not self._worker.flush(max(0.0, deadline - time.monotonic())):
            return False
        return event.wait(max(0.0, deadline - time.monotonic()))

    def shutdown(self) -> None:
        """Flush, stop the worker, and let the agent finish and exit. Idempotent."""
        if self._closed:
            return
        with _live._listeners_lock:
            if self in _live._listeners:
                _live._listeners.remove(self)  # type: ignore[arg-type]
        self.force_flush(int(self._shutdown_timeout * 1000))
        self._closed = True
        self._put = _ignore
        self._worker.shutdown(self._shutdown_timeout)
        agent, self._agent = self._agent, None
        if agent is not None:
            try:
                if agent.stdin is not None:
                    agent.stdin.close()  # end of input: the agent flushes and exits
                agent.wait(self._shutdown_timeout)
            except (OSError, subprocess.TimeoutExpired):
                _log.warning("spangraph offload: the agent did not exit in time; killed")
                agent.kill()

    def stats(self) -> dict[str, Any]:
        """Counters of this process's side: queued, sent (to the agent), dropped, failed
        batches, retries; items are span starts and ends, live events and flushes."""
        return self._worker.stats()

    def agent_stats(self) -> dict[str, dict[str, int]]:
        """The agent's processors' counters (``graph``, ``live``), as of the last flush."""
        return dict(self._agent_stats)


def _ignore(item: object) -> bool:
    return False


def _read_line(fd: int, timeout: float) -> tuple[str, bytes]:
    """The first line read from ``fd`` within ``timeout`` seconds ('' when none came),
    and what was read after it."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return "", b""
        chunk = os.read(fd, 4096)
        if not chunk:  # the process ended
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode(errors="replace").strip(), rest


# -- the agent process ----------------------------------------------------------------------


def agent_main() -> int:  # pragma: no cover - runs in the agent process (tested through it)
    """The agent: rebuild spans from the records on stdin and write them."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from .._sdk import _open_publisher, _open_store
    from ..config import Settings
    from .graph import GraphSpanProcessor
    from .live import LiveEventProcessor

    out = sys.stdout.buffer
    if hasattr(os, "nice"):
        try:  # below the traced program: on a busy machine its threads get the cores first
            os.nice(_AGENT_NICENESS)
        except OSError:  # pragma: no cover - not allowed here: run at the same priority
            pass
    try:
        config = json.loads(os.environ[_ENV_CONFIG])
        settings = Settings.from_env(
            graph_url=config.get("graph_url"),
            redis_url=config.get("redis_url"),
            project=config.get("project"),
        )
        processors: list[Any] = []
        graph = live = None
        store = publisher = None
        if config.get("graph", True):
            store = _open_store(settings)
            graph = GraphSpanProcessor(store, project=settings.project)
            processors.append(graph)
        if config.get("live", True) and config.get("redis_url"):
            publisher = _open_publisher(config["redis_url"])
            live = LiveEventProcessor(publisher, project=settings.project)
            processors.append(live)
    except Exception as exc:
        out.write(f"error {exc}".replace("\n", " ").encode() + b"\n")
        out.flush()
        return 1
    out.write(b"ready\n")
    out.flush()

    sampled = TraceFlags(TraceFlags.SAMPLED)
    kinds = {k.value: k for k in SpanKind}
    codes = {c.value: c for c in StatusCode}
    resources: dict[int, Any] = {}
    open_spans: dict[int, ReadableSpan] = {}
    stdin = sys.stdin.buffer

    def context(trace_id: int, span_id: int, remote: bool = False) -> SpanContext:
        return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=sampled)

    def rebuild(r: tuple[Any, ...], ended: bool) -> ReadableSpan:
        trace_id, span_id, parent_id, parent_remote, name, kind, start = r[1:8]
        common: dict[str, Any] = {
            "name": name,
            "context": context(trace_id, span_id),
            "parent": context(trace_id, parent_id, parent_remote) if parent_id else None,
            "kind": kinds.get(kind, SpanKind.INTERNAL),
            "start_time": start,
        }
        if not ended:
            return ReadableSpan(attributes=r[8] or {}, resource=resources.get(r[9]), **common)
        end, code, description, attrs, events, links, key = r[8:15]
        return ReadableSpan(
            attributes=attrs or {},
            resource=resources.get(key),
            end_time=end,
            status=Status(codes.get(code, StatusCode.UNSET), description),
            events=[Event(n, a, t) for n, t, a in events] if events else (),
            links=[Link(context(t, s, True), a) for t, s, a in links] if links else (),
            **common,
        )

    while True:
        size = stdin.read(4)
        if len(size) < 4:
            break  # end of input: the traced process shut down or went away
        body = stdin.read(int.from_bytes(size, "little"))
        try:
            records = marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            continue
        for r in records:
            what = r[0]
            try:
                if what == _START:
                    span = rebuild(r, False)
                    if len(open_spans) > 100_000:  # starts whose end never came
                        open_spans.clear()
                    open_spans[r[2]] = span
                    for p in processors:
                        p.on_start(span, None)
                elif what == _END:
                    open_spans.pop(r[2], None)
                    span = rebuild(r, True)
                    for p in processors:
                        p.on_end(span)
                elif what == _EVENT:
                    started = open_spans.get(r[1])
                    if started is not None and live is not None:
                        live._on_event(started, r[2], r[4] or {}, r[3])
                elif what == _RESOURCE:
                    resources[r[1]] = Resource(r[2] or {})
                elif what == _FLUSH:
                    for p in processors:
                        p.force_flush(30_000)
                    stats = {"graph": graph.stats() if graph else None}
                    stats["live"] = live.stats() if live else None
                    out.write(f"flushed {r[1]} {json.dumps(stats)}\n".encode())
                    out.flush()
            except Exception:
                logging.getLogger("spangraph").exception(
                    "spangraph agent: could not process a record; skipped"
                )
    for p in processors:
        p.shutdown()
    if store is not None:
        store.close()
    if publisher is not None:
        publisher.close()
    return 0
