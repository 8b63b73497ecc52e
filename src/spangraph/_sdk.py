"""configure / flush / shutdown: wiring spangraph into an OpenTelemetry TracerProvider."""

from __future__ import annotations

import atexit
import importlib
import inspect
import logging
import math
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from . import _spans, _state
from ._ids import MAX_ID_CHARS
from ._otlp import exporter_class
from ._propagation import RunBaggageProcessor
from ._version import __version__
from .config import (
    DEFAULT_PROJECT,
    ENV_HOME,
    ENV_REDIS_URL,
    Settings,
    graph_url_setting,
    redact_url,
)
from .exceptions import ConfigurationError, StoreError
from .processors.graph import GraphSpanProcessor
from .processors.live import LiveEventProcessor, RedisPublisher
from .processors.offload import OffloadSpanProcessor
from .stores import GraphStore, open_store

if TYPE_CHECKING:
    from .embedded import EmbeddedServer

# The clients (redis, falkordb, neo4j) and the embedded server's module are imported by
# configure(), when it needs them: `import spangraph` alone (decorators, spangraph.testing)
# does not pay for them (bench/import_time.py).

_SUPPRESS_KEY = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_log = logging.getLogger("spangraph")


@dataclass
class Spangraph:
    """One configured spangraph: its settings, provider, store and processors.

    :func:`configure` makes the process-wide one; tests and embedders may make their own
    by calling it with ``tracer_provider=``.
    """

    settings: Settings
    tracer_provider: TracerProvider
    store: GraphStore | None = None
    graph_processor: GraphSpanProcessor | None = None
    live_processor: LiveEventProcessor | None = None
    offload_processor: OffloadSpanProcessor | None = None
    redis_url: str | None = None
    owns_provider: bool = False
    extra_processors: list[SpanProcessor] = field(default_factory=list)
    run_processor: RunBaggageProcessor | None = None
    metrics: Any = None
    """The ``MetricsRegistration`` of ``configure(metrics=True)``: undone by shutdown()."""
    _closer: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)
    """The pid and thread whose shutdown() of this configuration began."""
    _closed: threading.Event = field(
        default_factory=threading.Event, init=False, repr=False, compare=False
    )

    @property
    def processors(self) -> list[GraphSpanProcessor | LiveEventProcessor | OffloadSpanProcessor]:
        """spangraph's own processors of this configuration: graph and live, or offload."""
        return [
            p
            for p in (self.graph_processor, self.live_processor, self.offload_processor)
            if p is not None
        ]

    @property
    def attached(self) -> list[SpanProcessor]:
        """Every processor this configuration adds to the provider, in order."""
        front: list[SpanProcessor] = [self.run_processor] if self.run_processor else []
        return front + self.processors + self.extra_processors

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every processor has sent what was queued before this call (or the
        ``timeout`` in seconds passes, for all of them together); ``False`` on timeout,
        or when some of it was dropped (counted in :meth:`stats`). ``timeout`` must be a
        finite number >= 0 (ValueError)."""
        _check_timeout(timeout)
        deadline = time.monotonic() + min(timeout, threading.TIMEOUT_MAX)
        ok = True
        for processor in self.processors + self.extra_processors:
            left = max(0.0, deadline - time.monotonic())
            ok = processor.force_flush(int(left * 1000)) and ok
        return ok

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush and stop this configuration's processors and close its connections, and
        take the processors off the provider (a configure() after it adds new ones).
        When this is the current configuration, nothing is configured after it, as after
        :func:`spangraph.shutdown`.

        spangraph's processors flush side by side, each within its ``shutdown_timeout``
        (5 s for the graph and live processors, 10 s with ``offload``), or within
        ``timeout`` seconds when given: then the whole call takes about ``timeout``
        at most. What is not sent by then is counted as dropped and logged.

        Called again, or from another thread while it runs, it does the work once: a
        caller in another thread returns when it is done, or when its own ``timeout`` has
        passed (without one: the longest limit of spangraph's processors, plus 1 s); a
        call from inside it (a signal handler) returns at once."""
        if timeout is not None:
            _check_timeout(timeout)
        _release(self)
        me = (os.getpid(), threading.get_ident())
        with _lock:
            closer, self._closer = self._closer, self._closer or me
        if closer is not None:
            # wait for another thread doing it; not for this one (a signal handler or an
            # exit hook that ran inside it), nor in a child forked meanwhile
            if closer[0] == me[0] and closer != me:
                self._closed.wait(self._longest_wait() if timeout is None else timeout)
            return
        try:
            self._shutdown(timeout)
        finally:
            self._closed.set()

    def _longest_wait(self) -> float:
        """How long a second shutdown() waits for the first: its processors' limits."""
        return max(map(_budget, self.processors), default=5.0) + 1.0

    def _shutdown(self, timeout: float | None) -> None:
        start = time.monotonic()
        ours, extra = self.processors, self.extra_processors
        _detach(self.tracer_provider, self.attached)

        def left(processor: SpanProcessor) -> float:
            budget = _budget(processor)
            if timeout is not None:
                budget = min(budget, timeout)
            return max(0.0, start + budget - time.monotonic())

        # every flush asked for first, then waited for: one slow store does not take the
        # others' time
        waits = []
        for processor in ours:
            try:
                waits.append((processor, processor._request_flush()))
            except Exception:  # pragma: no cover - best effort
                _log.exception("spangraph: flushing %r failed", processor)
        for processor, wait in waits:
            wait(left(processor))
        for processor in ours:
            try:
                processor._shutdown(left(processor))
            except Exception:  # pragma: no cover - best effort
                _log.exception("spangraph: shutting down %r failed", processor)
        for other in extra:
            _shutdown_other(other, None if timeout is None else left(other))
        if self.metrics is not None:  # its final counts are carried; no more reports of it
            self.metrics.unregister()
        if self.store is not None:
            self.store.close()
        if self.live_processor is not None:
            self.live_processor.publisher.close()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each processor: queued, sent, dropped, failed batches, retries.
        With ``offload``: ``offload`` for this process's side, and ``graph`` and ``live``
        as the agent process reported them at the last flush."""
        out = {}
        if self.graph_processor is not None:
            out["graph"] = self.graph_processor.stats()
        if self.live_processor is not None:
            out["live"] = self.live_processor.stats()
        if self.offload_processor is not None:
            out["offload"] = self.offload_processor.stats()
            for name, counters in self.offload_processor.agent_stats().items():
                if counters is not None:
                    out[name] = counters
        return out


def _detach(provider: TracerProvider, processors: list[SpanProcessor]) -> None:
    """Take ``processors`` off ``provider``. The SDK has no public way to: this reaches
    into its processor list when it looks as expected, and otherwise leaves them (a
    processor that was shut down takes no more spans, it only costs a call per span)."""
    multi = getattr(provider, "_active_span_processor", None)
    lock = getattr(multi, "_lock", None)
    if lock is None or not isinstance(getattr(multi, "_span_processors", None), tuple):
        return
    gone = {id(p) for p in processors}
    with lock:
        multi._span_processors = tuple(  # type: ignore[union-attr]
            p
            for p in multi._span_processors  # type: ignore[union-attr]
            if id(p) not in gone
        )


def _shutdown_other(processor: SpanProcessor, timeout: float | None) -> None:
    """Shut down a processor that is not spangraph's (the OTLP export of a provider
    spangraph made), within ``timeout`` seconds where the SDK's processor takes one."""
    try:
        inner = getattr(processor, "_batch_processor", None)
        if timeout is not None and callable(getattr(inner, "shutdown", None)):
            inner.shutdown(timeout_millis=int(timeout * 1000))  # type: ignore[union-attr]
        processor.shutdown()
    except Exception:  # pragma: no cover - best effort
        _log.exception("spangraph: shutting down %r failed", processor)


