"""configure(offload=True): spans mapped and written by a spangraph agent process, against
the real embedded server, with real agent processes."""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from conftest import (
    AT_TRACELOOP_START,
    configure_on,
    exit_code_of,
    held_by_a_thread,
    traceloop_workflow,
)
from spangraph import queries
from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.exceptions import ConfigurationError
from spangraph.processors import offload
from spangraph.processors.live import stream_key
from spangraph.processors.offload import OffloadSpanProcessor


def configure_offload(
    provider: TracerProvider, graph_url: str, server: ServerInfo, home: Any, **settings: Any
) -> spangraph.Spangraph:
    """configure() on the test's server with ``offload=True`` (``settings`` win)."""
    return configure_on(
        provider,
        graph_url,
        server,
        home,
        **{"project": f"off-{uuid.uuid4().hex[:8]}", "offload": True, **settings},
    )


@pytest.fixture
def off(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> Iterator[spangraph.Spangraph]:
    yield configure_offload(provider, graph_url, embedded_server, tmp_path)
    spangraph.shutdown()


def agent_of(instance: spangraph.Spangraph) -> Any:
    assert instance.offload_processor is not None
    agent = instance.offload_processor._agent
    assert agent is not None
    return agent


def run_names(instance: spangraph.Spangraph) -> dict[str, str]:
    assert instance.store is not None
    rows = instance.store.query(
        "MATCH (s:Span) WHERE s.project_id = $p RETURN s.name AS name, s.state AS state",
        {"p": instance.settings.project},
    )
    return {row["name"]: row["state"] for row in rows}


def test_offloaded_run_is_written_and_streamed(
    off: spangraph.Spangraph, redis_client: redis.Redis
) -> None:
    assert off.graph_processor is None and off.live_processor is None
    pubsub = redis_client.pubsub()
    pubsub.subscribe(f"spangraph:project:{off.settings.project}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"

    with spangraph.workflow("offloaded") as wf:
        with spangraph.step("fetch"):
            spangraph.event("cache.miss", key="k1")
        with pytest.raises(ValueError), spangraph.step("parse"):
            raise ValueError("bad input")
    assert spangraph.flush(10)

    # the step's error is handled inside the workflow: the workflow completes
    assert run_names(off) == {"offloaded": "completed", "fetch": "completed", "parse": "failed"}
    assert off.store is not None
    (root,) = queries.tree(off.store, wf.workflow_id)
    assert root.name == "offloaded" and [c.name for c in root.children] == ["fetch", "parse"]
    events = queries.workflow_events(off.store, wf.workflow_id)
    assert "cache.miss" in [e["name"] for e in events]

    messages = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is None:
            if any(m["type"] == "workflow.completed" for m in messages):
                break
            continue
        if message["type"] == "message":
            messages.append(json.loads(message["data"]))
    pubsub.close()
    types = [m["type"] for m in messages]
    assert types[0] == "span.started" and "step.failed" in types and "workflow.completed" in types
    assert types.count("cache.miss") == 1  # sent live once, not again at the span's end
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))

    stats = off.stats()
    assert stats["offload"]["dropped"] == 0 and stats["offload"]["sent"] > 0
    assert stats["graph"]["dropped"] == 0 and stats["graph"]["sent"] >= 6
    assert stats["live"]["dropped"] == 0 and stats["live"]["sent"] == len(messages)


@pytest.mark.parametrize("at_start", AT_TRACELOOP_START)
def test_a_kind_set_just_after_the_start_reaches_the_agent(
    off: spangraph.Spangraph, provider: TracerProvider, at_start: dict[str, Any]
) -> None:
    # (a START record of a span not spangraph's own holds a weak reference to it, which
    # the worker reads before the records leave for the agent)
    span = traceloop_workflow(provider, at_start)
    assert spangraph.flush(10)
    assert off.store is not None
    rows = off.store.query(
        "MATCH (s:Span {span_id: $id}) RETURN s.kind AS kind, s.state AS state, "
        "labels(s) AS labels, s.attributes AS attributes",
        {"id": f"{span.get_span_context().span_id:016x}"},
    )
    assert [(r["kind"], r["state"], sorted(r["labels"])) for r in rows] == [
        ("workflow", "running", ["Span", "Workflow"])
    ]
    assert json.loads(rows[0]["attributes"]) == {**at_start, "traceloop.span.kind": "workflow"}
    span.end()
    assert spangraph.flush(10)
    assert run_names(off) == {"research.workflow": "completed"}
    assert off.stats()["offload"]["dropped"] == 0


def test_a_killed_agent_is_replaced_and_the_program_never_notices(
    off: spangraph.Spangraph,
) -> None:
    with spangraph.workflow("before-kill"):
        pass
    assert spangraph.flush(10)
    first = agent_of(off)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    for i in range(3):  # the program goes on; nothing raises into it
        with spangraph.workflow(f"after-kill-{i}"):
            pass
    assert spangraph.flush(20)
    assert agent_of(off).pid != first.pid
    names = run_names(off)
    assert {"before-kill", "after-kill-0", "after-kill-1", "after-kill-2"} <= set(names)
    # the pipes to the dead agent are closed, not left to the collector ("unclosed file")
    deadline = time.monotonic() + 10
    while not first.stdout.closed:  # closed by its reader thread, once it read the end
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert first.stdin.closed  # by the same thread, before


def test_shutdown_ends_the_agent(off: spangraph.Spangraph) -> None:
    agent = agent_of(off)
    with spangraph.workflow("last"):
        pass
    processor = off.offload_processor
    assert processor is not None
    processor.shutdown()
    assert agent.wait(10) == 0  # it wrote what it had and exited
    assert agent.stdin.closed and agent.stdout.closed
    assert "last" in run_names(off)
    processor.shutdown()  # idempotent
    assert processor.force_flush(1000) is True
    assert processor.stats()["dropped"] == 0


