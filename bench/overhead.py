#!/usr/bin/env python
"""What spangraph costs: per-span overhead on the calling thread, and graph ingest throughput.

Run from the repository root, in the project's virtual environment::

    python bench/overhead.py              # default: 20 000 spans a round, 5 rounds (~2 min)
    python bench/overhead.py --quick      # 5 000 spans a round, 3 rounds (< 30 s)
    python bench/overhead.py --spans 50000 --rounds 7

It starts its own embedded server (redis-server + FalkorDB module) in a temporary
directory and stops it at the end. Nothing here asserts on time: the machine may be noisy,
so every figure is printed next to a baseline measured in the same run, and the ratio is
what to compare across machines.

Part 1, overhead. A workload of one workflow span with N child spans (5 attributes each,
``with tracer.start_as_current_span(...)``, a plain OTel tracer of a TracerProvider) runs
on four setups, in alternating rounds (the order rotates every round):

* ``bare``  : TracerProvider + BatchSpanProcessor(no-op exporter) -- the user's OTel setup;
* ``full``  : bare + GraphSpanProcessor + LiveEventProcessor      -- the same + spangraph;
* ``graph`` : bare + GraphSpanProcessor only;
* ``live``  : bare + LiveEventProcessor only;
* ``offload``: bare + OffloadSpanProcessor: graph and live, mapped and written by an agent
  process (``configure(offload=True)``);
* ``handoff``: bare + the floor of ``offload`` (``HandoffProcessor``): its own side alone,
  each span copied into a record on the calling thread and written to a pipe, to a
  child process that drops them; ``offload`` minus the agent's and the store's work.

The timed region is the loop alone (wall clock, ``perf_counter``). spangraph's workers run
on their own threads during the loop and compete for the GIL, so the work they do while
the loop runs slows it down and is counted. Their queues are flushed between rounds,
outside the timed region; the work left for the flush is shown apart ("loop+drain" wall
time and the process CPU time of all threads), so no cost hides there either.

Part 3, a realistic agent-like workload: the same setups ``bare`` and ``full``, in
alternating rounds, on a workflow of steps that each wait about 1 ms on I/O
(``time.sleep(0.001)``, which releases the GIL as a model or tool call does) and add three
span events. The worst case is part 1 (a tight loop of empty spans, where spangraph's
workers can only run by taking the GIL from the loop); here they run while the
application waits, which is what an instrumented agent does most of the time.

Part 2, graph ingest. 50 000 spans in workflows of 100 spans are recorded once, then
replayed (``on_start``/``on_end`` in their real order) into a GraphSpanProcessor on a fresh
graph; the clock runs from the first ``on_start`` to the end of ``force_flush``. The
baseline writes the same spans' final rows with the bare falkordb client,
``UNWIND $rows AS row MERGE (s:Span {span_id: row.span_id}) SET s += row.props``, in
batches of the size the processor writes, on a fresh graph with the same indexes.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import spangraph
from spangraph.embedded import EmbeddedServer, ServerInfo
from spangraph.mapping import SpanMapper
from spangraph.processors import GraphSpanProcessor, LiveEventProcessor, RedisPublisher
from spangraph.processors._records import RecordBuffer
from spangraph.processors.offload import OffloadSpanProcessor
from spangraph.stores import FalkorDBStore

PROJECT = "bench"
RAW_MERGE = "UNWIND $rows AS row MERGE (s:Span {span_id: row.span_id}) SET s += row.props"
TARGET_OVERHEAD = 1.15
TARGET_INGEST_RATIO = 0.5
TARGET_INGEST_ABS = 20_000
RESOURCE = Resource.create({"service.name": "bench", "deployment.environment.name": "bench"})
CONFIGS = ("bare", "full", "offload", "graph", "live", "handoff")


# -- helpers ------------------------------------------------------------------------------


class NoopExporter(SpanExporter):
    """Exports nothing, counts what it was given (to detect BatchSpanProcessor drops)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class Recorder(SpanProcessor):
    """Keeps every on_start / on_end in call order, for replay."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, Span]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.calls.append((True, span))

    def on_end(self, span: ReadableSpan) -> None:
        self.calls.append((False, span))  # type: ignore[arg-type]


def server_cpu_s(pid: int) -> float:
    """utime + stime of the server process (redis-server + FalkorDB), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "?"


def ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


# -- part 1: overhead ---------------------------------------------------------------------