def _budget(processor: SpanProcessor) -> float:
    """How long ``processor`` may take to shut down (its ``shutdown_timeout``)."""
    return float(getattr(processor, "_shutdown_timeout", 5.0))


def _check_timeout(timeout: object) -> None:
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")


_current: Spangraph | None = None
_last: weakref.ReferenceType[Spangraph] | None = None
"""The configuration :func:`shutdown` shut down last (a second caller waits for it)."""
_lock = threading.RLock()  # re-entered: configure() shuts the previous instance down


def _new_lock_after_fork() -> None:
    # configure() holds the lock while it shuts the previous configuration down and opens
    # connections (seconds): a child forked meanwhile inherits it held by a thread it
    # does not have, and its shutdown at exit would wait for ever
    global _lock
    _lock = threading.RLock()
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _current is not None:
        # a process multiprocessing forks clears its finalizers first, then runs these
        # (billiard, Celery's fork of it, runs multiprocessing's: billiard 4 shares them)
        util.register_after_fork(_MULTIPROCESSING, _shut_down_with_multiprocessing)
        util.register_after_fork(_POOL_WORKERS, _pool_workers_start_afresh)


class _Token:
    """Something multiprocessing can hold a weak reference to."""


_MULTIPROCESSING: Final = _Token()
_POOL_WORKERS: Final = _Token()
_finalizer_pid = 0


