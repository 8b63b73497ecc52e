"""spangraph's own health as OpenTelemetry metrics (``spangraph._metrics``): read from the
processors' counters at collection time, the send latency recorded per batch; on a real
embedded server, through an SDK MeterProvider and an in-memory reader."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from conftest import exit_code_of, held_by_a_thread
from spangraph import _metrics
from spangraph._metrics import (
    FAILED_BATCHES,
    INSTRUMENTS,
    ITEMS_DROPPED,
    ITEMS_SENT,
    QUEUE_SIZE,
    RETRIES,
    SEND_DURATION,
    register_metrics,
)
from spangraph.processors._worker import BatchWorker


class Boom(Exception):
    pass


@dataclass
class Metrics:
    """An SDK MeterProvider and the in-memory reader it exports to."""

    provider: MeterProvider
    reader: InMemoryMetricReader


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield Metrics(provider, reader)
    provider.shutdown()


def collect(m: Metrics) -> dict[str, Any]:
    """name -> the metric's data (one scope: spangraph)."""
    data = m.reader.get_metrics_data()
    out: dict[str, Any] = {}
    if data is None:  # no instrument has any data point
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "spangraph"
            for metric in sm.metrics:
                out[metric.name] = metric
    return out


def points(metric: Any) -> dict[str, Any]:
    """processor -> data point."""
    found = {}
    for p in metric.data.data_points:
        found[p.attributes["processor"]] = p
    return found


def run_workflow(name: str = "wf") -> str:
    @spangraph.step("flaky", retries=1, backoff=0)
    def flaky(calls: list[int] = []) -> None:  # noqa: B006 - counts calls on purpose
        calls.append(1)
        if len(calls) == 1:
            raise Boom("first attempt fails")

    with spangraph.workflow(name) as run:
        with spangraph.step("a"):
            spangraph.event("progress", n=1)
        flaky()
    return run.workflow_id


def test_instruments_are_named_as_documented() -> None:
    assert [(s.name, s.kind, s.unit) for s in INSTRUMENTS] == [
        ("spangraph.processor.queue.size", "gauge", "{item}"),
        ("spangraph.processor.items.sent", "counter", "{item}"),
        ("spangraph.processor.items.dropped", "counter", "{item}"),
        ("spangraph.processor.failed_batches", "counter", "{batch}"),
        ("spangraph.processor.retries", "counter", "{retry}"),
        ("spangraph.processor.send.duration", "histogram", "s"),
    ]


def test_metrics_of_a_run(sg: spangraph.Spangraph, metrics: Metrics) -> None:
    registration = register_metrics(sg, metrics.provider)
    assert registration.active
    run_workflow()
    assert spangraph.flush(10)
    stats = sg.stats()
    got = collect(metrics)
    assert set(got) == {s.name for s in INSTRUMENTS}

    queue = got[QUEUE_SIZE]
    assert isinstance(queue.data, Gauge) and queue.unit == "{item}"
    assert {k: p.value for k, p in points(queue).items()} == {"graph": 0, "live": 0}

    for name, stat in ((ITEMS_SENT, "sent"), (ITEMS_DROPPED, "dropped"),
                       (FAILED_BATCHES, "failed"), (RETRIES, "retries")):  # fmt: skip
        metric = got[name]
        assert isinstance(metric.data, Sum), name
        assert metric.data.is_monotonic, name
        values = {k: p.value for k, p in points(metric).items()}
        assert values == {"graph": stats["graph"][stat], "live": stats["live"][stat]}, name
    sent = {k: p.value for k, p in points(got[ITEMS_SENT]).items()}
    assert sent["graph"] > 0 and sent["live"] > 0
    assert {k: p.value for k, p in points(got[ITEMS_DROPPED]).items()} == {"graph": 0, "live": 0}

    duration = got[SEND_DURATION]
    assert isinstance(duration.data, Histogram) and duration.unit == "s"
    for processor, point in points(duration).items():
        assert point.count > 0, processor
        assert 0 < point.sum < 10, processor  # seconds, not milliseconds
        assert list(point.explicit_bounds) == list(_metrics.SEND_DURATION_BUCKETS)
    assert set(points(duration)) == {"graph", "live"}

    # counters are read at collection time: a second run moves them without any hook
    run_workflow("again")
    assert spangraph.flush(10)
    later = {k: p.value for k, p in points(collect(metrics)[ITEMS_SENT]).items()}
    assert later["graph"] > sent["graph"] and later["live"] > sent["live"]
    registration.unregister()
    assert not registration.active


