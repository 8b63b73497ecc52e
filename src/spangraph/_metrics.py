"""spangraph's own health as OpenTelemetry metrics: queue depth, items sent and dropped,
failed batches, retries and send latency of the graph and live processors.

The counters are *observable* instruments: their callbacks read the counters the
processors' workers keep anyway, at collection time, so they cost nothing on the span hot
path. Only the send latency is recorded as it happens, once per batch, on the worker
thread (through the worker's ``on_sent`` hook).

Every data point carries ``processor`` = ``graph`` | ``live``. Exported through the
Collector's ``prometheus`` exporter the names become (dots to underscores, ``_total`` on
counters, the unit on the histogram)::

    spangraph_processor_queue_size                      gauge
    spangraph_processor_items_sent_total                counter
    spangraph_processor_items_dropped_total             counter
    spangraph_processor_failed_batches_total            counter
    spangraph_processor_retries_total                   counter
    spangraph_processor_send_duration_seconds_bucket    histogram (_sum, _count)

Use::

    from spangraph._metrics import register_metrics
    register_metrics(spangraph.configure())      # the global MeterProvider
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from ._version import __version__

_log = logging.getLogger("spangraph")

METER_NAME: Final = "spangraph"

QUEUE_SIZE: Final = "spangraph.processor.queue.size"
ITEMS_SENT: Final = "spangraph.processor.items.sent"
ITEMS_DROPPED: Final = "spangraph.processor.items.dropped"
FAILED_BATCHES: Final = "spangraph.processor.failed_batches"
RETRIES: Final = "spangraph.processor.retries"
SEND_DURATION: Final = "spangraph.processor.send.duration"

PROCESSOR_ATTRIBUTE: Final = "processor"
"""The attribute on every data point: ``graph`` or ``live``."""

SEND_DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Histogram boundaries in seconds (the SDK's default ones are meant for milliseconds)."""


@dataclass(frozen=True)
class InstrumentSpec:
    """One instrument spangraph creates: its name, kind, unit and description."""

    name: str
    kind: str  # "gauge" | "counter" | "histogram"
    unit: str
    description: str
    stat: str | None = None  # the key of the processors' stats() it reads, if observable


INSTRUMENTS: Final[tuple[InstrumentSpec, ...]] = (
    InstrumentSpec(QUEUE_SIZE, "gauge", "{item}", "Items waiting in the processor's queue.",
                   "queued"),
    InstrumentSpec(ITEMS_SENT, "counter", "{item}",
                   "Items written to the graph store or published to Redis.", "sent"),
    InstrumentSpec(ITEMS_DROPPED, "counter", "{item}",
                   "Items dropped: queue full, store or Redis unavailable, rejected batch, "
                   "not sent before shutdown.", "dropped"),
    InstrumentSpec(FAILED_BATCHES, "counter", "{batch}",
                   "Batches given up: rejected, or still failing when retries stopped.",
                   "failed"),
    InstrumentSpec(RETRIES, "counter", "{retry}",
                   "Send attempts retried because the store or Redis was unavailable.",
                   "retries"),
    InstrumentSpec(SEND_DURATION, "histogram", "s",
                   "Duration of one successful batch write (graph) or publish (live)."),
)  # fmt: skip
"""What :func:`register_metrics` creates (the dashboards and their tests read this)."""


