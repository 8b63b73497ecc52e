"""OffloadSpanProcessor: spans mapped and written by a spangraph agent process.

In this process, ``on_start``/``on_end`` copy each span's raw fields (ids, name, kind,
times, status, attributes, events, links) into a record of plain values, and append it to
a bounded buffer: one call into C where ``spangraph._speedups`` was built
(see ``_records``). A worker thread writes the buffer, each Resource announced once, to
the stdin of an agent (the ``spangraph._agent`` process, started with
:data:`_AGENT_BOOT`), a child process that puts the records into the queues of its own
:class:`~spangraph.processors.GraphSpanProcessor` and
:class:`~spangraph.processors.LiveEventProcessor`, as their ``on_start``/``on_end``
would. Mapping, JSON and the store and Redis protocols run there, off this process's
GIL: what a traced program pays per span is close to the copy alone (see
``docs/performance.md``).

Frames on the agent's stdin: a 4-byte little-endian length, then one ``marshal``-ed list
of records (tuples whose first item says what they are, see ``_START`` ...); Resources
are announced in a frame of RESOURCE records of their own, before the first frame whose
records name them. Lines
on its stdout: ``ready``, ``error <message>``, ``flushed <token> <stats JSON>`` (with
``"ok": false`` when something before the flush was dropped).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import json
import logging
import marshal
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .._attrs import plain_primitive
from ..config import url_on_port
from ..exceptions import ConfigurationError
from ..mapping import COMMON_ATTRIBUTES
from . import live as _live
from ._records import (
    END,
    START,
    RecordBuffer,
    py_end_record,
    py_start_record,
    read_starts,
    rebuild,
)

_log = logging.getLogger("spangraph")

_START: Final = START
_END: Final = END
_EVENT: Final = 2
_RESOURCE: Final = 3
_FLUSH: Final = 4

_ENV_CONFIG: Final = "SPANGRAPH_AGENT_CONFIG"
_LINGER: Final = 0.002
"""Seconds the worker lets records gather before a write when there are few."""
_IDLE_WAIT: Final = 0.5
"""Seconds the idle worker sleeps between checks (a new record wakes it at once)."""
_SUPPRESS_KEY: Final = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_WRITE_WAIT: Final = 1.0
"""Seconds between two looks at the drops while the agent's pipe stays full."""
_AGENT_NICENESS: Final = 10
"""How much lower than the traced program the agent process runs (``os.nice``)."""


class AgentGone(OSError):
    """The agent process is not there to take what is sent."""


class _Agent:
    """An agent process, with what was sent to it and what it acknowledged.

    Its ``subprocess.Popen`` is made from the class ``subprocess`` has when the agent
    starts, not when spangraph was imported: gevent's, where gevent patched subprocess
    after that (the standard class then fails to start anything). gevent's pipes do not
    block: they are read and written through ``select`` (:func:`_read_some`,
    :func:`_write_all`), which gevent makes cooperative where it patched select."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.process: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)
        self.pid = self.process.pid
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout
        self.write_lock = threading.Lock()
        """Held while a frame is written: its stdin is closed only between frames (a
        file descriptor closed under a write would be reused by the program's next
        file or socket, and the rest of the frame written there)."""
        self.sent = 0
        """Records written to it."""
        self.acked = 0
        """Records it has written (or counted as dropped), as its flush answers say."""
        self.marks: dict[int, int] = {}
        """Flush token -> the records sent before that flush."""
        self.gone = False
        self.reader: threading.Thread | None = None
        self.stats: dict[str, Any] = {}
        """Its processors' counters (``graph``, ``live``), as its last answer gave them."""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()


def _ready(fd: int, write: bool, timeout: float | None) -> bool:
    """Whether ``fd`` can be written (or read: data, or its end) within ``timeout``
    seconds (``None``: wait). ``poll`` where ``select`` has it (``select.select`` refuses a
    descriptor numbered 1 024 or more), looked up now: gevent's where it patched select;
    eventlet removes ``poll``, and ``select.select`` is used there."""
    poll = getattr(select, "poll", None)
    if poll is not None:
        poller = poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    readable, writable, _ = select.select([] if write else [fd], [fd] if write else [], [], timeout)
    return bool(readable or writable)


def _read_some(fd: int, size: int) -> bytes:
    """``os.read``; on a pipe that does not block (gevent's), after waiting for data."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            _ready(fd, False, None)


def _write_all(fd: int, data: bytes, waiting: Callable[[], None] | None = None) -> None:
    """Write all of ``data`` to a pipe that does not block, as it drains; ``waiting`` is
    called every :data:`_WRITE_WAIT` seconds that the pipe stays full (an agent that does
    not read: stopped, or busy)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if not _ready(fd, True, _WRITE_WAIT) and waiting is not None:
                waiting()