def agent_children() -> list[int]:
    """Pids of this process's children running ``spangraph._agent`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"spangraph._agent" in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("timeout", [0.0, 0.3])
def test_a_short_shutdown_leaves_no_agent_behind(off: spangraph.Spangraph, timeout: float) -> None:
    processor = off.offload_processor
    assert processor is not None
    first = agent_of(off)
    os.kill(first.pid, signal.SIGKILL)  # the next write starts another agent ...
    first.wait(5)
    for i in range(200):
        with spangraph.workflow(f"wf-{i}"):
            pass
    spangraph.shutdown(timeout=timeout)  # ... while shutdown is already under way
    processor._thread.join(processor._start_timeout + 5)
    assert not processor._thread.is_alive()
    # before: the worker started an agent after shutdown had closed the last one, and
    # nothing ever closed it
    deadline = time.monotonic() + 5
    while agent_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_children() == []


def test_shutdown_under_load_writes_nothing_into_the_programs_other_files(
    off: spangraph.Spangraph, tmp_path: Any
) -> None:
    """Before, shutdown closed the agent's pipe while the worker wrote a frame to it: the
    rest of the frame went to whatever the program opened next under that descriptor
    number (seen in 5 runs of 5 with a thread opening files)."""
    tracer = off.tracer_provider.get_tracer("load")
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            with tracer.start_as_current_span("s", attributes={"a": "x" * 2000}):
                pass

    files: list[Any] = []

    def open_files() -> None:
        i = 0
        while not stop.is_set():
            files.append(open(tmp_path / f"user-{i}", "ab", buffering=0))  # noqa: SIM115
            i += 1
            if len(files) > 100:
                files.pop(0).close()
            time.sleep(0.0005)

    threads = [threading.Thread(target=produce) for _ in range(3)]
    for t in threads:
        t.start()
    threads.append(threading.Thread(target=open_files))
    try:
        time.sleep(1.0)  # frames of several MB by now
        threads[-1].start()
        time.sleep(0.05)
        spangraph.shutdown(timeout=0)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for f in files:
            f.close()
    written = [p.name for p in tmp_path.glob("user-*") if p.stat().st_size]
    assert written == []


def test_what_a_dead_agent_was_sent_is_counted_and_its_flush_fails_at_once(
    off: spangraph.Spangraph,
) -> None:
    processor = off.offload_processor
    assert processor is not None
    with spangraph.workflow("before"):
        pass
    assert spangraph.flush(10)
    agent = agent_of(off)
    os.kill(agent.pid, signal.SIGSTOP)  # behind: a slow store, a busy machine
    for i in range(50):
        with spangraph.workflow(f"unwritten-{i}"):
            pass
    killer = threading.Timer(0.5, os.kill, (agent.pid, signal.SIGKILL))  # then it dies
    killer.start()
    started = time.monotonic()
    assert spangraph.flush(30) is False
    # before: the flush waited its whole 30 s, and the lost spans were counted nowhere
    assert time.monotonic() - started < 15
    killer.join()
    assert processor.stats()["dropped"] >= 100  # 50 workflows: a start and an end each
    with spangraph.workflow("after"):  # a new agent takes over
        pass
    assert spangraph.flush(20)
    assert "after" in run_names(off)


def test_an_agent_stopped_at_shutdown_is_counted(off: spangraph.Spangraph) -> None:
    processor = off.offload_processor
    assert processor is not None
    agent = agent_of(off)
    os.kill(agent.pid, signal.SIGSTOP)
    for i in range(50):
        with spangraph.workflow(f"wf-{i}"):
            pass
    spangraph.shutdown(timeout=1)
    assert agent.wait(5) == -signal.SIGKILL
    assert processor.stats()["dropped"] >= 100  # before: 1 (a flush record)


def test_an_agent_on_descriptors_numbered_past_1024_is_used(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """A program with more than 1 024 files open got the pipes to the agent numbered
    past what ``select.select`` takes: configure(offload=True) raised ValueError."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1_200:
        pytest.skip(f"needs 1 200 open files (the limit is {soft})")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1_100)]
    try:
        sg = configure_offload(provider, graph_url, embedded_server, tmp_path)
        try:
            agent = agent_of(sg)
            assert agent.stdin.fileno() >= 1_024 and agent.stdout.fileno() >= 1_024
            with spangraph.workflow("past-1024"):
                pass
            assert spangraph.flush(20)
            assert "past-1024" in run_names(sg)
        finally:
            spangraph.shutdown()
    finally:
        for fd in held:
            os.close(fd)