def test_queue_depth_is_read_at_collection_time(sg: spangraph.Spangraph, metrics: Metrics) -> None:
    register_metrics(sg, metrics.provider)
    assert sg.graph_processor is not None
    worker = sg.graph_processor._worker
    original = worker._send
    entered, gate = threading.Event(), threading.Event()

    def held_send(payload: Any) -> None:
        entered.set()
        gate.wait(10)
        original(payload)

    submit = worker._submit
    worker._submit = None  # send the plain way: through _send
    worker._send = held_send  # hold the worker inside one send
    try:
        with spangraph.workflow("first"):
            pass
        assert entered.wait(5)
        base = worker.qsize()
        for i in range(5):
            with spangraph.workflow(f"queued-{i}"):
                pass
        depth = points(collect(metrics)[QUEUE_SIZE])["graph"].value
        assert depth == worker.qsize() == base + 10  # a start and an end per workflow
    finally:
        gate.set()
        worker._send = original
        worker._submit = submit
    assert spangraph.flush(10)
    assert points(collect(metrics)[QUEUE_SIZE])["graph"].value == 0


def test_registering_again_replaces_the_previous_configuration(
    sg: spangraph.Spangraph, metrics: Metrics
) -> None:
    provider = metrics.provider
    assert sg.graph_processor is not None and sg.live_processor is not None

    class Fake:
        graph_processor = None
        live_processor = None

    first = register_metrics(sg, provider)
    assert sg.graph_processor._worker.on_sent is not None
    second = register_metrics(Fake(), provider)  # same provider: same instruments
    assert not first.active and second.active
    assert sg.graph_processor._worker.on_sent is None  # its hooks are gone
    assert sg.live_processor._worker.on_sent is None
    assert ITEMS_SENT not in collect(metrics)  # the fake has no processors: no points
    first.unregister()  # no longer active: changes nothing
    assert second.active
    again = register_metrics(sg, provider)
    run_workflow()
    assert spangraph.flush(10)
    assert points(collect(metrics)[ITEMS_SENT])["graph"].value == sg.stats()["graph"]["sent"]
    again.unregister()
    assert sg.graph_processor._worker.on_sent is None


def test_processors_named_graph_and_live(sg: spangraph.Spangraph, metrics: Metrics) -> None:
    """The shape of `spangraph serve`'s OTLP ingest (``app.state.ingest``)."""

    class Ingest:
        def __init__(self, graph: Any, live: Any) -> None:
            self.graph, self.live = graph, live

    registration = register_metrics(Ingest(sg.graph_processor, sg.live_processor), metrics.provider)
    assert sg.graph_processor is not None and sg.graph_processor._worker.on_sent is not None
    run_workflow()
    assert spangraph.flush(10)
    got = collect(metrics)
    assert {k: p.value for k, p in points(got[ITEMS_SENT]).items()} == {
        "graph": sg.stats()["graph"]["sent"], "live": sg.stats()["live"]["sent"],
    }  # fmt: skip
    assert set(points(got[SEND_DURATION])) == {"graph", "live"}
    registration.unregister()


class Counted:
    """A configuration whose processors' counters the test sets (pure logic: what the
    callbacks make of them)."""

    def __init__(self, sent: int) -> None:
        self.graph = self
        self.counts = {"queued": 0, "sent": sent, "dropped": 0, "failed": 0, "retries": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)


def sent_points(m: Metrics) -> list[int]:
    return [p.value for p in collect(m)[ITEMS_SENT].data.data_points]