class _Ack:
    __slots__ = ("event", "given_up", "ok", "token")

    def __init__(self, token: int) -> None:
        self.event = threading.Event()
        self.ok = True
        self.token = token
        self.given_up = False  # its waiter timed out: a failure answered later is untold


def _plain(value: Any) -> Any:
    """``value`` as ``marshal`` takes it (the SDK keeps attribute values to these types).
    A subclass of int, float or str (an IntEnum, numpy.float64) becomes the plain value,
    as the JSON the processors write in-process holds it; bool cannot be subclassed."""
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    if isinstance(value, int | float | str):
        return plain_primitive(value)
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):  # keys as the JSON the processors write holds them
        return {
            (str.__str__(k) if isinstance(k, str) else str(k)): _plain(v) for k, v in value.items()
        }
    return str(value)


def _plain_record(record: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_plain(v) for v in record)


class OffloadSpanProcessor(SpanProcessor):
    """Ships spans to a spangraph agent process, which writes the graph and publishes
    live events. ``config``: what the agent needs to open the store and Redis
    (``graph_url``, ``redis_url``, ``project``, ``graph``, ``live`` and the Neo4j
    credentials), as :func:`spangraph.configure` resolved them: the agent does not read
    spangraph's settings from the environment again, so a keyword given to configure()
    wins there too.

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
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
    ) -> None:
        if max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1.")
        if not 1 <= max_batch_size <= max_queue_size:
            raise ValueError("max_batch_size must be between 1 and max_queue_size.")
        self._config = dict(config)
        self._closed = False
        self._start_timeout = start_timeout
        self._shutdown_timeout = shutdown_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._max_queue = max_queue_size
        self._max_batch = max_batch_size
        self._agent: _Agent | None = None
        self._starting: _Agent | None = None  # waited for "ready": a fork closes its pipes
        self._agent_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._gone_lock = threading.Lock()
        self._tokens = itertools.count(1)  # 0: the agent's last answer, at end of input
        self._acks: dict[int, _Ack] = {}
        self._stats_lock = threading.Lock()
        self._carried: dict[str, dict[str, int]] = {}
        """The counters of the agents that are gone, summed: an agent that replaces one
        counts from zero, and stats() go on from these (they never go down)."""
        self._last_agent: _Agent | None = None  # the one that answered last
        # id -> Resource of every span copied (filled on the hot path, see _records), and
        # the ids the current agent has been told about
        self._known: dict[int, Any] = {}
        self._announced: set[int] = set()
        self._init_worker()
        try:
            self._start_agent()  # fails here, with a clear error, if the agent cannot start
        except BaseException:
            self._closed = True
            self._stop_worker(0.1)  # no worker thread left behind
            raise
        with _live._listeners_lock:
            _live._listeners.append(self)  # type: ignore[arg-type]
        ref = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_worker(self) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._buffer = RecordBuffer(self._known, self._fallback, self._wake.set, self._max_queue)
        # The hot path: the SDK calls processor.on_start / on_end, which are these
        # (instance attributes over the methods below): one C call each, no Python frame.
        self.on_start = self._buffer.start  # type: ignore[method-assign]
        self.on_end = self._buffer.end  # type: ignore[method-assign]
        self._sent = self._failed = self._retries = self._lost = 0
        self.on_sent: Callable[[float, int], None] | None = None  # seconds, records
        self._lost_lock = threading.Lock()
        self._logged_drops = 0
        self._last_drop_log = 0.0
        self._took_any = False  # the worker took records (set before it takes them)
        # what was dropped when the last flush was asked for (the buffer: records refused
        # before it) and when it was answered (records sent and lost: those before it)
        self._flush_refused = self._flush_lost = 0
        self._untold_loss = False
        self._last_token = 0
        self._thread = threading.Thread(target=self._run, name="spangraph-offload", daemon=True)
        self._thread.start()

    # -- hot path -------------------------------------------------------------------------
    # Called on the thread that starts or ends the span: each copies the span's raw fields
    # into a record of plain values and appends it to the bounded buffer (C where
    # spangraph._speedups was built, about 1.4 µs a span in all; see _records).
    # The span itself is let go of at once: spans held in a queue survive into the old
    # generations of the program's garbage collector. Never raises.

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._buffer.start(span)

    def on_end(self, span: ReadableSpan) -> None:
        self._buffer.end(span)

    def _fallback(self, what: int, span: Any) -> tuple[Any, ...]:
        """A record the fast copy could not make (not the SDK's span): the Python copy,
        which reads the public API."""
        copy = py_start_record if what == START else py_end_record
        return copy(span, self._known)

    def _add(self, record: tuple[Any, ...]) -> bool:
        return bool(self._buffer.add(record))

    def _on_event(self, span: Any, name: str, attributes: Mapping[str, Any], time_ns: int) -> None:
        try:
            span_id = span.get_span_context().span_id
            # the span's name and the attributes its kind and run ids come from, as they
            # are now (renamed since it started: an HTTP server span once routed): the
            # agent maps the event with them, as the live processor does in-process with
            # the span itself
            now = getattr(getattr(span, "_attributes", None), "_dict", None)  # the SDK's
            if now is None:
                now = span.attributes or {}
            # (membership, not get(): a Mapping's get raises KeyError for each key missing)
            common = {key: now[key] for key in COMMON_ATTRIBUTES if key in now}
            self._add(
                (
                    _EVENT,
                    span_id,
                    name,
                    time_ns,
                    dict(attributes) if attributes else None,
                    getattr(span, "name", None),
                    common or None,
                    _live.events_kept(span),
                )
            )
        except Exception:  # pragma: no cover - never raise into user code
            pass

    # -- worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
        if hasattr(signal, "pthread_sigmask"):
            # a program that set SIGPIPE back to its default (as command-line tools do)
            # would be killed by a write to an agent that just died: this thread's
            # writes get EPIPE instead (the agent is then replaced)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        buffer = self._buffer
        while True:
            if not len(buffer):
                if self._stopping.is_set():
                    return
                buffer.idle = True
                if not len(buffer):  # re-check: a record between the test and idle
                    self._wake.wait(_IDLE_WAIT)
                buffer.idle = False
                self._wake.clear()
                self._log_drops()  # the rest of a burst the rate limit kept quiet
                continue
            if len(buffer) < self._max_batch and not self._stopping.is_set():
                time.sleep(_LINGER)  # let a trickle gather: one write for many records
            self._took_any = True
            records = buffer.take()
            data, bad = _marshal(records)
            if bad:
                self._failed += 1
                self._count_lost(bad)
                _log.error("spangraph offload: %d record(s) could not be encoded; dropped", bad)
            tokens = [(r[1], i) for i, r in enumerate(records) if r[0] == _FLUSH]
            self._deliver(data, len(records) - bad, tokens)
            self._log_drops()

    def _deliver(self, data: bytes, count: int, tokens: list[tuple[int, int]]) -> None:
        """Write ``data`` to the agent; while no agent takes it, retry with backoff (the
        buffer meanwhile keeps what comes, up to its bound), until shutdown."""
        delay = self._retry_initial
        outage_logged = False
        while True:
            sending = time.perf_counter()
            try:
                self._send(data, count, tokens)
            except OSError as exc:
                if self._stopping.is_set():
                    self._count_lost(count)
                    _log.warning(
                        "spangraph offload: %d record(s) not written before shutdown: %s",
                        count,
                        exc,
                    )
                    return
                if not outage_logged:
                    _log.warning("spangraph offload: %s; retrying", exc)
                    outage_logged = True
                self._retries += 1
                self._stopping.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception:
                self._failed += 1
                self._count_lost(count)
                _log.exception("spangraph offload: could not write %d record(s); dropped", count)
                return
            self._sent += count
            on_sent = self.on_sent
            if on_sent is not None:
                try:
                    on_sent(time.perf_counter() - sending, count)
                except Exception:  # a metrics hook never stops the delivery
                    _log.debug("spangraph offload: the on_sent hook failed", exc_info=True)
            if outage_logged:
                _log.warning("spangraph offload: the agent takes records again")
            return

    def _count_lost(self, n: int) -> None:
        with self._lost_lock:  # the worker, ack readers and shutdown all count
            self._lost += n

    def _log_drops(self, *, last: bool = False) -> None:
        """Warn of the records dropped since the last warning, at most every 10 s;
        ``last`` (at shutdown): now, whenever the last warning was."""
        dropped = self._buffer.dropped
        if dropped == self._logged_drops:
            return
        now = time.monotonic()
        if now - self._last_drop_log < 10.0 and not last:
            return
        unreadable = self._buffer.unreadable
        _log.warning(
            "spangraph offload: dropped %d record(s) (queue full, after shutdown, or %d "
            "span(s) that could not be read); %d dropped in all",
            dropped - self._logged_drops,
            unreadable,
            dropped + self._lost,
        )
        self._logged_drops = dropped
        self._last_drop_log = now

    def _stop_worker(self, timeout: float) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _announcements(self, skip: set[int]) -> bytes:
        """A frame body: the marshalled list of the RESOURCE records of the known
        resources not in ``skip``."""
        records = []
        for key, resource in list(self._known.items()):
            if key not in skip:
                self._announced.add(key)
                attributes = getattr(resource, "attributes", None)
                records.append(
                    _plain_record((_RESOURCE, key, dict(attributes) if attributes else None))
                )
        return marshal.dumps(records)

    def _send(self, data: bytes, count: int, tokens: list[tuple[int, int]]) -> None:
        """Write a frame of ``data`` (``count`` marshalled records, flushes ``tokens``
        among them at their positions) to the agent, after a frame announcing the
        Resources it does not know yet, starting an agent when there is none (or it
        died)."""
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
                    if self._stopping.is_set():  # shutting down: no new agent to close
                        raise AgentGone("shut down")
                    try:
                        self._start_agent()
                    except ConfigurationError as exc:  # e.g. the store is down: retried
                        raise AgentGone(str(exc)) from exc
                    self._announced = set()  # a new agent knows no Resource yet
                    if self._stopping.is_set():  # shutdown came while it started
                        self._close_agent(1.0)  # it has nothing to write: it exits at once
                        raise AgentGone("shut down")
                agent = self._agent
        if agent is None:  # shutdown took it meanwhile
            raise AgentGone("shut down")
        if len(self._known) != len(self._announced):  # resources first, a frame of their own
            announced = self._announcements(set(self._announced))
            self._write(len(announced).to_bytes(4, "little") + announced, agent, 0, [])
        self._write(len(data).to_bytes(4, "little") + data, agent, count, tokens)

    def _write(
        self, frame: bytes, agent: _Agent, count: int, tokens: list[tuple[int, int]]
    ) -> None:
        with agent.write_lock:
            if agent.stdin is None or agent.stdin.closed or agent.gone:
                raise AgentGone("the agent process is gone")
            base = agent.sent
            # before the write: the agent may answer the flush before os.write returns
            for token, position in tokens:
                agent.marks[token] = base + position + 1  # the flush record and all before
            agent.sent = base + count
            try:
                # while the agent does not read, what the buffer drops meanwhile is told
                # (this thread is the one that tells it)
                _write_all(agent.stdin.fileno(), frame, self._log_drops)
            except (OSError, ValueError) as exc:  # ValueError: the pipe is closed
                agent.sent = base  # not taken: the frame goes to the next agent
                for token, _ in tokens:
                    agent.marks.pop(token, None)
                raise AgentGone(f"the agent process is gone: {exc}") from exc

    # -- the agent ------------------------------------------------------------------------

    def _start_agent(self) -> None:
        self._config = _on_current_port(self._config)
        env = dict(os.environ)
        env[_ENV_CONFIG] = json.dumps(self._config)
        # the agent's own calls are spangraph's: no spans of them, also where the program
        # runs under opentelemetry-instrument (whose sitecustomize the agent would load)
        env["OTEL_SDK_DISABLED"] = "true"
        # the spangraph this process runs (a source checkout, a vendored copy), loaded
        # from where it is without putting its directory before the standard library,
        # and (-P) not the working directory first: a json.py there broke the agent only
        env[_ENV_PACKAGE] = _PACKAGE_DIR
        # Unbuffered pipes (plain file descriptors): a buffered file's lock, held by a
        # thread at the moment of a fork, would never be released in the child.
        # A process group of its own: a Ctrl-C in the terminal, or a SIGTERM to the
        # program's group, is the program's to handle; the agent writes what it was sent
        # and exits when the program's end of the pipe closes.
        agent = _Agent(
            [sys.executable, "-P", "-c", _AGENT_BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
            process_group=0,
        )
        _above_stdio(agent)
        assert agent.stdin is not None
        # written as it drains (_write_all): a write to an agent that does not read
        # (stopped, busy) waits in select, where the worker still tells of drops
        os.set_blocking(agent.stdin.fileno(), False)
        assert agent.stdout is not None
        self._starting = agent
        try:
            line, rest = _read_line(agent.stdout.fileno(), self._start_timeout)
        except BaseException:
            self._starting = None
            _discard(agent)
            raise
        if line != "ready":
            self._starting = None
            _discard(agent)
            detail = line[6:] if line.startswith("error ") else (line or "no answer")
            raise ConfigurationError(
                "offload", f"the spangraph agent process did not start: {detail}"
            )
        self._agent = agent
        self._starting = None  # after: a fork in between finds it in one or the other
        agent.reader = threading.Thread(
            target=self._read_acks,
            args=(agent, rest),
            name="spangraph-offload-acks",
            daemon=True,
        )
        agent.reader.start()

    def _read_acks(self, agent: _Agent, pending: bytes) -> None:
        """The agent's ``flushed <token> <stats>`` lines, until its stdout closes; then
        what it was sent and did not answer for is lost with it."""
        assert agent.stdout is not None
        fd = agent.stdout.fileno()
        while True:
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                parts = raw.decode(errors="replace").split(" ", 2)
                if parts[0] != "flushed" or len(parts) != 3 or not parts[1].isdigit():
                    continue
                ok = True
                try:
                    stats = json.loads(parts[2])
                    ok = stats.pop("ok", True) is not False
                    with self._stats_lock:
                        if not agent.gone:
                            agent.stats = stats
                            self._last_agent = agent
                except (ValueError, AttributeError):
                    pass
                token = int(parts[1])
                if token == 0:  # its last answer: everything it was sent is written
                    agent.acked = agent.sent
                    continue
                mark = agent.marks.pop(token, None)
                if mark is not None:
                    agent.acked = max(agent.acked, mark)
                ack = self._acks.pop(token, None)
                if ack is not None:
                    ack.ok = ack.ok and ok
                    ack.event.set()
                    self._untold(ack)  # after: a waiter gives up before it looks
            try:
                data = _read_some(fd, 65_536)
            except OSError:
                data = b""
            if not data:
                break
            pending += data
        self._agent_gone(agent)
        with contextlib.suppress(OSError):
            agent.stdout.close()  # read by this thread alone

    def _agent_gone(self, agent: _Agent) -> None:
        """Count what ``agent`` was sent and did not write as dropped, and fail the
        flushes it was to answer. Once an agent."""
        with self._gone_lock:
            if agent.gone:
                return
            with self._stats_lock:
                agent.gone = True
                self._carry(agent.stats)
                agent.stats = {}
        with agent.write_lock:  # a write under way fails at once: no one reads the pipe
            lost = agent.sent - agent.acked
            tokens = list(agent.marks)
            agent.marks.clear()
            if agent.stdin is not None:  # no frame is written to it after this
                with contextlib.suppress(OSError):
                    agent.stdin.close()
        if lost > 0:
            self._count_lost(lost)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(0.5)  # its output ended: it is exiting
            _log.warning(
                "spangraph offload: the agent exited (code %s) before writing %d record(s); "
                "they are lost",
                agent.returncode,
                lost,
            )
        for token in tokens:
            ack = self._acks.pop(token, None)
            if ack is not None:
                ack.ok = False
                ack.event.set()
                self._untold(ack)

    def _untold(self, ack: _Ack) -> None:
        """A flush answered "not everything written" after its waiter had timed out (told
        False for the timeout, not for the loss): the next flush tells it, unless a
        later flush, asked meanwhile, covers it already."""
        if ack.given_up and not ack.ok and ack.token == self._last_token:
            self._untold_loss = True

    def _after_fork(self) -> None:
        # The agent and its pipes are the parent's: close this child's copies (so that
        # the agent sees the parent leave) and start an agent of its own when needed.
        agents = (self._agent, self._starting)
        self._agent = self._starting = None
        self._agent_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._gone_lock = threading.Lock()
        self._stats_lock = threading.Lock()  # (a thread reading stats() may have held it)
        # the parent's agent's counts: this process's go on from them, as stats() did
        last, self._last_agent = self._last_agent, None
        if last is not None:
            self._carry(last.stats)
        self._acks = {}
        self._announced = set()
        # the parent's records are the parent's to write; a new buffer and worker (the
        # locks of the old ones may have been held by a thread that is not here). The
        # counters and the metrics hook go on, as the in-process workers' do: metrics
        # count on from the parent's figures
        kept = (self._sent, self._failed, self._retries, self._lost, self.on_sent)
        self._init_worker()
        self._sent, self._failed, self._retries, self._lost, self.on_sent = kept
        self._flush_lost = self._lost  # (what the parent lost is no news to a flush here)
        if self._closed:  # shut down in the parent: stays shut down in the child
            self._buffer.closed = True
            self._stop_worker(1.0)
        for agent in agents:
            if agent is None:
                continue
            for pipe in (agent.stdin, agent.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:  # pragma: no cover - best effort
                    pass

    # -- SpanProcessor --------------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until the agent has written and published everything before this call."""
        return self._request_flush()(timeout_millis / 1000)

    def _request_flush(self) -> Callable[[float | None], bool]:
        """A flush asked for now, waited for by calling the result (see ``Spangraph``)."""
        if self._closed:
            return lambda timeout: True
        # something dropped on this side since the flush before (the buffer full, a write
        # that failed, an agent that died): not everything before this one was written
        refused, lost = self._buffer.dropped, self._lost
        clean = refused == self._flush_refused and lost == self._flush_lost
        # a flush the agent answered "not all written" after its waiter had timed out
        clean = clean and not self._untold_loss
        self._untold_loss = False
        self._flush_refused = refused
        # Nothing queued, nothing ever taken, no agent (a forked child that traced
        # nothing, at its exit): nothing to write, answered here rather than by starting
        # an agent to say so (seconds when the server is gone). In this order: what the
        # worker takes now came after this call.
        if not len(self._buffer) and not self._took_any and self._agent is None:
            self._flush_lost = max(self._flush_lost, lost)
            return lambda timeout: clean
        token = next(self._tokens)
        ack = self._acks[token] = _Ack(token)
        self._last_token = token
        if not self._add((_FLUSH, token)):  # full: what is queued cannot all be written
            self._acks.pop(token, None)
            self._flush_refused = self._buffer.dropped  # (the flush's own record too)
            return lambda timeout: False
        self._wake.set()

        def wait(timeout: float | None) -> bool:
            try:
                # False at once when the agent died before it answered
                if ack.event.wait(timeout):
                    return ack.ok and clean
                ack.given_up = True  # (kept: its answer may still tell of a loss)
                if ack.event.is_set():  # answered just now (a loss may be told twice)
                    return ack.ok and clean
                return False
            finally:
                if not ack.given_up:
                    self._acks.pop(token, None)
                self._flush_lost = max(self._flush_lost, self._lost)

        return wait

    def shutdown(self) -> None:
        """Flush, stop the worker, and let the agent finish and exit, all within
        ``shutdown_timeout`` seconds (then the agent is killed). Idempotent."""
        self._shutdown(self._shutdown_timeout)

    def _shutdown(self, timeout: float) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        with _live._listeners_lock:
            if self in _live._listeners:
                _live._listeners.remove(self)  # type: ignore[arg-type]
        self.force_flush(int(timeout * 1000))
        self._closed = True
        self._buffer.closed = True  # what comes now is dropped, counted
        self._stop_worker(max(0.0, deadline - time.monotonic()))
        self._close_agent(max(0.0, deadline - time.monotonic()))
        # the writer, if it was stuck on the agent's pipe: the pipe is closed now
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
        left = len(self._buffer.take())
        if left:
            self._count_lost(left)
            _log.warning("spangraph offload: %d record(s) not written before shutdown", left)
        self._log_drops(last=True)  # what the rate limit kept quiet, if anything

    def _close_agent(self, timeout: float) -> None:
        """End the agent's input and wait ``timeout`` seconds for it to write what it has
        and exit; then kill it."""
        with self._swap_lock:  # the worker, starting an agent as shutdown came, closes too
            agent, self._agent = self._agent, None
        if agent is None:
            return
        deadline = time.monotonic() + timeout
        # stdin is closed between frames, never under a write (see _Agent.write_lock); a
        # write that does not end in time (the agent does not read) ends when it is killed
        if not agent.write_lock.acquire(timeout=timeout):
            _log.warning("spangraph offload: the agent did not take its input in time; killed")
            agent.kill()
            agent.write_lock.acquire()
        try:
            if agent.stdin is not None:
                agent.stdin.close()  # end of input: the agent flushes and exits
        except OSError:  # pragma: no cover - best effort
            pass
        finally:
            agent.write_lock.release()
        try:
            agent.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.warning("spangraph offload: the agent did not exit in time; killed")
            agent.kill()
            try:
                agent.wait(1.0)  # reaped: no zombie left
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
                pass
        if agent.reader is not None:  # its last answer, then the count of what it lost
            agent.reader.join(1.0)
        self._agent_gone(agent)

    def stats(self) -> dict[str, Any]:
        """Counters of this process's side: queued, sent (to the agent), dropped, failed
        writes, retries; items are span starts and ends, live events and flushes."""
        buffer = self._buffer
        return {
            "queued": len(buffer),
            "sent": self._sent,
            "dropped": buffer.dropped + self._lost,
            "failed": self._failed,
            "retries": self._retries,
        }

    def _carry(self, stats: dict[str, Any]) -> None:
        """Add a gone agent's counters to those carried (its queue size is not carried:
        what it held is counted as dropped)."""
        for name, counters in stats.items():
            if not isinstance(counters, dict):
                continue
            carried = self._carried.setdefault(name, {})
            for key, value in counters.items():
                if key != "queued" and type(value) is int:
                    carried[key] = carried.get(key, 0) + value

    def agent_stats(self) -> dict[str, dict[str, int] | None]:
        """The agent's processors' counters (``graph``, ``live``; ``None`` for one that is
        off), as of the last flush; with those of the agents before it (one replaced
        after it died) added, so they never go down."""
        with self._stats_lock:
            agent = self._last_agent
            current = agent.stats if agent is not None else {}
            out: dict[str, dict[str, int] | None] = {}
            for name in {**self._carried, **current}:
                now, before = current.get(name), self._carried.get(name)
                if before is None:
                    out[name] = None if now is None else dict(now)
                    continue
                counters = {"queued": 0, **(now or {})}
                for key, value in before.items():
                    counters[key] = counters.get(key, 0) + value
                out[name] = counters
            return out


_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The spangraph package this process runs."""
_ENV_PACKAGE: Final = "SPANGRAPH_AGENT_PACKAGE"
_AGENT_BOOT: Final = (
    "# spangraph._agent: the agent process of configure(offload=True)\n"
    "import importlib.util, os, sys\n"
    "package = os.environ['SPANGRAPH_AGENT_PACKAGE']\n"
    "spec = importlib.util.spec_from_file_location(\n"
    "    'spangraph', os.path.join(package, '__init__.py'), submodule_search_locations=[package]\n"
    ")\n"
    "module = sys.modules['spangraph'] = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "from spangraph.processors.offload import agent_main\n"
    "sys.exit(agent_main())\n"
)
"""``python -P -c`` code of the agent: the same spangraph package as this process's,
whatever the agent's path would find first."""


def _discard(agent: _Agent) -> None:
    """Kill an agent that did not start, reap it and close the pipes to it."""
    agent.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        agent.wait(5)
    for pipe in (agent.stdin, agent.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _above_stdio(agent: _Agent) -> None:
    """Move the pipes to the agent above file descriptors 0-2: a program that closed
    those (as daemons do) got them for the pipes, and its next line to stderr went into
    the agent's input, which it took for a frame."""
    for name in ("stdin", "stdout"):
        pipe = getattr(agent, name)
        if pipe is not None and pipe.fileno() < 3:
            moved = fcntl.fcntl(pipe.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
            pipe.close()
            setattr(agent, name, os.fdopen(moved, "wb" if name == "stdin" else "rb", 0))


def _on_current_port(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the embedded server's port as it is now: a server that came back
    on another port (its own was taken) was never reached by a new agent."""
    home = config.get("embedded_home")
    if not home:
        return config
    from ..embedded import EmbeddedServer

    try:
        info = EmbeddedServer(home).status()
    except Exception:  # not there now: the agent fails to start, and is retried
        return config
    if info is None:
        return config
    config = dict(config)
    for key, embedded in (("graph_url", "graph_embedded"), ("redis_url", "redis_embedded")):
        url = config.get(key)
        if url and config.get(embedded):
            config[key] = url_on_port(url, info.port)
    return config


def _read_line(fd: int, timeout: float) -> tuple[str, bytes]:
    """The first line read from ``fd`` within ``timeout`` seconds ('' when none came),
    and what was read after it."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not _ready(fd, False, left):
            return "", b""
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:  # (a pipe that does not block, woken for nothing)
            continue
        if not chunk:  # the process ended
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode(errors="replace").strip(), rest


# -- the agent process ----------------------------------------------------------------------


def _marshal(records: list[tuple[Any, ...]]) -> tuple[bytes, int]:
    """``marshal`` of ``records``, and how many of them were left out: a record with a
    value marshal does not take is made plain (str) first; one that cannot be (its str()
    raises), left out."""
    records = read_starts(records)  # (START records hold weak references to spans)
    try:
        return marshal.dumps(records), 0
    except ValueError:
        pass
    plain = []
    for record in records:
        try:
            plain.append(_plain_record(record))
        except Exception:
            continue
    return marshal.dumps(plain), len(records) - len(plain)


def _records_of(body: bytes) -> list[tuple[Any, ...]]:
    """The records of a frame body: one marshalled list (read whole with ``loads``:
    ``marshal.load`` from a stream reads each value with a call of its own, ten times
    slower)."""
    try:
        records = marshal.loads(body)
    except (EOFError, ValueError, TypeError):  # a cut frame: lost
        return []
    return records if type(records) is list else []


def _hand_over(processors: list[Any], records: list[tuple[Any, ...]]) -> None:
    """Queue START and END ``records`` on each of the agent's processors: at once, or,
    where one of them cannot be queued (``_queue_records`` queues nothing then), one by
    one, so that only that record is skipped (logged)."""
    for p in processors:
        try:
            p._queue_records(records)
            continue
        except Exception:
            pass
        for r in records:
            try:
                p._queue_record(r[0], r)
            except Exception:
                logging.getLogger("spangraph").exception(
                    "spangraph agent: could not process a record; skipped"
                )


def agent_main() -> int:  # pragma: no cover - runs in the agent process (tested through it)
    """The agent: hand the records on stdin to its processors, which write them."""
    from opentelemetry.sdk.resources import Resource

    from .._sdk import _open_publisher, _open_store
    from ..config import Settings
    from .graph import GraphSpanProcessor
    from .live import LiveEventProcessor

    out = sys.stdout.buffer
    otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))  # untraced, all of it
    # a Ctrl-C or SIGTERM meant for the program: it ends when the program's end of its
    # input closes, having written what it was sent
    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if hasattr(os, "nice"):
        try:  # below the traced program: on a busy machine its threads get the cores first
            os.nice(_AGENT_NICENESS)
        except OSError:  # pragma: no cover - not allowed here: run at the same priority
            pass
    try:
        config = json.loads(os.environ[_ENV_CONFIG])
        # the settings configure() resolved, not the environment read again: a keyword
        # given to configure() wins over a variable here as it does in the program
        keys = (
            "graph_url",
            "redis_url",
            "project",
            "neo4j_user",
            "neo4j_password",
            "neo4j_database",
        )
        settings = Settings(**{k: config[k] for k in keys if config.get(k) is not None})
        processors: list[Any] = []
        graph = live = None
        store = publisher = None
        queue_size = config.get("max_queue_size", 65_536)  # the program's bound, for each
        if config.get("graph", True):
            store = _open_store(settings)
            graph = GraphSpanProcessor(store, project=settings.project, max_queue_size=queue_size)
            processors.append(graph)
        if config.get("live", True) and config.get("redis_url"):
            publisher = _open_publisher(config["redis_url"])
            live = LiveEventProcessor(
                publisher, project=settings.project, max_queue_size=queue_size
            )
            processors.append(live)
        if config.get("embedded_home"):  # follow the server if it comes back elsewhere
            from ..embedded import EmbeddedServer
            from ..stores.falkordb import FalkorDBStore

            embedded = EmbeddedServer(config["embedded_home"])
            if graph is not None and store is not None and config.get("graph_embedded"):
                assert isinstance(store, FalkorDBStore)  # the embedded server's (open_store)
                port = urlsplit(settings.graph_url).port or 0
                store.check_connections(embedded.connect_check())  # (not another's)
                graph._worker.on_unavailable = embedded.follower(port, store.move_to)
            if live is not None and publisher is not None and config.get("redis_embedded"):
                port = urlsplit(config["redis_url"]).port or 0
                publisher.check_connections(embedded.connect_check())
                live._worker.on_unavailable = embedded.follower(port, publisher.move_to)
    except Exception as exc:
        out.write(f"error {exc}".replace("\n", " ").encode() + b"\n")
        out.flush()
        return 1
    try:
        out.write(b"ready\n")
        out.flush()
    except OSError:  # the traced process is gone already (a pool worker terminated)
        for p in processors:
            p.shutdown()
        return 0

    # The agent's own process: what it holds are the records queued for its workers,
    # tuples of plain values without cycles, which a collection at the default threshold
    # (700 new objects) traversed again and again while a burst's backlog waited (3 of
    # the 6 us a span of this thread in a tight loop). Its start-up heap is never
    # traversed again; young collections come every 20 000 new objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    resources: dict[int, Any] = {}
    for p in processors:  # the records name their resource by key: these are the agent's
        p._known = resources
    # span id -> START record, until its end, the longest open first
    open_spans: OrderedDict[int, tuple[Any, ...]] = OrderedDict()
    stdin = sys.stdin.buffer

    while True:
        size = stdin.read(4)
        if len(size) < 4:
            break  # end of input: the traced process shut down or went away
        body = stdin.read(int.from_bytes(size, "little"))
        # the START and END records go to the processors' queues as their own on_start /
        # on_end would put them (no span is rebuilt here), those in a row at once
        run: list[tuple[Any, ...]] = []
        for r in _records_of(body):
            what = r[0]
            try:
                if what == _START:
                    open_spans[r[2]] = r
                    if len(open_spans) > _live._MAX_OPEN:  # the longest open goes (an end that
                        open_spans.popitem(last=False)  # never came), not all of them
                    run.append(r)
                    continue
                if what == _END:
                    open_spans.pop(r[2], None)
                    run.append(r)
                    continue
                if run:  # queued before what comes after them
                    _hand_over(processors, run)
                    run = []
                if what == _EVENT:
                    started = open_spans.get(r[1])
                    if started is not None and live is not None:
                        span = rebuild(started, resources)
                        # the span's name and common attributes as they are now
                        if isinstance(r[5], str):
                            span.name = r[5]
                        if r[6]:
                            span._attributes = {**span._attributes, **r[6]}
                        live._on_event(span, r[2], r[4] or {}, r[3], *r[7:8])
                elif what == _RESOURCE:
                    resources[r[1]] = Resource(r[2] or {})
                elif what == _FLUSH:
                    flushed = [p.force_flush(30_000) for p in processors]
                    stats: dict[str, Any] = {"graph": graph.stats() if graph else None}
                    stats["live"] = live.stats() if live else None
                    stats["ok"] = all(flushed)  # False: something before it was dropped
                    try:
                        out.write(f"flushed {r[1]} {json.dumps(stats)}\n".encode())
                        out.flush()
                    except OSError:  # the traced process is gone: what it sent is written
                        pass
            except Exception:
                logging.getLogger("spangraph").exception(
                    "spangraph agent: could not process a record; skipped"
                )
        if run:
            _hand_over(processors, run)
    for p in processors:
        p.shutdown()
    try:  # the last answer: everything sent is written, or counted in these stats
        stats = {"graph": graph.stats() if graph else None, "live": live.stats() if live else None}
        out.write(f"flushed 0 {json.dumps(stats)}\n".encode())
        out.flush()
    except OSError:  # the traced process is gone
        pass
    if store is not None:
        store.close()
    if publisher is not None:
        publisher.close()
    return 0