def _shut_down_with_multiprocessing(_: object = None) -> None:
    """Shut down when this process ends, if multiprocessing started it.

    multiprocessing ends a process it forked (the ``fork`` and ``forkserver`` start
    methods) with ``os._exit`` after its own exit function: ``atexit`` never runs there,
    so what such a process traced would be lost; its finalizers do run."""
    global _finalizer_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None or _finalizer_pid == os.getpid():
        return
    _finalizer_pid = os.getpid()
    # last (after the pools' and the program's own finalizers), with the default limits
    util.Finalize(None, _at_exit, exitpriority=-100)


def _shut_down_with_celery_pool_processes() -> None:
    """When Celery is loaded: shut down when one of its pool's processes ends (its
    ``worker_process_shutdown`` signal). billiard's pool ends a worker process with
    ``os._exit`` from inside it, running neither ``atexit`` nor any finalizer: only that
    signal (e.g. after ``--max-tasks-per-child``)."""
    if "celery" not in sys.modules:
        return
    try:
        signals = importlib.import_module("celery.signals")
    except Exception:  # a Celery that cannot be imported whole: nothing to hook
        return
    shutdown_signal = getattr(signals, "worker_process_shutdown", None)
    if shutdown_signal is not None:
        # (a strong reference, by a fixed uid: connected once however often configured)
        shutdown_signal.connect(_celery_process_ends, weak=False, dispatch_uid=_CELERY_UID)


_CELERY_UID: Final = "spangraph.shutdown"


def _celery_process_ends(**_: Any) -> None:
    _at_exit()


def _at_exit() -> None:
    """The process ends: end the spans of spangraph's blocks still open, which nothing
    else would end (a daemon thread's, a task never finished), then shut down."""
    _spans.end_open_spans()
    shutdown()


def _started_by_a_process_library() -> bool:
    """Whether multiprocessing or billiard started this process (a ``Process``, a pool's
    worker, a Celery worker's child)."""
    process = sys.modules.get("multiprocessing.process")
    if process is not None and process.parent_process() is not None:
        return True
    billiard = sys.modules.get("billiard.process")
    current = getattr(billiard, "current_process", None)
    return current is not None and getattr(current(), "_parent_pid", None) is not None


def _pool_workers_start_afresh(_: object = None) -> None:
    """In a worker of a process pool (``ProcessPoolExecutor``, ``multiprocessing.Pool``)
    forked just now: no current span. Forked from the thread that first gave it work, it
    would otherwise keep that thread's context for every task, and file the work of
    every later run under the span that was current then (a task carries no context). A
    plain ``Process`` keeps its parent's, so that it nests under the step it started in.
    Only right after the fork: a task that attached its caller's context keeps it when
    it calls ``configure()`` then."""
    process = sys.modules.get("multiprocessing.process")
    target = getattr(process.current_process(), "_target", None) if process else None
    if target is None:
        return
    workers = (
        getattr(sys.modules.get("concurrent.futures.process"), "_process_worker", None),
        getattr(sys.modules.get("multiprocessing.pool"), "worker", None),
    )
    if any(target is worker for worker in workers if worker is not None):
        otel_context.attach(otel_context.Context())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)
_atexit_registered = False
_threading_instrumented = False