class HandoffProcessor(SpanProcessor):
    """The floor of ``offload``: its own side alone. ``on_start``/``on_end`` are the same
    record buffer (each span copied into a record on the calling thread, in C where
    spangraph._speedups was built); a thread marshals the records and writes them to a
    pipe read by a child process that discards them. No agent mapping and writing the
    spans, no store: what ``offload`` costs beyond this is their work competing with the
    program for the machine's cores."""

    def __init__(self) -> None:
        import subprocess
        import threading

        self._buffer = RecordBuffer({}, lambda what, span: (what,))
        self.on_start = self._buffer.start  # type: ignore[method-assign]
        self.on_end = self._buffer.end  # type: ignore[method-assign]
        self._child = subprocess.Popen(
            [sys.executable, "-c", "import os\nwhile os.read(0, 1 << 20): pass"],
            stdin=subprocess.PIPE,
        )
        assert self._child.stdin is not None
        self._fd = self._child.stdin.fileno()
        self._idle = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="handoff", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import marshal

        buffer = self._buffer
        while not self._stop:
            if not len(buffer):
                self._idle.set()
                time.sleep(0.002)
                continue
            self._idle.clear()
            data = memoryview(marshal.dumps(buffer.take()))
            while data:
                data = data[os.write(self._fd, data) :]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        while (len(self._buffer) or not self._idle.is_set()) and time.monotonic() < deadline:
            time.sleep(0.001)
        return not len(self._buffer)

    def shutdown(self) -> None:
        self.force_flush()
        self._stop = True
        self._thread.join(1)
        assert self._child.stdin is not None
        self._child.stdin.close()
        self._child.wait(5)


@dataclass
class Setup:
    name: str
    provider: TracerProvider
    exporter: NoopExporter
    graph: GraphSpanProcessor | None = None
    store: FalkorDBStore | None = None
    live: LiveEventProcessor | None = None
    offload: OffloadSpanProcessor | None = None
    loop_us: list[float] = field(default_factory=list)
    main_cpu_us: list[float] = field(default_factory=list)
    main_gc_us: list[float] = field(default_factory=list)
    drain_us: list[float] = field(default_factory=list)
    proc_cpu_us: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    agent_cpu_us: list[float] = field(default_factory=list)
    invalid_rounds: int = 0

    def dropped(self) -> int:
        total = 0
        for proc in (self.graph, self.live):
            if proc is not None:
                total += proc.stats()["dropped"]
        if self.offload is not None:  # this process's side, and the agent's processors
            total += self.offload.stats()["dropped"]
            total += sum(c["dropped"] for c in self.offload.agent_stats().values() if c)
        return total

    def other_cpu_s(self, server_pid: int) -> float:
        """CPU time of the embedded server, and of the agent process for ``offload``."""
        return server_cpu_s(server_pid) + self.agent_cpu_s()

    def agent_cpu_s(self) -> float:
        """CPU time of the agent process (``offload``; 0 for the other setups)."""
        agent = self.offload._agent if self.offload is not None else None
        return server_cpu_s(agent.pid) if agent is not None else 0.0

    def close(self) -> None:
        """Shut the provider down, empty and close the graph, close the live publisher."""
        self.provider.shutdown()
        if self.store is not None:
            self.store.delete_all()
            self.store.close()
        if self.live is not None:
            self.live.publisher.close()

    def drain(self) -> None:
        if not self.provider.force_flush(120_000):
            raise RuntimeError(f"{self.name}: force_flush timed out")


def make_setup(name: str, info: ServerInfo) -> Setup:
    provider = TracerProvider(resource=RESOURCE)
    exporter = NoopExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    setup = Setup(name, provider, exporter)
    if name in ("full", "graph"):
        store = FalkorDBStore.from_url(
            f"falkordb://127.0.0.1:{info.port}/bench_{name}_{uuid.uuid4().hex[:8]}"
        )
        store.ensure_schema()
        setup.store = store
        setup.graph = GraphSpanProcessor(store, project=PROJECT)
        provider.add_span_processor(setup.graph)
    if name == "handoff":
        provider.add_span_processor(HandoffProcessor())
    if name == "offload":  # graph + live, mapped and written by an agent process
        url = f"falkordb://127.0.0.1:{info.port}/bench_offload_{uuid.uuid4().hex[:8]}"
        setup.store = FalkorDBStore.from_url(url)
        setup.store.ensure_schema()
        setup.offload = OffloadSpanProcessor(
            {"graph_url": url, "redis_url": info.redis_url, "project": PROJECT}
        )
        provider.add_span_processor(setup.offload)
    if name in ("full", "live"):
        setup.live = LiveEventProcessor(RedisPublisher.from_url(info.redis_url), project=PROJECT)
        provider.add_span_processor(setup.live)
    return setup