def test_counters_never_go_down_when_another_configuration_replaces_one() -> None:
    from opentelemetry.sdk.metrics import ObservableCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    reader = InMemoryMetricReader()
    cumulative = Metrics(MeterProvider(metric_readers=[reader]), reader)
    delta_reader = InMemoryMetricReader(
        preferred_temporality={ObservableCounter: AggregationTemporality.DELTA}
    )
    delta = Metrics(MeterProvider(metric_readers=[delta_reader]), delta_reader)
    try:
        for m in (cumulative, delta):
            first, second = Counted(100), Counted(5)
            register_metrics(first, m.provider)
            assert sent_points(m) == [100]
            first.counts["sent"] = 110  # counted after the last collection: kept too
            register_metrics(second, m.provider)  # configure() called again
            got = sent_points(m)
            assert got == ([115] if m is cumulative else [15]), got
            second.counts["sent"] = 7
            assert sent_points(m) == ([117] if m is cumulative else [2])
            again = register_metrics(first, m.provider)  # its 110 are carried already
            assert sent_points(m) == ([117] if m is cumulative else [0])
            first.counts["sent"] = 113
            assert sent_points(m) == ([120] if m is cumulative else [3])
            first.counts["sent"] = 4  # its worker's counters restarted (a forked child)
            assert sent_points(m) == ([124] if m is cumulative else [4])
            again.unregister()
            assert ITEMS_SENT not in collect(m)  # nothing registered: no data points
    finally:
        cumulative.provider.shutdown()
        delta.provider.shutdown()


def test_without_a_meter_provider_it_is_a_no_op(sg: spangraph.Spangraph) -> None:
    registration = register_metrics(sg)  # the global provider: the API's proxy here
    try:
        run_workflow()
        assert spangraph.flush(10)  # the hook records into a proxy histogram: no error
    finally:
        registration.unregister()


def test_on_sent_hook_is_optional_and_cannot_break_the_worker() -> None:
    sent: list[list[int]] = []
    calls: list[tuple[float, int]] = []

    def prepare(items: list[int]) -> tuple[list[int], int]:
        return items, len(items)

    worker: BatchWorker[int, list[int]] = BatchWorker(
        "t", prepare, sent.append, transient=(ConnectionError,), schedule_delay=0.01
    )
    try:
        assert worker.on_sent is None
        worker.put(1)
        assert worker.flush(5)

        def broken(seconds: float, count: int) -> None:
            calls.append((seconds, count))
            raise RuntimeError("a broken hook")

        worker.on_sent = broken
        worker.put(2)
        worker.put(3)
        assert worker.flush(5)
        worker.put(4)
        assert worker.flush(5)
        assert worker.stats()["sent"] == 4 and worker.stats()["failed"] == 0
        assert [c for _, c in calls] in ([2, 1], [1, 1, 1])
        assert all(0 <= s < 5 for s, _ in calls)
    finally:
        worker.shutdown(5)


def test_on_sent_given_to_the_constructor_sees_only_successful_sends() -> None:
    calls: list[tuple[float, int]] = []
    failures = [ConnectionError("down"), ConnectionError("down")]

    def send(payload: list[int]) -> None:
        if failures:
            raise failures.pop()

    worker: BatchWorker[int, list[int]] = BatchWorker(
        "t",
        lambda items: (items, len(items)),
        send,
        transient=(ConnectionError,),
        schedule_delay=0.01,
        retry_initial=0.001,
        on_sent=lambda seconds, count: calls.append((seconds, count)),
    )
    try:
        worker.put(1)
        assert worker.flush(5)
        assert worker.stats()["retries"] == 2
        assert [c for _, c in calls] == [1]  # once, after the attempt that succeeded
    finally:
        worker.shutdown(5)


# -- an outage ---------------------------------------------------------------------------


@pytest.fixture
def configured() -> Iterator[list[spangraph.Spangraph]]:
    made: list[spangraph.Spangraph] = []
    yield made
    spangraph.shutdown()
    for instance in made:
        instance.tracer_provider.shutdown()