def _provider(
    given: TracerProvider | None, service_name: str | None
) -> tuple[TracerProvider, bool]:
    """The provider to add to, and whether spangraph made it (then :func:`configure`
    sets it globally once everything else worked)."""
    if given is not None:
        if not hasattr(given, "add_span_processor"):
            raise ConfigurationError(
                "tracer_provider", "must be an OpenTelemetry SDK TracerProvider"
            )
        return given, False
    existing = trace.get_tracer_provider()
    if hasattr(existing, "add_span_processor"):
        # the user's own provider: add to it, never replace it. One an earlier
        # configure() made (and set globally: it cannot be replaced) is spangraph's still:
        # it gets the OTLP export again, as the earlier configuration's went with it
        # (an SDK TracerProvider, or one like it: only add_span_processor and get_tracer
        # are called on it)
        # (by identity: a provider may be unhashable, as Logfire's, a dataclass)
        return cast(TracerProvider, existing), any(p is existing for p in _made_providers)
    attrs = {"service.name": service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attrs))
    _made_providers.add(provider)
    return provider, True


_made_providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()
"""The TracerProviders configure() made (and set as the global one)."""


def _processors_of(provider: Any) -> tuple[Any, ...]:
    """The processors of an SDK TracerProvider (its private list, when it is there)."""
    found = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", None)
    return found if isinstance(found, tuple) else ()