def workload(provider: TracerProvider, n: int, tag: str) -> None:
    """One workflow span with ``n`` children of 5 attributes each."""
    tracer = provider.get_tracer("bench.overhead")
    wf_id = f"wf-{tag}"
    with tracer.start_as_current_span(
        "workflow", attributes={"spangraph.kind": "workflow", "spangraph.workflow.id": wf_id}
    ):
        for i in range(n):
            with tracer.start_as_current_span(
                "step",
                attributes={
                    "spangraph.kind": "step",
                    "app.step.index": i,
                    "app.user.id": "user-42",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "app.cache_hit": i % 3 == 0,
                },
            ):
                pass


def agent_workload(provider: TracerProvider, n: int, tag: str) -> None:
    """One workflow span with ``n`` steps that each wait ~1 ms on I/O (the GIL is
    released, as in a model or tool call) and add three events."""
    tracer = provider.get_tracer("bench.agent")
    wf_id = f"wf-{tag}"
    with tracer.start_as_current_span(
        "workflow", attributes={"spangraph.kind": "workflow", "spangraph.workflow.id": wf_id}
    ):
        for i in range(n):
            with tracer.start_as_current_span(
                "step",
                attributes={
                    "spangraph.kind": "step",
                    "app.step.index": i,
                    "app.user.id": "user-42",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "app.cache_hit": i % 3 == 0,
                },
            ) as span:
                span.add_event("tool.call", {"tool": "search", "attempt": 1})
                time.sleep(0.001)
                span.add_event("tool.result", {"tool": "search", "ok": True})
                span.add_event("step.note", {"tokens": 42})


class GCClock:
    """CPU time the cyclic garbage collector spends on the calling (main) thread (thread
    CPU time, not wall time: a callback may lose the GIL to another thread before it
    reads the clock, and the wait would be counted as collecting)."""

    def __init__(self) -> None:
        import threading

        self.main = threading.main_thread().ident
        self.get_ident = threading.get_ident
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if self.get_ident() != self.main:
            return
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


GC_CLOCK = GCClock()


def measure_round(setup: Any, n: int, server_pid: int, tag: str, work: Any = workload) -> dict:
    """One timed round of ``work`` on ``setup``: the loop timed alone, the drain outside
    it, as per-span figures (also ``bench/competitors.py``'s, whose setups may have no
    counting exporter)."""
    setup.drain()
    if setup.store is not None:  # same graph size every round, schema ready before the clock
        setup.store.delete_all()
        setup.store.ensure_schema()
    dropped0 = setup.dropped()
    counted = hasattr(setup, "exporter")
    exported0 = setup.exporter.exported if counted else 0
    gc.collect()
    srv0 = setup.other_cpu_s(server_pid)
    agent_cpu_s = getattr(setup, "agent_cpu_s", lambda: 0.0)
    ag0 = agent_cpu_s()
    c0 = time.process_time()
    th0 = time.thread_time()
    gc0 = GC_CLOCK.seconds
    t0 = time.perf_counter()
    work(setup.provider, n, tag)
    t1 = time.perf_counter()
    th1 = time.thread_time()
    gc1 = GC_CLOCK.seconds
    setup.drain()
    t2 = time.perf_counter()
    c2 = time.process_time()
    srv2 = setup.other_cpu_s(server_pid)
    ag2 = agent_cpu_s()
    spans = n + 1
    return {
        "loop_us": (t1 - t0) / spans * 1e6,
        "main_cpu_us": (th1 - th0) / spans * 1e6,
        "main_gc_us": (gc1 - gc0) / spans * 1e6,
        "drain_us": (t2 - t0) / spans * 1e6,
        "proc_cpu_us": (c2 - c0) / spans * 1e6,
        "other_cpu_us": (srv2 - srv0) / spans * 1e6,
        "agent_cpu_us": (ag2 - ag0) / spans * 1e6,
        "dropped": setup.dropped() - dropped0,
        "bsp_lost": spans - (setup.exporter.exported - exported0) if counted else 0,
    }