def wait_for(metrics: Metrics, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = collect(metrics)
        with contextlib.suppress(KeyError):
            if check(got):
                return got
        assert time.monotonic() < deadline, {
            name: {k: getattr(p, "value", None) for k, p in points(m).items()}
            for name, m in got.items()
        }
        time.sleep(0.05)


@pytest.mark.slow
def test_outage_moves_retries_dropped_and_failed_batches(
    private_servers, tmp_path: Path, configured: list, metrics: Metrics
) -> None:
    server, info = private_servers.start()
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=info.graph_url,
        redis_url=info.redis_url,
        home=str(tmp_path),
        project=f"p-{uuid.uuid4().hex[:8]}",
        max_queue_size=32,
    )
    configured.append(sg)
    register_metrics(sg, metrics.provider)
    run_workflow("before")
    assert spangraph.flush(10)
    before = collect(metrics)
    assert {k: p.value for k, p in points(before[RETRIES]).items()} == {"graph": 0, "live": 0}
    assert {k: p.value for k, p in points(before[ITEMS_DROPPED]).items()} == {
        "graph": 0, "live": 0,
    }  # fmt: skip

    server.stop()
    for i in range(20):  # 20 runs of 4 spans: 160 items, far more than a queue of 32 holds
        run_workflow(f"during-{i}")

    def moved(got: dict[str, Any]) -> bool:
        retries = points(got[RETRIES])
        dropped = points(got[ITEMS_DROPPED])
        failed = points(got[FAILED_BATCHES])
        return (
            retries["graph"].value > 0  # the graph worker keeps its batch and retries
            and dropped["graph"].value > 0  # ... while its full queue drops new items
            and failed["live"].value > 0  # live gives up on a batch after 2 s
            and dropped["live"].value > 0
        )

    got = wait_for(metrics, moved)
    stats = sg.stats()
    assert points(got[RETRIES])["graph"].value <= stats["graph"]["retries"]
    assert points(got[QUEUE_SIZE])["graph"].value <= 32

    private_servers.restart_on_port(server, info.port)
    assert spangraph.flush(30) is False  # done, and it tells of the outage's drops
    assert spangraph.flush(10)  # nothing dropped since
    stats = sg.stats()["graph"]
    final = collect(metrics)
    assert points(final[ITEMS_SENT])["graph"].value == stats["sent"]
    assert points(final[ITEMS_DROPPED])["graph"].value == stats["dropped"]
    assert stats["sent"] + stats["dropped"] == 21 * 4 * 2  # every item accounted for


def test_docs_example_runs(embedded_server: Any, closed_port: int, tmp_path: Path) -> None:
    """The Python example under "## Metrics and dashboards" in docs/integrations.md, as
    written (OTLP to a closed port: nothing listens, nothing fails)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    section = page.split("\n## Metrics and dashboards\n", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    script = tmp_path / "example.py"
    script.write_text(
        example
        + "\nwith spangraph.workflow('docs-example'):\n    pass\n"
        + "spangraph.flush(10)\n"
        + "from spangraph._sdk import current\n"
        + "print(sorted(current().stats()))\n"
    )
    env = {
        **os.environ,
        "SPANGRAPH_HOME": str(tmp_path / "home"),
        "SPANGRAPH_GRAPH_URL": f"falkordb://127.0.0.1:{embedded_server.port}/t_{uuid.uuid4().hex[:12]}",
        "SPANGRAPH_REDIS_URL": embedded_server.redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
    }
    env.pop("NEO4J_URI", None)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['graph', 'live']"
    package = str(Path(spangraph.__file__).resolve().parent)
    assert package not in proc.stderr, proc.stderr  # no traceback through spangraph
    # OpenTelemetry 1.30's OTLP exporter logs the refused connection with a traceback of
    # its own (later releases with one line)
    stderr = proc.stderr.split("Exception while exporting Span batch.", 1)[0]
    assert "Traceback" not in stderr, proc.stderr


GLOBAL_PROVIDER_SCRIPT = """
import json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
import spangraph
from spangraph._metrics import register_metrics

graph_url, redis_url, home = sys.argv[1:4]
def configure():
    return spangraph.configure(
        tracer_provider=TracerProvider(), graph_url=graph_url, redis_url=redis_url, home=home
    )
first = configure()
register_metrics(first)  # no SDK MeterProvider yet: through the API's proxy
with spangraph.workflow("before"):
    pass
spangraph.flush(10)
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
second = configure()  # replaces the first configuration
register_metrics(second)
for i in range(3):
    with spangraph.workflow(f"after-{i}"):
        pass
spangraph.flush(10)
found = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            for p in m.data.data_points:
                key = m.name + "/" + p.attributes["processor"]
                found[key] = getattr(p, "value", None) if hasattr(p, "value") else p.count