def test_drops_while_the_agent_does_not_read_are_told_at_once(
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent stopped (a busy machine, a debugger): the worker waited in its write to
    the full pipe, and the records the buffer dropped meanwhile were logged only at
    shutdown (never, in a program killed before it). The worker now tells of them while
    it waits."""
    sg = configure_offload(provider, graph_url, embedded_server, tmp_path, max_queue_size=512)
    try:
        agent = agent_of(sg)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING, logger="spangraph"):
                tracer = provider.get_tracer("t")
                deadline = time.monotonic() + 30
                told: list[str] = []
                while not told:
                    assert time.monotonic() < deadline, "no drop was told"
                    for _ in range(2_000):
                        with tracer.start_as_current_span("s"):
                            pass
                    time.sleep(0.2)
                    told = [
                        r.getMessage()
                        for r in caplog.records
                        if r.getMessage().startswith("spangraph offload: dropped")
                    ]
            assert sg.stats()["offload"]["dropped"] > 0
        finally:
            os.kill(agent.pid, signal.SIGCONT)
    finally:
        spangraph.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_an_agent_starts_does_not_keep_it_alive(off: spangraph.Spangraph) -> None:
    """A child forked while the worker waited for a new agent to be ready kept that
    agent's input open: the parent's shutdown then waited its 10 s and killed it."""
    processor = off.offload_processor
    assert processor is not None
    first = agent_of(off)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    with spangraph.workflow("restarts-the-agent"):
        pass
    deadline = time.monotonic() + 10
    while processor._starting is None:  # the worker waits for the new agent's "ready"
        assert time.monotonic() < deadline, "no agent was started"
        time.sleep(0.005)
    pid = os.fork()
    if pid == 0:  # a long-lived child
        time.sleep(20)
        os._exit(0)
    try:
        assert spangraph.flush(20)
        agent = agent_of(off)
        spangraph.shutdown()
        assert agent.wait(5) == 0  # it saw the end of its input and exited by itself
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("traces", [True, False], ids=["tracing", "idle"])
def test_forked_child_gets_an_agent_of_its_own_when_it_traces(
    off: spangraph.Spangraph, traces: bool
) -> None:
    """A forked child starts an agent of its own at its first span. One that traced
    nothing starts none: its flush at exit (atexit's shutdown) started one only to be told
    there was nothing to write (half a second of exit, ten with the server gone)."""
    with spangraph.workflow("parent-before"):
        pass
    assert spangraph.flush(10)
    parent_agent = agent_of(off).pid
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if traces:
                with spangraph.workflow("child"):
                    pass
            processor = off.offload_processor
            assert processor is not None
            flushed = spangraph.flush(20)
            agent = processor._agent or processor._starting
            mine = agent is not None and agent.pid != parent_agent
            code = 0 if flushed and (mine if traces else agent is None) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with spangraph.workflow("parent-after"):
        pass
    assert spangraph.flush(10)
    assert agent_of(off).pid == parent_agent
    written = {"parent-before", "parent-after"} | ({"child"} if traces else set())
    assert written <= set(run_names(off))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_childs_counters_go_on_from_the_parents(off: spangraph.Spangraph) -> None:
    """Health metrics count on from the parent's figures in a forked child, as the
    in-process workers' counters do; the offload processor's were set back to zero, and
    its metrics hook dropped, so the child's writes were undercounted and untimed."""
    proc = off.offload_processor
    assert proc is not None
    with spangraph.workflow("parent"):
        pass
    assert spangraph.flush(10)
    timed: list[int] = []
    proc.on_sent = lambda seconds, count: timed.append(count)
    before = proc.stats()["sent"]
    assert before > 0
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            kept = proc.stats()["sent"] == before and proc.on_sent is not None
            with spangraph.workflow("child"):
                pass
            flushed = spangraph.flush(20)  # (True: nothing lost here)
            code = 0 if kept and flushed and proc.stats()["sent"] > before and timed else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    proc.on_sent = None


def test_an_agent_that_cannot_start_is_a_configuration_error(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    real = offload._Agent.__init__

    def record(agent: Any, *args: Any, **kwargs: Any) -> None:
        real(agent, *args, **kwargs)
        started.append(agent)

    monkeypatch.setattr(offload._Agent, "__init__", record)
    with pytest.raises(ConfigurationError) as err:
        OffloadSpanProcessor(
            {"graph_url": f"falkordb://127.0.0.1:{closed_port}/g", "redis_url": None},
            start_timeout=30,
        )
    [agent] = started  # reaped, and its pipes closed (not left to the collector)
    assert agent.returncode is not None
    assert agent.stdin.closed and agent.stdout.closed
    assert err.value.setting == "offload"
    assert str(closed_port) in str(err.value)
    names = [t.name for t in threading.enumerate()]
    assert "spangraph-offload" not in names and "spangraph-offload-send" not in names


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False)]
)
def test_offload_setting_from_the_environment(value: str, expected: bool) -> None:
    assert Settings.from_env({"SPANGRAPH_OFFLOAD": value}).offload is expected


def test_bad_offload_setting_names_it() -> None:
    with pytest.raises(ConfigurationError) as err:
        Settings.from_env({"SPANGRAPH_OFFLOAD": "maybe"})
    assert err.value.setting == "SPANGRAPH_OFFLOAD"


def test_metrics_report_the_offload_side(off: spangraph.Spangraph) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from spangraph._metrics import register_metrics

    reader = InMemoryMetricReader()
    registration = register_metrics(off, MeterProvider(metric_readers=[reader]))
    try:
        with spangraph.workflow("measured"):
            pass
        assert spangraph.flush(10)
        data = reader.get_metrics_data()
        sent = {
            point.attributes["processor"]: point.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == "spangraph.processor.items.sent"
            for point in metric.data.data_points
        }
        assert sent.get("offload", 0) >= 2  # the workflow's start and end, at least
    finally:
        registration.unregister()