def timed_round(setup: Setup, n: int, server_pid: int, tag: str, work: Any = workload) -> None:
    got = measure_round(setup, n, server_pid, tag, work)
    lost, bsp_lost = got["dropped"], got["bsp_lost"]
    if lost or bsp_lost:
        setup.invalid_rounds += 1
        print(
            f"  ! {setup.name}: {lost} dropped by spangraph, {bsp_lost} by the BSP; round not counted"
        )
        return
    setup.loop_us.append(got["loop_us"])
    setup.main_cpu_us.append(got["main_cpu_us"])
    setup.main_gc_us.append(got["main_gc_us"])
    setup.drain_us.append(got["drain_us"])
    setup.proc_cpu_us.append(got["proc_cpu_us"])
    setup.server_cpu_us.append(got["other_cpu_us"])
    setup.agent_cpu_us.append(got["agent_cpu_us"])


def part1(info: ServerInfo, n: int, rounds: int, freeze: bool = False) -> dict[str, Setup]:
    print(f"\n## 1. Overhead per span: {rounds} rounds x {n} spans per setup\n")
    setups = {name: make_setup(name, info) for name in CONFIGS}
    try:
        for s in setups.values():  # warm-up: imports, caches, script load, connections
            warm = min(2000, n)
            workload(s.provider, warm, "warmup")
            s.drain()
            if s.exporter.exported != warm + 1:
                print(
                    f"  (warm-up: the BatchSpanProcessor of {s.name} dropped"
                    f" {warm + 1 - s.exporter.exported} spans)"
                )
        frozen(freeze)
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for name in order:
                timed_round(setups[name], n, info.pid, f"{name}-{r}")
            line = "  ".join(
                f"{name} {setups[name].loop_us[-1]:6.2f}" if setups[name].loop_us else f"{name} -"
                for name in CONFIGS
            )
            print(f"round {r + 1}/{rounds} loop us/span: {line}")
    finally:
        gc.unfreeze()
        for s in setups.values():
            s.close()
    for s in setups.values():
        for proc_name, proc in (("graph", s.graph), ("live", s.live)):
            if proc is not None:
                print(f"{s.name}/{proc_name} stats(): {proc.stats()}")
    return setups


def part3(info: ServerInfo, n: int, rounds: int, freeze: bool = False) -> dict[str, Setup]:
    print(
        f"\n## 3. Agent-like workload: {rounds} rounds x {n} steps of ~1 ms I/O wait"
        " and 3 events per setup\n"
    )
    names = ("bare", "full", "offload")
    setups = {name: make_setup(name, info) for name in names}
    try:
        for s in setups.values():  # warm-up
            agent_workload(s.provider, min(200, n), "warmup")
            s.drain()
        frozen(freeze)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                timed_round(setups[name], n, info.pid, f"agent-{name}-{r}", agent_workload)
            line = "  ".join(
                f"{name} {setups[name].loop_us[-1]:7.2f}" if setups[name].loop_us else f"{name} -"
                for name in names
            )
            print(f"round {r + 1}/{rounds} loop us/span: {line}")
    finally:
        gc.unfreeze()
        for s in setups.values():
            s.close()
    return setups


def frozen(freeze: bool) -> None:
    """With ``--freeze``: what every setup made so far (imports, clients, providers) goes
    to the collector's permanent generation, as a program that calls ``gc.freeze()``
    after its start-up has it, so that full collections no longer traverse it."""
    if freeze:
        gc.collect()
        gc.freeze()
        print(f"(gc.freeze(): {gc.get_freeze_count()} objects left out of collections)")


# -- part 2: graph ingest -----------------------------------------------------------------


def record_workflows(spans: int, per_workflow: int) -> list[tuple[bool, Span]]:
    provider = TracerProvider(resource=RESOURCE)
    rec = Recorder()
    provider.add_span_processor(rec)
    tracer = provider.get_tracer("bench.ingest")
    made = 0
    w = 0
    while made < spans:
        kids = min(per_workflow, spans - made) - 1
        with tracer.start_as_current_span(
            "workflow",
            attributes={"spangraph.kind": "workflow", "spangraph.workflow.id": f"wf-ingest-{w}"},
        ):
            for i in range(kids):
                with tracer.start_as_current_span(
                    "step",
                    attributes={
                        "spangraph.kind": "step",
                        "app.step.index": i,
                        "app.user.id": "user-42",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "app.cache_hit": i % 3 == 0,
                    },
                ):
                    pass
        made += kids + 1
        w += 1
    provider.shutdown()
    return rec.calls