print(json.dumps({"found": found, "first": first.stats(), "second": second.stats()}))
spangraph.shutdown()
"""


def test_global_provider_before_and_after_an_sdk_provider_is_set(
    embedded_server: Any, tmp_path: Path
) -> None:
    """Registered through the global provider before an SDK MeterProvider is set and again
    after: one set of instruments (no duplicate-instrument warning), reporting the
    configuration registered last."""
    script = tmp_path / "global_provider.py"
    script.write_text(GLOBAL_PROVIDER_SCRIPT)
    graph_url = f"falkordb://127.0.0.1:{embedded_server.port}/t_{uuid.uuid4().hex[:12]}"
    proc = subprocess.run(
        [sys.executable, str(script), graph_url, embedded_server.redis_url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "created already" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    found, second = out["found"], out["second"]
    # the counters go on from the first configuration's counts: they never go down
    assert second["graph"]["sent"] == 6  # 3 spans, 2 items each
    assert out["first"]["graph"]["sent"] == 2
    assert found[f"{ITEMS_SENT}/graph"] == 2 + 6
    assert found[f"{ITEMS_SENT}/live"] == out["first"]["live"]["sent"] + second["live"]["sent"]
    assert found[f"{SEND_DURATION}/graph"] > 0


def test_configure_metrics_true_reports_through_the_global_provider(
    graph_url: str, embedded_server: Any, tmp_path: Any
) -> None:
    """configure(metrics=True) in a fresh process with a global SDK MeterProvider."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import spangraph
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        spangraph.configure(graph_url={graph_url!r}, redis_url={embedded_server.redis_url!r},
                            home={str(tmp_path)!r}, metrics=True)
        with spangraph.workflow("metered"):
            pass
        assert spangraph.flush(10)
        names = {{m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}}
        print(sorted(names))
        spangraph.shutdown()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for name in (
        "spangraph.processor.items.sent",
        "spangraph.processor.queue.size",
        "spangraph.processor.send.duration",
    ):
        assert name in proc.stdout, proc.stdout


def test_shutdown_stops_the_reports_of_its_configuration(
    graph_url: str, embedded_server: Any, tmp_path: Any
) -> None:
    """After shutdown(), and after a configure(metrics=False) that replaced it, every
    collection still reported the old configuration's processors (a live processor that
    no longer existed), and the registration kept the old instance alive."""
    script = textwrap.dedent(f"""
        import gc, json, weakref
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import spangraph
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

        def sent():
            return {{
                dp.attributes["processor"]: dp.value
                for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics
                if m.name == "spangraph.processor.items.sent" for dp in m.data.data_points
            }}

        settings = dict(graph_url={graph_url!r}, redis_url={embedded_server.redis_url!r},
                        home={str(tmp_path)!r})
        first = spangraph.configure(metrics=True, **settings)
        with spangraph.workflow("metered"):
            pass
        assert spangraph.flush(10)
        before = sent()
        spangraph.shutdown()
        after = sent()
        first = weakref.ref(first)
        spangraph.configure(metrics=False, live=False, **settings)
        with spangraph.workflow("unmetered"):
            pass
        assert spangraph.flush(10)
        gc.collect()
        print(json.dumps({{"before": before, "after": after, "replaced": sent(),
                          "first_alive": first() is not None}}))
        spangraph.shutdown()
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == {"graph": 2, "live": out["before"]["live"]} and out["before"]["live"]
    assert out["after"] == {} and out["replaced"] == {}
    assert not out["first_alive"]


def test_send_duration_with_offload(
    provider: TracerProvider,
    graph_url: str,
    embedded_server: Any,
    tmp_path: Path,
    metrics: Metrics,
) -> None:
    """configure(offload=True): the latency of each write to the agent process is
    recorded under processor=offload, like the counters."""
    instance = spangraph.configure(
        tracer_provider=provider,
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        offload=True,
    )
    try:
        registration = register_metrics(instance, metrics.provider)
        run_workflow("offloaded")
        assert spangraph.flush(10)
        got = collect(metrics)
        assert set(points(got[ITEMS_SENT])) == {"offload"}
        (point,) = got[SEND_DURATION].data.data_points
        assert point.attributes["processor"] == "offload"
        assert point.count > 0 and 0 < point.sum < 10
        registration.unregister()
        assert instance.offload_processor is not None
        assert instance.offload_processor.on_sent is None  # the hook is gone
    finally:
        spangraph.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_metrics_thread_holds_the_lock_can_take_it() -> None:
    """The metric reader's thread holds the module's lock while it reads the counters: a
    child forked at that moment inherited it held, and its shutdown (atexit, or
    multiprocessing's finalizer) waited for ever (7 in 300 forks in a reviewer's run)."""
    from spangraph import _metrics

    with held_by_a_thread(_metrics._lock):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os._exit(0 if _metrics._lock.acquire(timeout=5) else 1)
    assert exit_code_of(pid) == 0