def _attach(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Add ``processor`` to ``provider``, keeping the processors it has: a provider whose
    ``add_span_processor`` replaces its default processor unless told not to (Phoenix's,
    from ``phoenix.otel.register()``: its exporter) is told not to; one that dropped a
    processor all the same gets a warning naming it."""
    before = _processors_of(provider)
    add = provider.add_span_processor
    try:
        keeps = "replace_default_processor" in inspect.signature(add).parameters
    except (TypeError, ValueError):  # a callable without a signature to read
        keeps = False
    if keeps:
        add(processor, replace_default_processor=False)  # type: ignore[call-arg]
    else:
        add(processor)
    after = _processors_of(provider)
    gone = [p for p in before if not any(p is q for q in after)]
    if gone:
        _log.warning(
            "spangraph: adding its span processor to the TracerProvider (%s) removed %s "
            "from it: the spans no longer reach what it exported to. Add it again after "
            "spangraph.configure(), or pass configure(tracer_provider=...) a provider "
            "that keeps its processors",
            type(provider).__qualname__,
            ", ".join(type(p).__qualname__ for p in gone),
        )


class _RefusedProviderWatch(logging.Filter):
    """On OpenTelemetry's ``opentelemetry.trace`` logger: notices it refusing another
    library's TracerProvider while the global one is a provider :func:`configure` made,
    and says what that means (the message is let through as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _REFUSED or not any(
            p is trace.get_tracer_provider() for p in _made_providers
        ):
            return True
        caller = _caller_outside(("opentelemetry", "logging", "spangraph"))
        _log.warning(
            "spangraph: %s set a TracerProvider of its own after spangraph.configure() "
            "made the global one, and OpenTelemetry refused it: spans from that "
            "provider's tracers do not reach spangraph, spans from spangraph's do not "
            "reach that provider's exporters, and runs lose children on both sides. Call "
            "spangraph.configure() after that setup (spangraph then adds to its "
            "provider), or pass configure(tracer_provider=...)",
            caller or "a library",
        )
        return True


_REFUSED: Final = "Overriding of current TracerProvider is not allowed"
"""What OpenTelemetry logs when a TracerProvider is set after another was."""
_watch_installed = False


def _watch_for_refused_providers() -> None:
    global _watch_installed
    if not _watch_installed:
        _watch_installed = True
        logging.getLogger("opentelemetry.trace").addFilter(_RefusedProviderWatch())


def _caller_outside(packages: tuple[str, ...]) -> str | None:
    """The module of the innermost frame on this thread's stack that is not in one of
    ``packages``."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if isinstance(module, str) and module.partition(".")[0] not in packages:
            return module
        frame = frame.f_back
    return None


def _otlp_processor() -> SpanProcessor | None:
    """The standard OTLP exporter when ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set,
    as ``OTEL_TRACES_EXPORTER`` (``none``: no export) and the OTLP protocol variables
    (``grpc``, else OTLP/HTTP) say."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    exporter = exporter_class("traces", "spangraph.configure()")
    if exporter is None:
        return None
    try:
        return BatchSpanProcessor(exporter())
    except ValueError as exc:  # the SDK reads OTEL_BSP_* itself and fails on bad values
        raise ConfigurationError(_bsp_variable(str(exc)), _bsp_message(exc)) from None


_BSP_VARIABLES = (  # the BatchSpanProcessor argument each OTEL_BSP_* variable sets
    ("max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
    ("max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE"),
    ("schedule_delay_millis", "OTEL_BSP_SCHEDULE_DELAY"),
    ("export_timeout_millis", "OTEL_BSP_EXPORT_TIMEOUT"),
)


def _bsp_variable(reason: str) -> str:
    """The OTEL_BSP_* variable the SDK's ``ValueError`` is about: the argument it names
    first (``max_export_batch_size must be <= max_queue_size`` is about the batch size)."""
    for argument, variable in _BSP_VARIABLES:
        if reason.startswith(argument):
            return variable
    named = sorted(k for k in os.environ if k.startswith("OTEL_BSP_"))
    return ", ".join(named) or "OTEL_BSP_*"


def _bsp_message(exc: ValueError) -> str:
    values = ", ".join(
        f"{variable}={os.environ[variable]!r}"
        for _, variable in sorted(_BSP_VARIABLES, key=lambda pair: pair[1])
        if variable in os.environ
    )
    return f"the OTLP span exporter refused {values or 'the defaults'}: {exc}"


def _instrument_threads() -> None:
    global _threading_instrumented
    if _threading_instrumented:
        return
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentor = ThreadingInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
    _threading_instrumented = True


def _embedded(home: Path) -> EmbeddedServer:
    from .embedded import EmbeddedServer

    return EmbeddedServer(home)


def _open_store(settings: Settings, *, embedded: bool = False) -> GraphStore:
    """The store of ``settings``, pinged and with its schema. ``embedded``: the embedded
    server of ``settings.home`` (errors name SPANGRAPH_HOME, not a URL nobody set)."""
    url = redact_url(settings.graph_url)
    setting = graph_url_setting(settings.graph_url)  # (NEO4J_URI: the variable set)

    def unusable(exc: Exception) -> ConfigurationError:
        if embedded and isinstance(exc, StoreError):  # e.g. MISCONF: its disk is full
            return ConfigurationError(
                ENV_HOME,
                f"its embedded server ({url}) cannot be used: {exc} (its log: "
                f"{_embedded(settings.home).log_file})",
            )
        return ConfigurationError(setting, f"cannot use {url}: {exc}")

    try:
        store = open_store(settings, embedded=embedded)
    except ConfigurationError:
        raise  # it names the setting already, with the password hidden
    except (StoreError, ValueError, TypeError) as exc:  # the client refused the URL
        raise unusable(exc) from None
    try:
        store.ping()
        store.ensure_schema()
    except StoreError as exc:
        store.close()
        raise unusable(exc) from None
    return store


def _open_publisher(url: str) -> RedisPublisher:
    try:
        publisher = RedisPublisher.from_url(url)
    except (ValueError, TypeError) as exc:  # e.g. ?socket_timeout=abc
        raise ConfigurationError(ENV_REDIS_URL, f"cannot use {redact_url(url)}: {exc}") from None
    try:
        publisher.client.ping()
    except Exception as exc:
        publisher.close()
        # an option the client takes apart only when it connects (?ssl_cert_reqs=bogus)
        # is the URL's fault, not the server's
        import redis

        unreachable = isinstance(exc, redis.ConnectionError | redis.TimeoutError | OSError)
        what = "cannot reach Redis at" if unreachable else "cannot use"
        raise ConfigurationError(ENV_REDIS_URL, f"{what} {redact_url(url)}: {exc}") from None
    if _cluster_enabled(publisher):
        publisher.close()
        # each publish is one script over several keys of a run (its seq counter, its
        # stream) and of other runs: a cluster refuses it (CROSSSLOT), and every live
        # event would be dropped
        raise ConfigurationError(
            ENV_REDIS_URL,
            f"{redact_url(url)} is a Redis Cluster node; live events need one Redis "
            "server (a primary, with replicas or Sentinel if you like)",
        )
    return publisher


def _cluster_enabled(publisher: RedisPublisher) -> bool:
    try:
        info = publisher.client.info("cluster")
    except Exception:  # a server without the section (or a proxy that hides it)
        return False
    return str(info.get("cluster_enabled", 0)) == "1"


def configure(
    *,
    graph_url: str | None = None,
    redis_url: str | None = None,
    home: str | os.PathLike[str] | None = None,
    project: str | None = None,
    jaeger_url: str | None = None,
    api_token: str | None = None,
    neo4j_user: str | None = None,
    neo4j_password: str | None = None,
    neo4j_database: str | None = None,
    service_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    graph: bool = True,
    live: bool = True,
    instrument_threads: bool = True,
    metrics: bool = False,
    max_queue_size: int = 65_536,
    offload: bool | None = None,
    propagate: bool | None = None,
) -> Spangraph:
    """Add spangraph's processors to the OpenTelemetry TracerProvider; the
    :class:`Spangraph` made (its settings, store, processors, ``stats()``).

    With no arguments: the embedded store (started if needed) for both the graph and live
    events, the project from ``SPANGRAPH_PROJECT``. Every setting keyword (``graph_url``,
    ``redis_url``, ``home``, ``project``, ``jaeger_url``, ``api_token``, ``neo4j_*``,
    ``offload``, ``propagate``) overrides its environment variable (see
    ``spangraph.config``). The user's own TracerProvider is used when one is set (or
    ``tracer_provider=``); otherwise one is created and set globally, for
    ``service_name`` (else ``OTEL_SERVICE_NAME``), with the standard OTLP exporter too
    when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. ``graph=False`` or ``live=False`` leaves
    out the graph or the live processor; ``instrument_threads`` carries the context into
    ``threading.Thread`` and executors; ``max_queue_size`` bounds each processor's
    queue. Calling it again replaces the previous configuration. ``metrics=True`` reports
    the processors' health (queue depth, items sent and dropped, retries, send latency)
    as OpenTelemetry metrics through the global MeterProvider. ``offload=True`` (or
    ``SPANGRAPH_OFFLOAD=1``) maps and writes spans in a spangraph agent process instead
    of on threads of this one: the least overhead for programs that make spans in hot
    loops (``docs/performance.md``); the health metrics then cover this process's side
    only. ``propagate=True`` (or
    ``SPANGRAPH_PROPAGATE=1``) carries the run's ids to other services in W3C Baggage and
    joins runs whose ids arrive that way (docs/sdk.md, "Runs across services"). Raises
    :class:`~spangraph.exceptions.ConfigurationError`, naming the setting, for invalid
    settings or unreachable servers.
    """
    global _current, _atexit_registered
    if service_name is not None and (not isinstance(service_name, str) or not service_name.strip()):
        raise ConfigurationError(
            "service_name", f"must be a non-blank string, got {service_name!r}"
        )
    if (
        not isinstance(max_queue_size, int)
        or isinstance(max_queue_size, bool)
        or max_queue_size < 1
    ):
        raise ConfigurationError(
            "max_queue_size", f"must be a whole number >= 1, got {max_queue_size!r}"
        )
    settings = Settings.from_env(
        graph_url=graph_url,
        redis_url=redis_url,
        home=home,
        project=project,
        jaeger_url=jaeger_url,
        api_token=api_token,
        neo4j_user=neo4j_user,
        neo4j_password=neo4j_password,
        neo4j_database=neo4j_database,
        offload=offload,
        propagate=propagate,
    )
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled:
        # the SDK records nothing: no server to start, no processor, no agent, no export
        _log.info("spangraph: OTEL_SDK_DISABLED=true: nothing is recorded or started")
        graph = live = metrics = False
        settings = settings.replace(offload=False)
    with _lock:
        replaced = None
        if _current is not None:
            replaced = _current.live_processor
            _current.shutdown()
            _current = None
        provider, owns = _provider(tracer_provider, service_name)
        instance = Spangraph(settings=settings, tracer_provider=provider, owns_provider=owns)
        # Everything that can fail happens before anything is attached to the provider:
        # a configure() that fails leaves the provider as it was and closes what it opened
        # (processors left attached would, after the next configure(), send twice).
        try:
            otlp = _otlp_processor() if owns and not disabled else None
            if otlp is not None:
                instance.extra_processors.append(otlp)
            # our own calls (pings, schema, the embedded server's checks) make no spans,
            # whatever instrumentation of redis or neo4j the program has turned on
            token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
            try:
                _build(instance, graph=graph, live=live, max_queue_size=max_queue_size)
            finally:
                otel_context.detach(token)
            if replaced is not None and instance.live_processor is not None:
                # spans open across the change: what the replaced configuration
                # published of them is not published again
                instance.live_processor._take_over(replaced)
            if instrument_threads:
                _instrument_threads()
            if metrics:
                from ._metrics import register_metrics

                # through the global MeterProvider
                instance.metrics = register_metrics(instance)
        except BaseException:
            instance.shutdown()
            raise
        if owns and trace.get_tracer_provider() is not provider:
            trace.set_tracer_provider(provider)
        _check_limits(provider)
        if settings.propagate:
            instance.run_processor = RunBaggageProcessor()
            _check_propagators()
        for processor in instance.attached:
            _attach(provider, processor)
        if owns:
            _watch_for_refused_providers()
        _state.propagate = settings.propagate
        _state.tracer = provider.get_tracer(_state.INSTRUMENTATION_NAME, __version__)
        _state.project = settings.project
        testing = sys.modules.get(f"{__package__}.testing")
        if testing is not None:  # captures open: they go on (with a warning)
            testing._configured(provider)
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
        # loaded now, if it is not, so that a process forked later finds its finalizers
        # to run at exit: billiard (Celery's pool) forks and bootstraps with it without
        # importing it first
        import multiprocessing.util  # noqa: F401

        if _started_by_a_process_library():
            _shut_down_with_multiprocessing()  # configured in a process it started
        _shut_down_with_celery_pool_processes()
        _current = instance
        return instance


def _check_propagators() -> None:
    """Warn when the global propagators send no ``baggage`` header (``OTEL_PROPAGATORS``
    without ``baggage``): ``propagate=True`` then carries no run to any other service."""
    from opentelemetry import propagate

    try:
        fields = propagate.get_global_textmap().fields
    except Exception:  # a propagator of the program's own that cannot say
        return
    if "baggage" not in fields:
        _log.warning(
            "spangraph: propagate=True, but the OpenTelemetry propagators send no baggage "
            "header (OTEL_PROPAGATORS=%s): called services will not join the run; add "
            "baggage, e.g. OTEL_PROPAGATORS=tracecontext,baggage",
            os.environ.get("OTEL_PROPAGATORS", ""),
        )


_MIN_ATTRIBUTES: Final = 32
"""Attributes a span needs room for: spangraph's own (up to 10), an LLM call's
``gen_ai.*`` ones, and some of the user's."""


def _check_limits(provider: TracerProvider) -> None:
    """Warn when the provider's span limits cut what the graph needs: run ids cut to a
    prefix no longer tell runs apart, and attributes past the count limit are lost
    (spangraph's own among them). Read from the SDK's private field, when it is there."""
    limits = getattr(provider, "_span_limits", None)
    # a span's attributes are cut to max_span_attribute_length alone (SpanLimits makes it
    # default to max_attribute_length; None there is no limit, whatever the other says)
    length = getattr(limits, "max_span_attribute_length", None)
    count = getattr(limits, "max_span_attributes", None)
    if isinstance(length, int) and length < MAX_ID_CHARS:
        _log.warning(
            "spangraph: the TracerProvider cuts attribute values to %d characters "
            "(SpanLimits / OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, "
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT): workflow, execution and "
            "branch ids longer than that are cut, and cut ids no longer tell runs apart "
            "(spangraph's own ids have 36 characters, ids given may have up to %d)",
            length,
            MAX_ID_CHARS,
        )
    if isinstance(count, int) and count < _MIN_ATTRIBUTES:
        _log.warning(
            "spangraph: the TracerProvider keeps at most %d attributes a span "
            "(SpanLimits / OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT): spangraph's own and an LLM "
            "call's take up to about 30; past the limit the oldest are dropped, and with "
            "them the run's ids (at least %d is needed)",
            count,
            _MIN_ATTRIBUTES,
        )


def _build(instance: Spangraph, *, graph: bool, live: bool, max_queue_size: int) -> None:
    """Open the store and Redis of ``instance.settings`` and make its processors (not
    attached to any provider yet)."""
    settings = instance.settings
    server = None
    if (graph and settings.graph_is_embedded) or (live and settings.redis_is_embedded):
        server = _embedded(settings.home).ensure_running()
    store = None
    graph_url = None
    if graph:
        chosen = (
            settings.replace(graph_url=server.graph_url)
            if settings.graph_is_embedded and server
            else settings
        )
        store = _open_store(chosen, embedded=settings.graph_is_embedded and server is not None)
        graph_url = chosen.graph_url
    instance.store = store
    if live and settings.live_enabled:
        url = server.redis_url if settings.redis_is_embedded and server else settings.redis_url
        publisher = _open_publisher(url)
        instance.redis_url = url
        if settings.offload:
            publisher.close()  # reachable: the agent publishes
        else:
            try:
                instance.live_processor = LiveEventProcessor(
                    publisher, project=settings.project, max_queue_size=max_queue_size
                )
            except BaseException:
                publisher.close()
                raise
    if settings.offload:
        if store is not None or instance.redis_url is not None:
            instance.offload_processor = OffloadSpanProcessor(
                {
                    "graph_url": graph_url,
                    "redis_url": instance.redis_url,
                    "project": settings.project,
                    "graph": store is not None,
                    "live": instance.redis_url is not None,
                    # the agent takes these rather than reading the environment again,
                    # so what configure() was given wins there as it does here
                    "neo4j_user": settings.neo4j_user,
                    "neo4j_password": settings.neo4j_password,
                    "neo4j_database": settings.neo4j_database,
                    # where the agent looks when the embedded server stops answering
                    "embedded_home": None if server is None else str(settings.home),
                    "graph_embedded": settings.graph_is_embedded,
                    "redis_embedded": settings.redis_is_embedded,
                    "max_queue_size": max_queue_size,  # the agent's queues too
                },
                max_queue_size=max_queue_size,
                max_batch_size=min(2048, max_queue_size),
            )
    elif store is not None:
        instance.graph_processor = GraphSpanProcessor(
            store, project=settings.project, max_queue_size=max_queue_size
        )
    if server is not None:  # follow the embedded server if it comes back on another port
        # and never write into another server that took its port meanwhile
        import redis

        from .stores.falkordb import FalkorDBStore

        embedded = _embedded(settings.home)
        try:
            if instance.graph_processor is not None and settings.graph_is_embedded:
                store = instance.graph_processor.store
                assert isinstance(store, FalkorDBStore)  # the embedded server's (open_store)
                store.check_connections(embedded.connect_check())
                follow = embedded.follower(server.port, store.move_to)
                instance.graph_processor._worker.on_unavailable = follow
            if instance.live_processor is not None and settings.redis_is_embedded:
                publisher = instance.live_processor.publisher
                publisher.check_connections(embedded.connect_check())
                instance.live_processor._worker.on_unavailable = embedded.follower(
                    server.port, publisher.move_to
                )
        except (StoreError, redis.RedisError, OSError) as exc:  # it went away just now
            raise ConfigurationError(
                "SPANGRAPH_HOME", f"its embedded server cannot be used: {exc}"
            ) from None


def current() -> Spangraph | None:
    """The configuration made by the last :func:`configure`, or ``None``."""
    return _current


def flush(timeout: float = 30.0) -> bool:
    """Wait until every span and event so far is written and published (or ``timeout``
    seconds pass, one deadline for all processors); ``False`` on timeout, or when some
    of it was dropped (the store or Redis down past the retries, a full queue, a span
    that could not be read: counted in ``stats()``). ``timeout`` must be a finite number
    >= 0 (ValueError). Safe to call when not configured."""
    _check_timeout(timeout)
    instance = _current
    return True if instance is None else instance.flush(timeout)


def shutdown(timeout: float | None = None) -> None:
    """Flush, then stop spangraph's processors and close its connections. The embedded
    server keeps running for other processes (``spangraph down`` stops it).

    The processors flush side by side, each within its own limit (5 s for the graph and
    live processors, 10 s with ``offload``); with ``timeout`` (seconds, finite and >= 0,
    else ValueError) the whole call takes about that long at most. What is not sent by
    then is counted as dropped and logged. Safe to call when not configured."""
    if timeout is not None:
        _check_timeout(timeout)
    global _last
    with _lock:  # one caller shuts it down (atexit and the program may both call)
        instance = _current
        if instance is not None:
            _release(instance)
            _last = weakref.ref(instance)
        elif _last is not None:  # another caller may be shutting it down: wait for it
            instance = _last()
    if instance is not None:
        instance.shutdown(timeout)


def _release(instance: Spangraph) -> None:
    """When ``instance`` is the current configuration, make it no longer current: the
    decorators go back to the global tracer, the default project, and no baggage."""
    global _current
    with _lock:
        if _current is not instance:
            return
        _current = None
        _state.tracer = trace.get_tracer(_state.INSTRUMENTATION_NAME, __version__)
        _state.project = DEFAULT_PROJECT
        _state.propagate = False