def ingest_spangraph(info: ServerInfo, calls: list[tuple[bool, Span]]) -> dict[str, float]:
    store = FalkorDBStore.from_url(
        f"falkordb://127.0.0.1:{info.port}/ingest_sg_{uuid.uuid4().hex[:8]}"
    )
    store.ensure_schema()
    write_s = [0.0]
    batches = [0]

    def on_sent(seconds: float, count: int) -> None:  # the worker's hook, on its thread
        write_s[0] += seconds
        batches[0] += 1

    proc = GraphSpanProcessor(store, project=PROJECT)
    proc._worker.on_sent = on_sent
    # pace the replay (the recorded spans arrive far faster than any store takes them) so
    # that the bounded queue never overflows: keep it at most half full
    limit = inspect.signature(GraphSpanProcessor).parameters["max_queue_size"].default // 2
    on_start, on_end, stats = proc.on_start, proc.on_end, proc.stats
    gc.collect()
    srv0 = server_cpu_s(info.pid)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i, (is_start, span) in enumerate(calls):
        if is_start:
            on_start(span)
        else:
            on_end(span)
        if i & 1023 == 0:
            while stats()["queued"] > limit:
                time.sleep(0.001)
    flushed = proc.force_flush(300_000)
    t1 = time.perf_counter()
    c1 = time.process_time()
    srv1 = server_cpu_s(info.pid)
    st = proc.stats()
    proc.shutdown()
    nodes = store.query("MATCH (s:Span) RETURN count(s) AS n")[0]["n"]
    edges = store.query("MATCH (:Span)-[r:PARENT_OF]->(:Span) RETURN count(r) AS n")[0]["n"]
    store.delete_all()
    store.close()
    spans = sum(1 for is_start, _ in calls if not is_start)
    return {
        "spans": spans,
        "seconds": t1 - t0,
        "rate": spans / (t1 - t0),
        "write_share": write_s[0] / (t1 - t0),
        "batches": batches[0],
        "proc_cpu_us": (c1 - c0) / spans * 1e6,
        "server_cpu_us": (srv1 - srv0) / spans * 1e6,
        "dropped": st["dropped"] + (0 if flushed else 1),
        "nodes": nodes,
        "edges": edges,
    }


def ingest_raw(info: ServerInfo, rows: list[dict[str, Any]], batch_size: int) -> dict[str, float]:
    name = f"ingest_raw_{uuid.uuid4().hex[:8]}"
    store = FalkorDBStore.from_url(f"falkordb://127.0.0.1:{info.port}/{name}")
    store.ensure_schema()  # the same indexes and constraint
    from falkordb import FalkorDB

    db = FalkorDB(host="127.0.0.1", port=info.port)
    graph = db.select_graph(name)
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    gc.collect()
    srv0 = server_cpu_s(info.pid)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for batch in batches:
        graph.query(RAW_MERGE, {"rows": batch})
    t1 = time.perf_counter()
    c1 = time.process_time()
    srv1 = server_cpu_s(info.pid)
    nodes = store.query("MATCH (s:Span) RETURN count(s) AS n")[0]["n"]
    store.delete_all()
    store.close()
    db.connection.close()
    return {
        "spans": len(rows),
        "seconds": t1 - t0,
        "rate": len(rows) / (t1 - t0),
        "proc_cpu_us": (c1 - c0) / len(rows) * 1e6,
        "server_cpu_us": (srv1 - srv0) / len(rows) * 1e6,
        "nodes": nodes,
    }


def part2(info: ServerInfo, spans: int, per_workflow: int, rounds: int) -> dict[str, Any]:
    print(
        f"\n## 2. Graph ingest: {spans} spans in workflows of {per_workflow}, {rounds} round(s)\n"
    )
    calls = record_workflows(spans, per_workflow)
    mapper = SpanMapper(PROJECT)
    rows = []
    for is_start, span in calls:
        if not is_start:
            _, props = mapper.node_props(span, ended=True)
            rows.append({"span_id": props.pop("span_id"), "props": props})
    # the processor takes up to max_batch_size (1024) queue items a batch, a start and an
    # end per span: ~512 span rows a round trip. The raw baseline uses the same.
    default_batch = inspect.signature(GraphSpanProcessor).parameters["max_batch_size"].default
    batch_size = default_batch // 2
    sg_runs: list[dict[str, float]] = []
    raw_runs: list[dict[str, float]] = []
    for r in range(rounds):
        first, second = (
            (ingest_spangraph, ingest_raw) if r % 2 == 0 else (ingest_raw, ingest_spangraph)
        )
        for fn in (first, second):
            if fn is ingest_spangraph:
                res = ingest_spangraph(info, calls)
                sg_runs.append(res)
                print(
                    f"round {r + 1}: spangraph {res['rate']:8.0f} spans/s  ({res['seconds']:.2f} s,"
                    f" {res['batches']} batches, submit-to-reply time summed {res['write_share']:.0%} of the wall time,"
                    f" dropped {res['dropped']}, nodes {res['nodes']}, PARENT_OF {res['edges']})"
                )
            else:
                res = ingest_raw(info, rows, batch_size)
                raw_runs.append(res)
                print(
                    f"round {r + 1}: raw MERGE {res['rate']:8.0f} rows/s   ({res['seconds']:.2f} s,"
                    f" batches of {batch_size}, nodes {res['nodes']})"
                )
    return {"sg": sg_runs, "raw": raw_runs, "batch_size": batch_size, "spans": len(rows)}