@pytest.mark.slow
def test_agent_that_cannot_restart_is_retried_until_the_store_returns(
    private_servers: Any, tmp_path: Any
) -> None:
    server, info = private_servers.start()
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=info.graph_url,
        redis_url="off",
        home=str(tmp_path),
        project=f"off-{uuid.uuid4().hex[:8]}",
        offload=True,
    )
    try:
        with spangraph.workflow("before-outage"):
            pass
        assert spangraph.flush(10)
        agent = agent_of(sg)
        server.stop()
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(5)
        with spangraph.workflow("during-outage"):  # nothing raises into the program
            pass
        assert spangraph.flush(1) is False  # no agent can start while the store is down
        deadline = time.monotonic() + 30  # each try starts a Python process that gives up
        while sg.stats()["offload"]["retries"] == 0:
            assert time.monotonic() < deadline, sg.stats()
            time.sleep(0.05)
        private_servers.restart_on_port(server, info.port)
        deadline = time.monotonic() + 30
        while True:  # the next batch starts an agent once the store answers
            with spangraph.workflow("after-outage"):
                pass
            if spangraph.flush(5):
                break
            assert time.monotonic() < deadline, sg.stats()
        names = run_names(sg)
        # the batch of the outage was kept and retried: nothing accepted was lost
        assert {"before-outage", "during-outage", "after-outage"} <= set(names)
        assert sg.stats()["offload"]["dropped"] == 0
    finally:
        spangraph.shutdown()