class _Instruments:
    """The instruments of one MeterProvider; they report the registered configuration.

    OpenTelemetry returns the *existing* instrument (with its first callbacks) when one is
    created twice under the same name, so the instruments are made once per provider and
    their callbacks read whichever configuration is registered now (``configure()`` called
    again replaces the previous one).
    """

    def __init__(self, meter_provider: MeterProvider) -> None:
        meter = meter_provider.get_meter(METER_NAME, __version__)
        self.instance: Any = None
        self.histogram: Histogram | None = None
        # Counters stay monotonic across configurations and counter resets: what earlier
        # configurations (and a processor's counters before a reset, e.g. in a forked
        # child) counted is carried as an offset per (stat, processor).
        self._offsets: dict[tuple[str, str], int] = {}
        self._last: dict[tuple[str, str], int] = {}
        self._retired: list[tuple[Callable[[], Any], dict[tuple[str, str], int]]] = []
        """Retired configurations (a weak reference where one can be made: a configuration
        that was shut down must not be kept alive) and their final counts."""
        for spec in INSTRUMENTS:
            if spec.kind == "histogram":
                self.histogram = meter.create_histogram(
                    spec.name,
                    unit=spec.unit,
                    description=spec.description,
                    explicit_bucket_boundaries_advisory=list(SEND_DURATION_BUCKETS),
                )
                continue
            create = (
                meter.create_observable_gauge
                if spec.kind == "gauge"
                else meter.create_observable_counter
            )
            create(
                spec.name,
                callbacks=[self._callback(spec.stat or "", spec.kind == "counter")],
                unit=spec.unit,
                description=spec.description,
            )

    def processors(self) -> list[tuple[str, Any]]:
        instance = self.instance
        if instance is None:
            return []
        found = []
        for name in ("graph", "live", "offload"):
            # a Spangraph (configure()) has graph_processor / live_processor (or, with
            # offload, offload_processor); the OTLP ingest of `spangraph serve` has graph /
            # live
            processor = getattr(instance, f"{name}_processor", None)
            if processor is None:
                processor = getattr(instance, name, None)
            if processor is not None and hasattr(processor, "stats"):
                found.append((name, processor))
        return found

    def _callback(
        self, stat: str, monotonic: bool
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for name, processor in self.processors():
                try:
                    value = processor.stats()[stat]
                except Exception:  # never break the collection of the other metrics
                    _log.debug("spangraph metrics: cannot read %s of %s", stat, name, exc_info=True)
                    continue
                if monotonic:
                    value = self._continued((stat, name), value)
                yield Observation(value, {PROCESSOR_ATTRIBUTE: name})

        return observe

    def _continued(self, key: tuple[str, str], value: int) -> int:
        """``value`` of the current configuration's counter plus what came before it."""
        with _lock:
            last = self._last.get(key, 0)
            if value < last:  # the counter was reset (a fork's new worker): keep its past
                self._offsets[key] = self._offsets.get(key, 0) + last
            self._last[key] = value
            return value + self._offsets.get(key, 0)

    def retire(self) -> None:
        """Fold the current configuration's final counts into the offsets (called with
        ``_lock`` held, when another one replaces it or it is unregistered)."""
        instance = self.instance
        finals: dict[tuple[str, str], int] = {}
        for name, processor in self.processors():
            try:
                stats = processor.stats()
            except Exception:
                _log.debug("spangraph metrics: cannot read the stats of %s", name, exc_info=True)
                stats = {}
            for spec in INSTRUMENTS:
                if spec.kind != "counter" or spec.stat is None:
                    continue
                key = (spec.stat, name)  # never less than what was reported already
                finals[key] = max(stats.get(spec.stat, 0), self._last.get(key, 0))
        for key, value in finals.items():
            self._offsets[key] = self._offsets.get(key, 0) + value
        self._last.clear()
        try:
            held: Callable[[], Any] = weakref.ref(instance)
        except TypeError:  # (no weak reference to it: held, the last 8 at most)
            held = functools.partial(_same, instance)
        self._retired.append((held, finals))
        del self._retired[:-8]  # re-registering an instance undoes its fold; a few suffice

    def revive(self, instance: Any) -> None:
        """Undo :meth:`retire` for ``instance`` registered again (its counters go on
        from where they were, so its earlier counts must not be carried twice)."""
        for i, (held, finals) in enumerate(self._retired):
            if held() is instance:
                for key, value in finals.items():
                    self._offsets[key] = self._offsets.get(key, 0) - value
                    self._last[key] = value
                del self._retired[i]
                return


def _hook(histogram: Histogram, name: str) -> Callable[[float, int], None]:
    attributes = {PROCESSOR_ATTRIBUTE: name}
    record = histogram.record

    def on_sent(seconds: float, count: int) -> None:
        record(seconds, attributes)

    return on_sent


_registry: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_registry_strong: dict[int, tuple[Any, _Instruments]] = {}  # providers without weakref support
_global: _Instruments | None = None
"""The instruments made through the global MeterProvider (the API's proxy until an SDK
provider is set, to which the proxy's instruments then delegate)."""
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # the metric reader's thread may hold the lock at the moment of a fork: the child
    # would inherit it held by a thread it does not have, and its shutdown (at exit too)
    # would wait for ever
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def _lookup(provider: MeterProvider) -> _Instruments | None:
    try:
        return _registry.get(provider)
    except TypeError:
        return _registry_strong.get(id(provider), (None, None))[1]


def _store(provider: MeterProvider, instruments: _Instruments) -> None:
    try:
        _registry[provider] = instruments
    except TypeError:
        _registry_strong[id(provider)] = (provider, instruments)


def _instruments_for(meter_provider: MeterProvider | None) -> _Instruments:
    global _global
    current = metrics.get_meter_provider()
    provider = meter_provider if meter_provider is not None else current
    if provider is not current:
        instruments = _lookup(provider)
        if instruments is None:
            instruments = _Instruments(provider)
            _store(provider, instruments)
        return instruments
    # The global provider: the same instruments before and after an SDK provider is set
    # (made on the proxy first, they delegate to it), or those already made on it.
    if _global is None:
        _global = _lookup(provider)
        if _global is None:
            _global = _Instruments(provider)
            _store(provider, _global)
    return _global


def _same(value: Any) -> Any:
    return value


class MetricsRegistration:
    """What :func:`register_metrics` did; :meth:`unregister` undoes it."""

    def __init__(self, instruments: _Instruments, instance: Any) -> None:
        self._instruments = instruments
        self.instance = instance

    @property
    def active(self) -> bool:
        return self._instruments.instance is self.instance

    def unregister(self) -> None:
        """Stop reporting this configuration (idempotent)."""
        with _lock:
            if self._instruments.instance is self.instance:
                _detach(self._instruments)
                self._instruments.retire()
                self._instruments.instance = None


def _workers(instruments: _Instruments) -> list[tuple[str, Any]]:
    out = []
    for name, processor in instruments.processors():
        # the graph and live processors' batch workers; the offload processor itself
        worker = getattr(processor, "_worker", processor)
        if hasattr(worker, "on_sent"):
            out.append((name, worker))
    return out


def _detach(instruments: _Instruments) -> None:
    for _, worker in _workers(instruments):
        worker.on_sent = None


def register_metrics(
    instance: Any, meter_provider: MeterProvider | None = None
) -> MetricsRegistration:
    """Report ``instance``'s processors as OpenTelemetry metrics through
    ``meter_provider`` (by default the global one; without an SDK MeterProvider set that
    is the API's proxy: nothing is exported until one is set).

    ``instance`` is a :class:`spangraph.Spangraph` as ``configure()`` returns it, or
    anything with ``graph`` / ``live`` processors, such as the OTLP ingest of
    ``spangraph serve`` (``app.state.ingest``). Registering another one on the same
    provider replaces it: the counters then go on from where the previous one left them
    (its final counts are carried), so they never go down, for cumulative and delta
    exporters alike. The same holds when a processor's own counters restart (in a forked
    child).
    """
    with _lock:
        instruments = _instruments_for(meter_provider)
        if instruments.instance is not instance:
            if instruments.instance is not None:
                _detach(instruments)
                instruments.retire()
            instruments.revive(instance)
        instruments.instance = instance
        if instruments.histogram is not None:
            for name, worker in _workers(instruments):
                worker.on_sent = _hook(instruments.histogram, name)
    return MetricsRegistration(instruments, instance)