# -- report -------------------------------------------------------------------------------


def report(
    setups: dict[str, Setup],
    ingest: dict[str, Any],
    agent: dict[str, Setup],
    args: argparse.Namespace,
) -> int:

    def ratio(name: str, attr: str, group: dict[str, Setup] = setups) -> float:
        return med(getattr(group[name], attr)) / med(getattr(group["bare"], attr))

    print("\n## What the figures mean\n")
    print(
        "loop us/span   wall time of the create+end loop divided by spans, median of rounds:\n"
        "               what the calling thread pays, including the GIL time spangraph's\n"
        "               worker threads take while the loop runs. The headline figure.\n"
        "main CPU       CPU time of the calling thread alone (wall minus GIL waits and\n"
        "               preemption): on_start/on_end, and the collections of Python's\n"
        "               cyclic garbage collector that fall on that thread.\n"
        "main GC        of which: time in the garbage collector on the calling thread. It\n"
        "               grows with the spans that processors keep alive across collections\n"
        "               (their objects get promoted to older generations, and the full\n"
        "               collections they trigger scan the whole heap).\n"
        "loop+drain     wall time from the first span to force_flush() done: adds the\n"
        "               backlog the workers still had when the loop ended and the wait for\n"
        "               the server.\n"
        "process CPU    CPU time of every thread of this process over loop+drain: the\n"
        "               whole CPU bill in the user's process, wherever it is paid.\n"
        "server CPU     CPU time of the embedded redis-server + FalkorDB process meanwhile,\n"
        "               and for offload of the agent process too (other processes, but on\n"
        "               this 2-core box they compete for the cores).\n"
        "of which agent the agent process's part of it (offload)."
    )
    print("\n## Results\n")
    valid = all(s.invalid_rounds == 0 for s in setups.values())
    hdr = f"{'setup':8} {'loop us':>8} {'ratio':>6} {'main CPU':>9} {'ratio':>6} {'main GC':>8} {'loop+drain':>10} {'ratio':>6} {'proc CPU':>9} {'ratio':>6} {'server CPU':>10} {'of which agent':>14}"
    print("1. tight loop of empty spans (worst case)")
    print(hdr)
    for name in CONFIGS:
        s = setups[name]
        print(
            f"{name:8} {med(s.loop_us):8.2f} {ratio(name, 'loop_us'):6.2f} {med(s.main_cpu_us):9.2f}"
            f" {ratio(name, 'main_cpu_us'):6.2f} {med(s.main_gc_us):8.2f}"
            f" {med(s.drain_us):10.2f} {ratio(name, 'drain_us'):6.2f} {med(s.proc_cpu_us):9.2f}"
            f" {ratio(name, 'proc_cpu_us'):6.2f} {med(s.server_cpu_us):10.2f}"
            f" {med(s.agent_cpu_us):14.2f}"
        )
    print("3. agent-like workload (~1 ms I/O wait and 3 events a step)")
    print(hdr)
    for name in agent:
        s = agent[name]
        print(
            f"{name:8} {med(s.loop_us):8.2f} {ratio(name, 'loop_us', agent):6.2f}"
            f" {med(s.main_cpu_us):9.2f} {ratio(name, 'main_cpu_us', agent):6.2f}"
            f" {med(s.main_gc_us):8.2f} {med(s.drain_us):10.2f} {ratio(name, 'drain_us', agent):6.2f}"
            f" {med(s.proc_cpu_us):9.2f} {ratio(name, 'proc_cpu_us', agent):6.2f}"
            f" {med(s.server_cpu_us):10.2f} {med(s.agent_cpu_us):14.2f}"
        )
    agent_ratio = ratio("full", "loop_us", agent)
    agent_extra = med(agent["full"].loop_us) - med(agent["bare"].loop_us)
    print(
        f"agent-like: full/bare loop ratio {agent_ratio:.3f} ({agent_extra:+.2f} us a span);"
        f" calling-thread CPU ratio {ratio('full', 'main_cpu_us', agent):.2f}"
    )
    valid = valid and all(s.invalid_rounds == 0 for s in agent.values())
    dropped = {name: s.dropped() for name, s in setups.items()}
    dropped.update({f"agent-{name}": s.dropped() for name, s in agent.items()})
    print(f"\nspangraph stats()['dropped'] per setup: {dropped} (must be 0 for valid figures)")
    full_ratio = ratio("full", "loop_us")
    print(
        f"overhead target: full/bare loop ratio {full_ratio:.2f} <= {TARGET_OVERHEAD}:"
        f" {ok(full_ratio <= TARGET_OVERHEAD)} (tight loop, worst case);"
        f" agent-like workload {agent_ratio:.3f}: {ok(agent_ratio <= TARGET_OVERHEAD)};"
        f" calling-thread CPU ratio {ratio('full', 'main_cpu_us'):.2f} (tight loop)"
    )
    sg_rate = med([r["rate"] for r in ingest["sg"]])
    raw_rate = med([r["rate"] for r in ingest["raw"]])
    ing_ratio = sg_rate / raw_rate
    sg_drop = sum(r["dropped"] for r in ingest["sg"])
    print(
        f"\ningest: spangraph {sg_rate:.0f} spans/s, raw MERGE {raw_rate:.0f} rows/s,"
        f" ratio {ing_ratio:.2f} (target >= {TARGET_INGEST_RATIO}: {ok(ing_ratio >= TARGET_INGEST_RATIO)});"
        f" absolute target >= {TARGET_INGEST_ABS} spans/s: {ok(sg_rate >= TARGET_INGEST_ABS)};"
        f" dropped {sg_drop}"
    )
    print(
        "  spangraph: time from the first on_start to force_flush() done; per span it maps the\n"
        "  span (twice for a span whose start and end fall in different batches), writes its\n"
        "  node and its PARENT_OF edge (with a parent placeholder MERGE). raw: only the node\n"
        "  MERGE + SET of the same final rows through the falkordb client, no mapping, no edges."
    )
    sg_cpu = med([r["proc_cpu_us"] for r in ingest["sg"]])
    raw_cpu = med([r["proc_cpu_us"] for r in ingest["raw"]])
    sg_srv = med([r["server_cpu_us"] for r in ingest["sg"]])
    raw_srv = med([r["server_cpu_us"] for r in ingest["raw"]])
    print(
        f"  per span: spangraph {sg_cpu:.1f} us client CPU + {sg_srv:.1f} us server CPU;"
        f" raw {raw_cpu:.1f} us client CPU + {raw_srv:.1f} us server CPU"
    )

    m = machine()
    print("\n## Markdown table\n")
    print(
        f"Machine: {m['cpus']} CPUs, {m['cpu']}, Python {m['python']}"
        f" (load average {loadavg()} at the end). Command:"
        f" `python bench/overhead.py{' --quick' if args.quick else ''}"
        f"{f' --spans {args.spans}' if args.spans_given else ''}"
        f"{' --freeze' if args.freeze else ''}`;"
        f" {args.rounds} rounds x {args.spans} spans (overhead),"
        f" {args.agent_rounds} rounds x {args.agent_spans} steps (agent-like),"
        f" {ingest['spans']} spans in workflows of {args.per_workflow} (ingest)."
        + ("" if valid else " Rounds in which a processor dropped spans were left out (see above).")
        + (" **The ingest dropped spans: its figures are invalid.**" if sg_drop else "")
    )
    print()
    print(
        "| setup | loop µs/span | ratio vs bare | main-thread CPU µs/span | ratio vs bare | process CPU µs/span (loop+drain) | ratio vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    labels = {
        "bare": "OTel SDK + BatchSpanProcessor (no-op exporter)",
        "full": "+ spangraph graph + live",
        "graph": "+ spangraph graph only",
        "live": "+ spangraph live only",
        "offload": "+ spangraph graph + live in an agent process (`offload=True`)",
        "handoff": "+ the floor of offload: its own side, records to a child that drops them",
    }
    for name in CONFIGS:
        s = setups[name]
        print(
            f"| {labels[name]} | {med(s.loop_us):.2f} | {ratio(name, 'loop_us'):.2f} |"
            f" {med(s.main_cpu_us):.2f} | {ratio(name, 'main_cpu_us'):.2f} |"
            f" {med(s.proc_cpu_us):.2f} | {ratio(name, 'proc_cpu_us'):.2f} |"
        )
    print()
    print(
        "| agent-like workload (~1 ms I/O wait, 3 events a step) | loop µs/span | ratio vs bare |"
        " main-thread CPU µs/span | ratio vs bare | process CPU µs/span (loop+drain) | ratio vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in agent:
        s = agent[name]
        print(
            f"| {labels[name]} | {med(s.loop_us):.2f} | {ratio(name, 'loop_us', agent):.3f} |"
            f" {med(s.main_cpu_us):.2f} | {ratio(name, 'main_cpu_us', agent):.2f} |"
            f" {med(s.proc_cpu_us):.2f} | {ratio(name, 'proc_cpu_us', agent):.2f} |"
        )
    print()
    print("| graph ingest | spans/s | ratio | target |")
    print("|---|---:|---:|---|")
    print(
        f"| raw `UNWIND … MERGE … SET s += row.props`, batches of {ingest['batch_size']} | {raw_rate:.0f} | 1.00 | |"
    )
    print(
        f"| GraphSpanProcessor (first on_start → force_flush done) | {sg_rate:.0f} | {ing_ratio:.2f} |"
        f" ratio ≥ {TARGET_INGEST_RATIO}: {ok(ing_ratio >= TARGET_INGEST_RATIO)};"
        f" ≥ {TARGET_INGEST_ABS:,} spans/s: {ok(sg_rate >= TARGET_INGEST_ABS)} |"
    )
    print()
    print(
        f"Overhead target (full/bare loop ratio ≤ {TARGET_OVERHEAD}): tight loop {full_ratio:.2f},"
        f" {ok(full_ratio <= TARGET_OVERHEAD)}; agent-like workload {agent_ratio:.3f},"
        f" {ok(agent_ratio <= TARGET_OVERHEAD)}."
    )
    return 0 if valid and not sg_drop else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--spans",
        type=int,
        default=None,
        help="child spans per round (default 20000; 5000 with --quick)",
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds per setup (default 5; 3 with --quick)"
    )
    ap.add_argument(
        "--ingest-spans",
        type=int,
        default=None,
        help="spans for the ingest test (default 50000; 10000 with --quick)",
    )
    ap.add_argument(
        "--ingest-rounds", type=int, default=None, help="ingest rounds (default 2; 1 with --quick)"
    )
    ap.add_argument(
        "--per-workflow", type=int, default=100, help="spans per workflow in the ingest test"
    )
    ap.add_argument(
        "--agent-spans",
        type=int,
        default=None,
        help="steps per round of the agent-like workload (default 2000; 500 with --quick)",
    )
    ap.add_argument(
        "--agent-rounds",
        type=int,
        default=None,
        help="rounds of the agent-like workload (default 5; 3 with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="small run (< 20 s)")
    ap.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() after the setups are made and warmed up (parts 1 and 3, every setup)",
    )
    args = ap.parse_args(argv)
    args.spans_given = args.spans is not None
    if args.spans is None:
        args.spans = 5_000 if args.quick else 20_000
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.ingest_spans is None:
        args.ingest_spans = 10_000 if args.quick else 50_000
    if args.ingest_rounds is None:
        args.ingest_rounds = 1 if args.quick else 2
    if args.agent_spans is None:
        args.agent_spans = 500 if args.quick else 2_000
    if args.agent_rounds is None:
        args.agent_rounds = 3 if args.quick else 5

    m = machine()
    print(
        f"# spangraph overhead benchmark\n\n{m['cpus']} CPUs, {m['cpu']}, Python {m['python']}, {m['platform']}"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        print(f"embedded server pid {info.pid} on port {info.port}; load average {loadavg()}")
        print(f"spangraph imported from {os.path.dirname(spangraph.__file__)}")
        try:
            setups = part1(info, args.spans, args.rounds, args.freeze)
            agent = part3(info, args.agent_spans, args.agent_rounds, args.freeze)
            ingest = part2(info, args.ingest_spans, args.per_workflow, args.ingest_rounds)
            code = report(setups, ingest, agent, args)
        finally:
            server.stop()
    print(f"\n(total {time.perf_counter() - started:.0f} s; load average at the end {loadavg()})")
    return code


if __name__ == "__main__":
    sys.exit(main())