def test_attribute_values_marshal_does_not_take_are_sent_as_text(
    off: spangraph.Spangraph,
) -> None:
    """A span from other code may carry any object (the SDK's ReadableSpan does not check):
    its frame is sent with such values as text, and nothing is dropped."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    class Opaque:
        def __str__(self) -> str:
            return "opaque-value"

    trace_id, span_id = uuid.uuid4().int, uuid.uuid4().int >> 64
    span = ReadableSpan(
        name="foreign",
        context=SpanContext(trace_id, span_id, False, TraceFlags(1)),
        resource=Resource({"service.name": "other"}),
        attributes={"thing": Opaque(), "nested": ("a", 1)},  # type: ignore[dict-item]
        start_time=1_000,
        end_time=2_000,
    )
    processor = off.offload_processor
    assert processor is not None
    processor.on_start(span)  # type: ignore[arg-type]
    processor.on_end(span)
    assert processor.force_flush(10_000)
    assert off.store is not None
    rows = off.store.query(
        "MATCH (s:Span {span_id: $id}) RETURN s.attributes AS attributes, s.state AS state",
        {"id": format(span_id, "016x")},
    )
    assert len(rows) == 1 and rows[0]["state"] == "completed"
    assert json.loads(rows[0]["attributes"]) == {"thing": "opaque-value", "nested": ["a", 1]}
    assert off.stats()["offload"]["dropped"] == 0


def test_a_span_that_cannot_be_read_is_dropped_counted_and_never_raises(
    off: spangraph.Spangraph,
) -> None:
    proc = off.offload_processor
    assert proc is not None
    before = proc.stats()["dropped"]
    proc.on_start(object())  # type: ignore[arg-type]
    proc.on_end(object())  # type: ignore[arg-type]
    assert proc.stats()["dropped"] == before + 2
    with spangraph.workflow("after"):  # what comes next is still written
        pass
    assert spangraph.flush() is False  # as in process: not everything before it was written
    assert run_names(off) == {"after": "completed"}
    assert spangraph.flush()  # nothing dropped since


def test_shutdown_logs_the_drops_the_rate_limit_kept_quiet(
    off: spangraph.Spangraph, caplog: pytest.LogCaptureFixture
) -> None:
    """Drop warnings come at most every 10 s; shutdown says what was dropped since the
    last one (before: the 99 dropped after the first warning were counted, never logged)."""
    proc = off.offload_processor
    assert proc is not None

    def logged() -> list[int]:
        said = [r.getMessage() for r in caplog.records if r.name.startswith("spangraph")]
        return [int(m.split()[3]) for m in said if m.startswith("spangraph offload: dropped")]

    with caplog.at_level(logging.WARNING, logger="spangraph"):
        proc.on_start(object())  # type: ignore[arg-type]  # unreadable: dropped, counted
        with spangraph.step("wakes-the-writer"):
            pass
        deadline = time.monotonic() + 10
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logged() == [1]
        for _ in range(99):
            proc.on_start(object())  # type: ignore[arg-type]
        with spangraph.step("after"):
            pass
        spangraph.shutdown()
    assert logged() == [1, 99]
    assert proc.stats()["dropped"] == 100


def test_offload_without_the_c_extension(
    monkeypatch: pytest.MonkeyPatch,
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
) -> None:
    """Where spangraph._speedups was not built, the Python buffer does the same."""
    from spangraph.processors import _records, offload

    monkeypatch.setattr(offload, "RecordBuffer", _records.PyRecordBuffer)
    instance = configure_offload(provider, graph_url, embedded_server, tmp_path)
    try:
        assert isinstance(instance.offload_processor._buffer, _records.PyRecordBuffer)  # type: ignore[union-attr]
        with spangraph.workflow("pure python"), spangraph.step("a step"):
            pass
        assert spangraph.flush()
        assert run_names(instance) == {"pure python": "completed", "a step": "completed"}
    finally:
        spangraph.shutdown()


def test_records_that_cannot_be_encoded_are_counted_and_the_worker_goes_on(
    off: spangraph.Spangraph,
) -> None:
    proc = off.offload_processor
    assert proc is not None

    class Unprintable:  # no span attribute can be this: marshal and str() both fail on it
        def __str__(self) -> str:
            raise RuntimeError("cannot be shown")

    before = proc.stats()
    assert proc._add((99, Unprintable()))
    with spangraph.workflow("still written"):
        pass
    assert spangraph.flush()
    after = proc.stats()
    assert after["failed"] == before["failed"] + 1 and after["dropped"] >= before["dropped"] + 1
    assert run_names(off) == {"still written": "completed"}


def test_spans_that_are_not_the_sdks_are_copied_through_their_public_api(
    off: spangraph.Spangraph,
) -> None:
    """A ReadableSpan look-alike (a proxy without the SDK's private fields): the fast copy
    refuses it, the processor's fallback reads its public API, the span is written."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    proc = off.offload_processor
    assert proc is not None
    context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    now = time.time_ns()
    inner = ReadableSpan(
        name="proxied",
        context=context,
        attributes={"spangraph.kind": "workflow", "spangraph.workflow.id": "wf-proxied"},
        start_time=now,
        end_time=now + 1000,
    )

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            return getattr(inner, name)

    before = proc.stats()["dropped"]
    proc.on_start(Proxy())  # type: ignore[arg-type]
    proc.on_end(Proxy())  # type: ignore[arg-type]
    assert spangraph.flush()
    assert proc.stats()["dropped"] == before
    assert run_names(off) == {"proxied": "completed"}


class _Float64(float):
    """Stands in for numpy.float64, a float subclass."""

    def __str__(self) -> str:
        return "float64!"


class _Level(enum.IntEnum):
    HIGH = 3


class _Label(str):
    def __str__(self) -> str:
        return "label!"


@pytest.mark.parametrize("mode", ["offload", "in-process"])
def test_int_float_and_str_subclasses_are_stored_as_plain_values(
    mode: str, provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """numpy.float64, an IntEnum or a str subclass is stored as the plain value, through
    the agent (marshal takes exact types only) as by the program's own processors."""
    instance = configure_offload(
        provider, graph_url, embedded_server, tmp_path, offload=mode == "offload"
    )
    try:
        with spangraph.workflow("wf-types") as run, spangraph.step("s") as step:
            step.set(score=_Float64(0.9), level=_Level.HIGH, label=_Label("ok"))
            step.set(scores=[_Float64(0.1), _Float64(0.2)], levels=[_Level.HIGH])
        assert spangraph.flush(10)
        assert instance.store is not None
        rows = queries.workflow_spans(instance.store, run.workflow_id)
    finally:
        spangraph.shutdown()
    [attributes] = [r["attributes"] for r in rows if r["name"] == "s"]
    values = {k: attributes[k] for k in ("score", "level", "label", "scores", "levels")}
    assert values == {
        "score": 0.9,
        "level": 3,
        "label": "ok",
        "scores": [0.1, 0.2],
        "levels": [3],
    }
    assert type(values["score"]) is float and type(values["level"]) is int


class _Op(str, enum.Enum):  # noqa: UP042 - str() gives "_Op.SEARCH"; OTLP and JSON "search"
    SEARCH = "search"
    DONE = "done"
    HITS = "hits"


@pytest.mark.parametrize("mode", ["in-process", "offload"])
def test_names_and_keys_that_are_str_subclasses_are_their_strings(
    mode: str, provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """A span, event or attribute key given as a ``(str, Enum)`` member: the two modes
    wrote different things (in-process the name as ``_Op.SEARCH`` and the key as
    ``hits``; the agent the name as ``search`` and the key as ``_Op.HITS``). Both write
    the string itself now, as an OTLP exporter sends it."""
    instance = configure_offload(
        provider, graph_url, embedded_server, tmp_path, offload=mode == "offload"
    )
    tracer = provider.get_tracer("enum-user")
    try:
        with (
            spangraph.workflow("wf-enums") as run,
            tracer.start_as_current_span(_Op.SEARCH) as span,
        ):
            span.set_attribute(_Op.HITS, 3)
            span.add_event(_Op.DONE, {_Op.HITS: 3})
        assert spangraph.flush(10)
        assert instance.store is not None
        rows = queries.workflow_spans(instance.store, run.workflow_id)
        events = queries.workflow_events(instance.store, run.workflow_id)
    finally:
        spangraph.shutdown()
    [search] = [r for r in rows if r["name"] != "wf-enums"]
    assert search["name"] == "search"
    assert search["attributes"] == {"hits": 3}
    [done] = [e for e in events if e["span_id"] == search["span_id"]]
    assert (done["name"], done["attributes"]) == ("done", {"hits": 3})


@pytest.mark.parametrize("mode", ["in-process", "offload"])
def test_a_live_event_carries_the_spans_name_and_kind_as_they_are_now(
    mode: str,
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
    redis_client: redis.Redis,
) -> None:
    """A span renamed after it started (an HTTP server span once routed) or given its
    kind later: in-process its live events carried the new name and kind, through the
    agent the ones it started with."""
    configure_offload(provider, graph_url, embedded_server, tmp_path, offload=mode == "offload")
    tracer = provider.get_tracer("http-server")
    try:
        with (
            spangraph.workflow("wf-renamed") as run,
            tracer.start_as_current_span("HTTP GET") as span,
        ):
            assert spangraph.flush(10)  # its start is mapped and sent first
            span.update_name("GET /items/{id}")
            span.set_attribute("gen_ai.operation.name", "chat")
            spangraph.event("request.routed")
            assert spangraph.flush(10)  # the event is sent while the span is open
        assert spangraph.flush(10)
    finally:
        spangraph.shutdown()
    messages = [
        json.loads(fields[b"data"])
        for _, fields in redis_client.xrange(stream_key(run.workflow_id))
    ]
    [routed] = [m for m in messages if m["type"] == "request.routed"]
    assert (routed["name"], routed["kind"]) == ("GET /items/{id}", "llm")
    [started] = [m for m in messages if m["type"] == "span.started" and m["name"] == "HTTP GET"]
    assert started["kind"] == "span"


def test_agent_uses_the_settings_configure_was_given(
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A variable the keyword overrode (here an invalid one) does not reach the agent:
    it takes the settings configure() resolved instead of reading the environment."""
    monkeypatch.setenv("SPANGRAPH_JAEGER_URL", "not-a-url")
    monkeypatch.setenv("SPANGRAPH_PROJECT", "env-project")
    instance = configure_offload(
        provider, graph_url, embedded_server, tmp_path, jaeger_url="http://localhost:16686"
    )
    try:
        with spangraph.workflow("kw-settings"):
            pass
        assert spangraph.flush(10)
        assert run_names(instance) == {"kw-settings": "completed"}
        assert instance.stats()["graph"]["sent"] >= 2
    finally:
        spangraph.shutdown()


@pytest.mark.parametrize("first_wait", [30.0, 0.1], ids=["waited-for", "timed-out"])
def test_a_flush_is_false_when_the_agent_dropped_something(
    private_servers: Any, tmp_path: Any, first_wait: float
) -> None:
    """The agent's flush answer says whether its processors wrote everything before it:
    with Redis gone past the live processor's retries, ``flush()`` is False, as it is
    without offload (before: True, the agent answered once it had tried). A flush that
    timed out first was False for the timeout; the agent's "not all written" came later,
    to no one, and the next flush (nothing new dropped since it was asked) was True:
    now that one is False."""
    _, graph_info = private_servers.start()
    redis_server, redis_info = private_servers.start()
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_info.graph_url,
        redis_url=redis_info.redis_url,
        home=str(tmp_path),
        project=f"off-{uuid.uuid4().hex[:8]}",
        offload=True,
    )
    try:
        with spangraph.workflow("before"):
            pass
        assert spangraph.flush(10)
        redis_server.stop()
        with spangraph.workflow("while-redis-is-gone"):
            pass
        assert spangraph.flush(first_wait) is False
        deadline = time.monotonic() + 60
        while not sg.stats()["live"]["dropped"] and time.monotonic() < deadline:
            time.sleep(0.1)  # (the agent's figures come with its answer to that flush)
        assert sg.stats()["live"]["dropped"] > 0
        if first_wait < 1:
            assert spangraph.flush(30) is False
        assert "while-redis-is-gone" in run_names(sg)  # the graph has it all the same
    finally:
        spangraph.shutdown()


def test_an_agent_whose_program_is_gone_before_it_is_ready_exits_quietly() -> None:
    """A pool worker terminated while its agent starts: the agent's "ready" went into a
    closed pipe and printed a BrokenPipeError traceback on the program's stderr."""
    read, write = os.pipe()
    os.close(read)  # the program that started the agent is gone
    env = {
        **os.environ,
        offload._ENV_PACKAGE: offload._PACKAGE_DIR,
        offload._ENV_CONFIG: json.dumps({"graph": False, "live": False}),
    }
    try:
        agent = subprocess.run(
            [sys.executable, "-P", "-c", offload._AGENT_BOOT],
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    assert agent.returncode == 0
    assert agent.stderr == b""


# -- the program around the agent ---------------------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from opentelemetry.sdk.trace import TracerProvider
    import spangraph

    graph_url, redis_url, home, project, scenario = sys.argv[1:6]
    if scenario == "closed-stdio":  # a daemon: its standard streams closed first
        saved = os.dup(1)
        for fd in (0, 1, 2):
            os.close(fd)
    if scenario == "sigpipe":  # as command-line tools do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sg = spangraph.configure(
        tracer_provider=TracerProvider(), graph_url=graph_url, redis_url=redis_url,
        home=home, project=project, offload=True,
    )
    interrupted = False
    agent = sg.offload_processor._agent
    try:
        with spangraph.workflow("main"):
            if scenario != "closed-stdio":  # the agent falls behind: a backlog in its pipe
                os.kill(agent.pid, signal.SIGSTOP)
            for i in range(3000):
                with spangraph.step(f"s{i}", attributes={"pad": "x" * 100}):
                    pass
                if scenario == "closed-stdio" and i == 10:
                    try:
                        os.write(2, b"disk almost full\\n" * 50)  # into whatever fd 2 is
                    except OSError:
                        pass
            time.sleep(0.3)
            if scenario == "sigpipe":  # it dies while the writer is blocked on its pipe
                os.kill(agent.pid, signal.SIGKILL)
                os.kill(agent.pid, signal.SIGCONT)
                time.sleep(0.5)
            if scenario == "group-sigint":  # a Ctrl-C in the terminal, to the whole group
                os.kill(agent.pid, signal.SIGCONT)
                os.killpg(os.getpgrp(), signal.SIGINT)
                time.sleep(5)
    except KeyboardInterrupt:
        interrupted = True
    time.sleep(0.5)
    agent_code = agent.poll()  # None: the agent the program had is still there
    with spangraph.workflow("cleanup"):
        pass
    ok = spangraph.flush(20)
    spangraph.shutdown()
    out = json.dumps({"ok": ok, "interrupted": interrupted, "agent": agent_code}).encode()
    out += b"\\n"
    os.write(saved if scenario == "closed-stdio" else 1, out)
    """
)


@pytest.mark.parametrize("scenario", ["group-sigint", "closed-stdio", "sigpipe"])
def test_the_agent_survives_what_the_program_around_it_does(
    scenario: str, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """group-sigint: a Ctrl-C reached the agent too (same process group): it died, and
    the program's clean shutdown lost its spans. closed-stdio: the pipe to the agent got
    fd 2, and the program's next stderr line was read as a frame: the agent hung, nothing
    more was written. sigpipe: a program with SIGPIPE at its default was killed by its
    next write to an agent that had died."""
    project = f"prog-{uuid.uuid4().hex[:8]}"
    child = subprocess.run(
        [
            *(sys.executable, "-c", PROGRAM, graph_url, embedded_server.redis_url),
            *(str(tmp_path), project, scenario),
        ],
        capture_output=True,
        timeout=120,
        start_new_session=True,  # its own process group, as a program in a terminal has
        check=False,
    )
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    result = json.loads(child.stdout.decode().splitlines()[-1])
    assert result["interrupted"] == (scenario == "group-sigint")
    if scenario != "sigpipe":
        assert result["agent"] is None  # the agent was never killed along
    settings = Settings.from_env(graph_url=graph_url)
    from spangraph.stores import open_store

    store = open_store(settings)
    try:
        rows = store.query(
            "MATCH (s:Span {project_id: $p}) RETURN s.name AS name, s.state AS state",
            {"p": project},
        )
    finally:
        store.close()
    states = {row["name"]: row["state"] for row in rows}
    assert states["cleanup"] == "completed"
    if scenario == "sigpipe":  # what the killed agent held is lost; the rest is there
        assert states["main"] == "completed"
        return
    assert result["ok"] is True
    assert states["main"] == ("cancelled" if scenario == "group-sigint" else "completed")
    assert {f"s{i}" for i in range(3000)} <= set(states)


def test_a_queue_bound_below_the_batch_size_is_taken(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """configure(offload=True, max_queue_size=100) raised a bare ValueError (the batch
    size was 2048 whatever the bound); the bound now reaches the agent's queues too."""
    sg = configure_offload(provider, graph_url, embedded_server, tmp_path, max_queue_size=100)
    try:
        assert sg.offload_processor is not None
        assert sg.offload_processor._config["max_queue_size"] == 100
        with spangraph.workflow("small"):
            pass
        assert spangraph.flush(10)
        assert run_names(sg) == {"small": "completed"}
    finally:
        spangraph.shutdown()


def test_a_flush_after_records_were_refused_is_false(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """Records refused by the full buffer (an agent that does not keep up) were counted,
    but the next flush said True."""
    sg = configure_offload(provider, graph_url, embedded_server, tmp_path, max_queue_size=100)
    try:
        agent = agent_of(sg)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            for i in range(3000):
                with spangraph.step(f"s{i}"):
                    pass
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        assert sg.stats()["offload"]["dropped"] > 0
        assert spangraph.flush(20) is False
        deadline = time.monotonic() + 20
        while sg.stats()["offload"]["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        spangraph.flush(20)  # (False too when the agent's own queues dropped the backlog)
        with spangraph.workflow("later"):
            pass
        assert spangraph.flush(20) is True, sg.stats()  # nothing dropped since
    finally:
        spangraph.shutdown()


def test_spans_that_never_end_leave_the_open_ones_their_live_events(
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Any,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the agent's bound on open spans (here 4, set in the agent before it starts)
    the longest open goes, not every one: a step still open when later spans start and
    end has its event sent live before the step ends."""
    boot = "from spangraph.processors.offload import agent_main\n"
    assert boot in offload._AGENT_BOOT
    bound = "from spangraph.processors import live\nlive._MAX_OPEN = 4\n"
    monkeypatch.setattr(offload, "_AGENT_BOOT", offload._AGENT_BOOT.replace(boot, bound + boot))
    instance = configure_offload(provider, graph_url, embedded_server, tmp_path)
    try:
        tracer = provider.get_tracer("leaks")
        leaked = [tracer.start_span(f"never-ends-{i}") for i in range(3)]
        workflow_id = f"wf-{uuid.uuid4()}"
        with spangraph.workflow("wf-after-leaks", workflow_id=workflow_id), spangraph.step("s"):
            for i in range(3):  # each start past the bound: the oldest goes
                with spangraph.step(f"child-{i}"):
                    pass
            spangraph.event("progress", pct=50)
            assert spangraph.flush(10)
            entries = redis_client.xrange(stream_key(workflow_id))
            sent = [json.loads(data[b"data"]) for _, data in entries]
            assert [(m["type"], m["name"]) for m in sent][-1] == ("progress", "s")
        assert spangraph.flush(10)
        entries = redis_client.xrange(stream_key(workflow_id))
        types = [json.loads(data[b"data"])["type"] for _, data in entries]
        assert types.count("progress") == 1 and types[-1] == "span.ended"
        for span in leaked:
            span.end()
        assert instance.stats()["offload"]["dropped"] == 0
    finally:
        spangraph.shutdown()


def test_the_agent_imports_what_the_program_imports(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Any
) -> None:
    """The agent ran with ``-m`` from the program's working directory, which then came
    first on its path: a json.py there (the program's own is never imported from there)
    broke the agent only, and configure(offload=True) failed with "no answer"."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "json.py").write_text("raise ImportError('not the json module')\n")
    program = tmp_path / "program.py"
    program.write_text(
        textwrap.dedent(
            f"""
            import spangraph
            from opentelemetry.sdk.trace import TracerProvider

            spangraph.configure(
                tracer_provider=TracerProvider(), graph_url={graph_url!r},
                redis_url={embedded_server.redis_url!r}, home={str(tmp_path)!r}, offload=True,
            )
            with spangraph.workflow("from-elsewhere"):
                pass
            assert spangraph.flush(10)
            spangraph.shutdown()
            print("ok")
            """
        )
    )
    child = subprocess.run(
        [sys.executable, str(program)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (child.returncode, child.stdout.strip()) == (0, "ok"), child.stderr[-2000:]


def test_the_agents_counters_never_go_down_when_it_is_replaced(
    off: spangraph.Spangraph,
) -> None:
    """Before, stats()["graph"] and ["live"] started again from the new agent's zero once
    a killed agent was replaced (a dashboard's rate went negative)."""
    for i in range(5):
        with spangraph.workflow(f"before-{i}"):
            pass
    assert spangraph.flush(10)
    before = off.stats()
    assert before["graph"]["sent"] >= 10 and before["live"]["sent"] > 0
    first = agent_of(off)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    with spangraph.workflow("after"):
        pass
    assert spangraph.flush(20)
    assert agent_of(off).pid != first.pid
    after = off.stats()
    for name in ("graph", "live"):
        for key in ("sent", "dropped", "failed", "retries"):
            assert after[name][key] >= before[name][key], (name, key, before, after)
    # the new agent's own writes are added: the run started after the kill (2 items)
    assert after["graph"]["sent"] >= before["graph"]["sent"] + 2
    assert after["graph"]["queued"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_a_thread_reads_stats_does_not_hang_the_child(
    off: spangraph.Spangraph,
) -> None:
    """A thread reading stats() (a health endpoint) held the lock of the agent's counters
    when another thread forked: the child's exit waited on it for good."""
    processor = off.offload_processor
    assert processor is not None
    with spangraph.workflow("before-fork"):
        pass
    assert spangraph.flush(10)
    with held_by_a_thread(processor._stats_lock):
        pid = os.fork()
        if pid == 0:  # the child: traces, then exits through atexit (shutdown)
            try:
                with spangraph.workflow("in-child"):
                    pass
                off.stats()
            finally:
                os._exit(0 if spangraph.flush(10) else 3)
    assert exit_code_of(pid) == 0
    assert "in-child" in run_names(off)


def test_each_frame_is_one_marshalled_list_the_agent_reads_at_once() -> None:
    """The agent reads a frame with one ``marshal.loads``. Before, the Resources a frame
    announced were marshalled one by one ahead of its records, and the agent read the
    whole frame value by value from a stream (``marshal.load``), 17 µs of its CPU a span
    of the tight loop against under 1 µs now: the announcements are a frame of their
    own, a list like every other."""
    import marshal
    from types import SimpleNamespace

    from opentelemetry.sdk.resources import Resource

    sender = SimpleNamespace(
        _known={7: Resource({"service.name": "checkout"}), 8: Resource({})}, _announced={8}
    )
    body = OffloadSpanProcessor._announcements(sender, {8})  # type: ignore[arg-type]
    assert marshal.loads(body) == [(offload._RESOURCE, 7, {"service.name": "checkout"})]
    assert sender._announced == {7, 8}
    assert offload._records_of(body) == [(offload._RESOURCE, 7, {"service.name": "checkout"})]

    records = [(offload._START, 1, 2), (offload._END, 1, 2)]
    frame = marshal.dumps(records)
    assert offload._records_of(frame) == records
    assert offload._records_of(frame[:-3]) == []  # a cut frame is lost, not misread
    assert offload._records_of(marshal.dumps((offload._START, 1, 2))) == []


def test_the_agent_queues_a_frames_records_at_once_as_one_by_one() -> None:
    """The agent hands a frame's START and END records in a row to each processor at
    once (``_queue_records``: one ``put_many``): the same items, in the same order, as
    ``_queue_record`` one by one; none, and no drop counted, once shut down."""
    from spangraph.processors.graph import GraphSpanProcessor
    from spangraph.processors.live import LiveEventProcessor

    class Store:
        def write(self, batch: Any) -> None:
            pass

        def ping(self) -> None:
            pass

    class Publisher:
        def publish(self, messages: Any) -> None:
            pass

    provider = TracerProvider()
    copies: list[Any] = []
    capture = GraphSpanProcessor(Store())
    capture._put = copies.append  # type: ignore[method-assign]
    provider.add_span_processor(capture)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("wf"), tracer.start_as_current_span("step"):
        pass
    records = [item[1] for item in copies]
    assert [r[0] for r in records] == [offload._START, offload._START, offload._END, offload._END]

    for processor in (GraphSpanProcessor(Store()), LiveEventProcessor(Publisher())):
        one_by_one: list[Any] = []
        put = processor._put
        processor._put = one_by_one.append  # type: ignore[method-assign]
        for record in records:
            processor._queue_record(record[0], record)
        processor._put = put  # type: ignore[method-assign]
        at_once: list[list[Any]] = []
        put_many = processor._worker.put_many
        processor._worker.put_many = at_once.append  # type: ignore[method-assign]
        processor._queue_records(records)
        assert at_once == [one_by_one]
        processor._worker.put_many = put_many  # type: ignore[method-assign]
        processor._queue_records(records)
        assert processor.force_flush(5_000)
        assert processor.stats()["sent"] > 0
        processor.shutdown()
        before = processor.stats()
        processor._queue_records(records)
        assert processor.stats() == before  # ignored, as on_start/on_end are then


def test_a_record_the_agent_cannot_queue_is_skipped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record a processor cannot take (too short to hold its time, here) is skipped
    and logged; the others handed over with it are queued one by one, not lost with
    it."""
    from spangraph.processors.live import LiveEventProcessor

    class Publisher:
        def publish(self, messages: Any) -> None:
            pass

    live = LiveEventProcessor(Publisher())
    queued: list[Any] = []
    live._put = queued.append  # type: ignore[method-assign]
    good_start = (offload._START, 1, 2, 0, False, "s", 0, 10, None, 0)
    good_end = (offload._END, 1, 2, 0, False, "s", 0, 10, 20, 0, None, {}, None, None, 0)
    bad = (offload._END, 1, 3)
    with caplog.at_level(logging.ERROR, logger="spangraph"):
        offload._hand_over([live], [good_start, bad, good_end])
    assert queued == [(offload._START, good_start, 10), (offload._END, good_end, 20)]
    assert any("could not process a record" in r.getMessage() for r in caplog.records)
    live.shutdown()
