"""Failures of real servers and processes: the store goes away and comes back, a process
is killed mid-run, the queue overflows, Redis goes away and comes back. User code never
blocks or sees an exception; what cannot be kept is counted and logged."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import spangraph
from spangraph import queries
from spangraph.exceptions import StoreUnavailableError
from spangraph.processors.live import workflow_channel
from spangraph.stores import FalkorDBStore

SCRIPTS = Path(__file__).parent / "scripts"
QUICK_S = 3.0
"""A workflow run while a server is down must return within this (a functional bound:
on_start/on_end only append to a queue; without it a run would wait on the network)."""


def run_workflow(name: str) -> str:
    """A workflow with two steps and an event: three spans."""
    with spangraph.workflow(name) as run:
        with spangraph.step("a"):
            spangraph.event("progress", n=1)
        with spangraph.step("b"):
            pass
    return run.workflow_id


def timed_run(name: str) -> str:
    started = time.perf_counter()
    workflow_id = run_workflow(name)
    elapsed = time.perf_counter() - started
    assert elapsed < QUICK_S, f"a workflow took {elapsed:.2f}s while a server was down"
    return workflow_id


def span_states(store: FalkorDBStore, workflow_id: str) -> list[str]:
    rows = store.query(
        "MATCH (s:Span {workflow_id: $wf}) RETURN s.state AS state ORDER BY s.name",
        {"wf": workflow_id},
    )
    return [r["state"] for r in rows]


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Callable[..., spangraph.Spangraph]]:
    """configure() on a TracerProvider of its own, with a home in the test's temp dir and
    a fresh project (``settings`` given win); spangraph is shut down after the test."""
    made: list[spangraph.Spangraph] = []

    def configure(**settings: Any) -> spangraph.Spangraph:
        defaults = {
            "tracer_provider": TracerProvider(),
            "home": str(tmp_path),
            "project": f"p-{uuid.uuid4().hex[:8]}",
        }
        made.append(spangraph.configure(**{**defaults, **settings}))
        return made[-1]

    yield configure
    spangraph.shutdown()
    for instance in made:
        instance.tracer_provider.shutdown()


@pytest.mark.slow
def test_store_outage_and_recovery(
    private_servers, tmp_path: Path, configured: Callable[..., spangraph.Spangraph]
) -> None:
    server, info = private_servers.start()
    sg = configured(
        graph_url=info.graph_url,
        redis_url=info.redis_url,
    )
    before = [run_workflow(f"before-{i}") for i in range(3)]
    assert spangraph.flush(10)

    server.stop()
    during = [timed_run(f"during-{i}") for i in range(5)]
    deadline = time.monotonic() + 5
    while sg.stats()["graph"]["retries"] == 0:  # the worker keeps the batch and retries
        assert time.monotonic() - deadline < 0, sg.stats()
        time.sleep(0.02)

    private_servers.restart_on_port(server, info.port)
    assert spangraph.flush(30)

    store = sg.store
    assert isinstance(store, FalkorDBStore)
    for workflow_id in before + during:
        assert span_states(store, workflow_id) == ["completed"] * 3, workflow_id
    assert sg.stats()["graph"]["dropped"] == 0
    # the graph written before the outage survived the restart (append-only file)
    assert len(queries.workflows(store, project_id=sg.settings.project)) == 8


@contextlib.contextmanager
def _refusing_writes(client: redis.Redis, why: str) -> Iterator[None]:
    """The server refuses writes while inside: ``disk``, its snapshot cannot be saved
    (``MISCONF``, as on a full disk: PING is refused too); ``memory``, it is at its
    ``maxmemory`` with ``noeviction`` (``OOM``)."""
    if why == "disk":
        data = Path(client.config_get("dir")["dir"])
        dump = data / client.config_get("dbfilename")["dbfilename"]
        dump.unlink(missing_ok=True)
        (dump / "in-the-way").mkdir(parents=True)  # the snapshot cannot take its place
        save = client.config_get("save")["save"]
        client.config_set("save", "3600 1")
        client.bgsave()
        deadline = time.monotonic() + 10
        while client.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, "the snapshot did not fail"
            time.sleep(0.05)
        try:
            yield
        finally:
            shutil.rmtree(dump)
            client.bgsave()
            while client.info("persistence")["rdb_last_bgsave_status"] != "ok":
                time.sleep(0.05)
            client.config_set("save", save)  # (else its stop saves, and waits on that)
    else:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1")
        try:
            yield
        finally:
            client.config_set("maxmemory", "0")


@pytest.mark.slow
@pytest.mark.parametrize("why", ["disk", "memory"])
def test_a_store_that_cannot_take_writes_for_now_is_retried_not_dropped(
    private_servers,
    configured: Callable[..., spangraph.Spangraph],
    caplog: pytest.LogCaptureFixture,
    why: str,
) -> None:
    """A full disk (MISCONF) or memory at its limit (OOM) is a state the server leaves by
    itself: before, each batch it refused was dropped as rejected, with a traceback in
    the program's log each time (hundreds a second), and runs were left open in the
    graph. Now the graph worker retries with backoff, as for a server that went away, and
    writes everything once the server takes writes again."""
    _, info = private_servers.start()
    sg = configured(graph_url=info.graph_url, redis_url=info.redis_url)
    before = run_workflow("before")
    assert spangraph.flush(10)
    client = redis.Redis(port=info.port)
    try:
        with caplog.at_level(logging.WARNING, logger="spangraph"), _refusing_writes(client, why):
            during = [timed_run(f"during-{i}") for i in range(5)]
            deadline = time.monotonic() + 10
            while sg.stats()["graph"]["retries"] == 0:
                assert time.monotonic() < deadline, sg.stats()
                time.sleep(0.02)
        assert sg.graph_processor is not None
        assert sg.graph_processor.force_flush(30_000)
    finally:
        client.close()
    assert sg.stats()["graph"]["dropped"] == 0, sg.stats()
    store = sg.store
    assert isinstance(store, FalkorDBStore)
    for workflow_id in [before, *during]:
        assert span_states(store, workflow_id) == ["completed"] * 3, workflow_id
    said = [r.getMessage() for r in caplog.records if r.name == "spangraph"]
    assert not [m for m in said if "rejected" in m], said
    assert any("cannot take writes now" in m for m in said), said


def test_an_embedded_server_on_a_full_disk_is_named_by_its_home_and_still_read(
    tmp_path: Path, configured: Callable[..., spangraph.Spangraph]
) -> None:
    """A full disk makes Redis refuse even PING (MISCONF): configure() named
    SPANGRAPH_GRAPH_URL, which nobody set, and the CLI could not read the runs already
    written. configure() now names SPANGRAPH_HOME and the server's log; reading works."""
    from spangraph.embedded import EmbeddedServer

    home = tmp_path / "home"
    sg = configured(home=str(home))
    written = run_workflow("before-the-disk-filled")
    assert spangraph.flush(10)
    info = EmbeddedServer(home).status()
    assert info is not None
    client = redis.Redis(port=info.port)
    try:
        with _refusing_writes(client, "disk"):
            with pytest.raises(spangraph.exceptions.ConfigurationError) as refused:
                spangraph.configure(
                    tracer_provider=TracerProvider(), home=str(home), project="again"
                )
            assert refused.value.setting == "SPANGRAPH_HOME"
            assert "MISCONF" in str(refused.value) and "server.log" in str(refused.value)
            env = {**os.environ, "SPANGRAPH_HOME": str(home)}
            env.pop("SPANGRAPH_GRAPH_URL", None)
            listed = subprocess.run(
                [sys.executable, "-m", "spangraph.cli", "query", "workflows", "--json",
                 "--project", sg.settings.project],
                capture_output=True, text=True, env=env, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            assert [w["workflow_id"] for w in json.loads(listed.stdout)] == [written]
            # what `serve`'s /api/health/graph asks: not healthy (writes are refused)
            store = FalkorDBStore.from_url(info.graph_url)
            try:
                with pytest.raises(StoreUnavailableError, match="MISCONF"):
                    store.ping()
            finally:
                store.close()
    finally:
        client.close()
        spangraph.shutdown()
        EmbeddedServer(home).stop()


def _run_and_signal(graph_url: str, project: str, sig: int, *modes: str) -> dict:
    """Run tests/scripts/crash_mid_run.py until READY, send it ``sig``, wait for its end;
    what it printed (its agent, with offload, has exited too)."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "crash_mid_run.py"), graph_url, project, *modes],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the script did not get ready"
        line = proc.stdout.readline()
        assert line.startswith("READY "), line + (proc.stderr.read() if proc.stderr else "")
        ids = json.loads(line[len("READY ") :])
    finally:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    ids["returncode"], ids["stderr"] = proc.returncode, err
    if ids["agent_pid"] is not None:  # offload: the agent sees its input end, and exits
        deadline = time.monotonic() + 10
        while _alive(ids["agent_pid"]):
            assert time.monotonic() < deadline, "the agent outlived the traced process"
            time.sleep(0.05)
    return ids


@pytest.mark.parametrize(
    ("method", "modes"),
    [
        ("fork", []),
        ("fork", ["offload"]),
        ("fork", ["pool"]),
        ("forkserver", []),
        ("forkserver", ["pool", "offload"]),
        ("spawn", []),
    ],
)
def test_what_multiprocessing_children_trace_is_written(
    store: FalkorDBStore, graph_url: str, method: str, modes: list[str]
) -> None:
    """multiprocessing ends the processes it forks with ``os._exit`` (no atexit): what
    they traced was lost, uncounted (``fork`` and ``forkserver``; ``spawn`` exits
    normally). spangraph now shuts down with multiprocessing's own exit function."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    _three_children_written(store, "multiprocessing_children.py", graph_url, method, *modes)


def _three_children_written(store: FalkorDBStore, script: str, graph_url: str, *args: str) -> None:
    """Run ``tests/scripts/<script> GRAPH_URL PROJECT *args`` (three children, each a
    workflow with a step), then check that all six spans were written, completed."""
    project = f"kids-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), graph_url, project, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = store.query(
        "MATCH (s:Span) WHERE s.project_id = $p RETURN s.name AS name, s.state AS state",
        {"p": project},
    )
    assert sorted((r["name"], r["state"]) for r in rows) == sorted(
        [(f"child-{i}", "completed") for i in range(3)]
        + [(f"child-{i}-step", "completed") for i in range(3)]
    )


@pytest.mark.parametrize(
    "modes",
    [["inherit"], ["inherit", "offload"], ["own"], ["pool"], ["initializer"], ["pool", "offload"]],
)
def test_what_billiard_children_trace_is_written(
    store: FalkorDBStore, graph_url: str, modes: list[str]
) -> None:
    """billiard (Celery's process pool) ends its processes with ``os._exit`` and runs
    multiprocessing's exit function there without importing ``multiprocessing.util``
    first: what they traced was lost, uncounted (a Celery worker with
    ``--max-tasks-per-child 1`` wrote 6 runs of 20), also when each configured itself
    (``worker_process_init``)."""
    _three_children_written(store, "billiard_children.py", graph_url, *modes)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "offload"])
def test_killed_process_leaves_running_nodes(
    store: FalkorDBStore, graph_url: str, mode: str
) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    extra = ["offload"] if mode == "offload" else []
    ids = _run_and_signal(graph_url, project, signal.SIGKILL, *extra)
    assert ids["returncode"] == -signal.SIGKILL

    rows = store.query(
        "MATCH (s:Span {workflow_id: $wf}) "
        "RETURN s.span_id AS id, s.name AS name, s.state AS state, s.end_ns AS end_ns, "
        "s.start_ns AS start_ns ORDER BY s.start_ns",
        {"wf": ids["workflow_id"]},
    )
    assert [(r["id"], r["name"], r["state"], r["end_ns"]) for r in rows] == [
        (ids["workflow_span_id"], "doomed-run", "running", None),
        (ids["step_span_id"], "never-ends", "running", None),
    ]
    assert all(isinstance(r["start_ns"], int) for r in rows)
    # the query library reports the run as running
    listed = queries.workflows(store, project_id=project, state="running")
    assert [w["workflow_id"] for w in listed] == [ids["workflow_id"]]
    (root,) = queries.tree(store, ids["workflow_id"])
    assert [(n.name, n.span["state"]) for _, n in root.walk()] == [
        ("doomed-run", "running"), ("never-ends", "running"),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["threads", "offload"])
def test_sigterm_as_documented_ends_the_run_cancelled_and_written(
    store: FalkorDBStore, graph_url: str, mode: str
) -> None:
    """SIGTERM (a container stopped) turned into KeyboardInterrupt, as docs/sdk.md
    shows: the open spans end cancelled and the shutdown at exit writes them."""
    project = f"p-{uuid.uuid4().hex[:8]}"
    extra = ["offload"] if mode == "offload" else []
    ids = _run_and_signal(graph_url, project, signal.SIGTERM, "sigterm", *extra)
    assert ids["returncode"] == -signal.SIGINT, ids["stderr"]  # as for Ctrl-C
    rows = store.query(
        "MATCH (s:Span {workflow_id: $wf}) "
        "RETURN s.name AS name, s.state AS state, s.end_ns IS NOT NULL AS ended "
        "ORDER BY s.start_ns",
        {"wf": ids["workflow_id"]},
    )
    assert [(r["name"], r["state"], r["ended"]) for r in rows] == [
        ("doomed-run", "cancelled", True),
        ("never-ends", "cancelled", True),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "modes", [[], ["offload"], ["child"], ["offload", "child"]],
    ids=["threads", "offload", "child", "offload-child"],
)  # fmt: skip
def test_spans_open_at_a_normal_exit_end_cancelled(
    store: FalkorDBStore, graph_url: str, modes: list[str]
) -> None:
    """A program that exits while spangraph's blocks are open (a daemon thread's, a task
    never finished, a generator never closed), in the main process or in one started by
    multiprocessing: each span is ended ``cancelled`` at exit, the workflows with a
    ``workflow.cancelled`` event saying the program exited, and written. A span of a
    thread that is not a daemon and still works is never ended so (in a child it was
    ended ``cancelled`` while it worked)."""
    project = f"p-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "open_at_exit.py"), graph_url, project, *modes],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = store.query(
        "MATCH (s:Span {project_id: $p}) MATCH (w:Workflow {workflow_id: s.workflow_id}) "
        "RETURN w.name AS run, s.name AS name, s.state AS state, "
        "s.end_ns IS NOT NULL AS ended ORDER BY run, s.start_ns",
        {"p": project},
    )
    # a thread that is not a daemon is its own: waited for before exit handlers by Python
    # (its run completes); in a child before Python 3.13, multiprocessing's finalizers
    # (spangraph's exit among them) run before it is waited for, and its run is left to
    # it: its end comes after spangraph's shutdown, and the run stays `running`, as a
    # killed one would (from 3.13 a child waits for its threads first, as a main process)
    left_to_it = "child" in modes and sys.version_info < (3, 13)
    working = ("running", False) if left_to_it else ("completed", True)
    assert [(r["run"], r["name"], r["state"], r["ended"]) for r in rows] == [
        ("in-a-daemon-thread", "in-a-daemon-thread", "cancelled", True),
        ("in-a-daemon-thread", "blocked", "cancelled", True),
        ("in-a-generator", "in-a-generator", "cancelled", True),
        ("in-a-task", "in-a-task", "cancelled", True),
        ("still-working", "still-working", *working),
    ]
    events = store.query(
        "MATCH (w:Workflow {project_id: $p})-[:HAS_EVENT]->(e:Event "
        "{name: 'workflow.cancelled'}) RETURN w.name AS run, e.attributes AS attributes "
        "ORDER BY run",
        {"p": project},
    )
    assert [(e["run"], json.loads(e["attributes"])["error.type"]) for e in events] == [
        (name, "spangraph.exceptions.ProgramExited")
        for name in ("in-a-daemon-thread", "in-a-generator", "in-a-task")
    ]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_with_idle_executor_threads_exits(
    graph_url: str, method: str, tmp_path: Path
) -> None:
    """A process multiprocessing started, whose code left a ThreadPoolExecutor's threads
    idle: its exit hung for ever when spangraph's finalizer waited for them (they end
    only when Python's own thread shutdown, after the finalizers, tells them to)."""
    code = f"""
import concurrent.futures, multiprocessing, sys
from opentelemetry.sdk.trace import TracerProvider
import spangraph

POOL = None

def work():
    global POOL
    spangraph.configure(tracer_provider=TracerProvider(), graph_url={graph_url!r},
                        redis_url="off", project="idle-executor")
    POOL = concurrent.futures.ThreadPoolExecutor(2)
    with spangraph.workflow("with-an-executor"):
        POOL.submit(sum, [1, 2]).result()

if __name__ == "__main__":
    child = multiprocessing.get_context({method!r}).Process(target=work)
    child.start()
    child.join(30)
    sys.exit(0 if child.exitcode == 0 else 1)
"""
    script = tmp_path / "idle_executor.py"  # (spawn imports the main module from a file)
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_full_queue_drops_counts_and_warns(
    private_servers,
    tmp_path: Path,
    configured: Callable[..., spangraph.Spangraph],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="spangraph")
    max_queue = 8
    server, info = private_servers.start()
    sg = configured(
        graph_url=info.graph_url,
        redis_url="off",
        max_queue_size=max_queue,
    )
    server.stop()

    # What the worker can hold while the store is down, besides its full queue: the batch
    # it stages while the sender is busy (up to 8 batches' worth), the one waiting for the
    # sender and the (at most two) the sender holds.
    worker = sg.graph_processor._worker
    held = max_queue + 4 * worker._max_staged
    runs = held  # twice as many items as can be held
    with spangraph.workflow("w"):
        for i in range(runs):
            started = time.perf_counter()
            with spangraph.step(f"s-{i}"):
                pass
            assert time.perf_counter() - started < QUICK_S
    items = 2 * runs + 2  # a start and an end per span, the workflow's too
    stats = sg.stats()["graph"]
    # (the workflow's end is taken past the bound: it ends the run)
    assert stats["dropped"] >= items - held - 1
    assert stats["queued"] <= max_queue + 1
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert drops and drops[0].levelno == logging.WARNING
    assert "queue full" in drops[0].getMessage()

    private_servers.restart_on_port(server, info.port)
    assert spangraph.flush(30) is False  # done, but not everything was written
    assert spangraph.flush(30) is True  # nothing new, nothing lost: all was done
    stats = sg.stats()["graph"]
    assert stats["sent"] + stats["dropped"] == items  # everything accounted for
    assert stats["sent"] > 0
    assert any("available again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_redis_outage_for_live_events(
    private_servers,
    store: FalkorDBStore,
    graph_url: str,
    tmp_path: Path,
    configured: Callable[..., spangraph.Spangraph],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis for live events goes away: user code neither blocks nor raises, the graph
    (another server) still gets everything, live drops are counted; once Redis is back,
    new events are published again over a new connection."""
    caplog.set_level(logging.WARNING, logger="spangraph")
    redis_server, rinfo = private_servers.start("redis-home")
    sg = configured(
        graph_url=graph_url,
        redis_url=rinfo.redis_url,
    )
    run_workflow("warm-up")  # the publisher's connection is open and in use
    assert spangraph.flush(10)
    assert sg.stats()["live"]["sent"] > 0

    redis_server.stop()
    during = [timed_run(f"no-redis-{i}") for i in range(3)]
    deadline = time.monotonic() + 15
    while sg.stats()["live"]["dropped"] == 0:  # given up after give_up_after seconds
        assert time.monotonic() < deadline, sg.stats()
        time.sleep(0.05)
    assert spangraph.flush(30) is False  # done, but live events were dropped
    for workflow_id in during:  # the graph is on another server: unaffected
        assert span_states(store, workflow_id) == ["completed"] * 3
    assert any("unavailable" in r.getMessage() for r in caplog.records)

    private_servers.restart_on_port(redis_server, rinfo.port)
    sent_before = sg.stats()["live"]["sent"]
    client = redis.Redis(port=rinfo.port)
    pubsub = client.pubsub()
    try:
        workflow_id = f"after-{uuid.uuid4()}"
        pubsub.subscribe(workflow_channel(workflow_id))
        confirmation = pubsub.get_message(timeout=5)
        assert confirmation and confirmation["type"] == "subscribe"
        with spangraph.workflow("after-outage", workflow_id=workflow_id):
            spangraph.event("back", ok=True)
        got: list[dict] = []
        deadline = time.monotonic() + 10
        while not got or got[-1]["type"] != "span.ended":
            assert time.monotonic() < deadline, got
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                got.append(json.loads(message["data"]))
        assert [m["type"] for m in got] == [
            "span.started", "workflow.started", "back", "workflow.completed", "span.ended",
        ]  # fmt: skip
        assert [m["seq"] for m in got] == [1, 2, 3, 4, 5]
    finally:
        pubsub.close()
        client.close()
    deadline = time.monotonic() + 5  # counted by the worker just after the publish returns
    while sg.stats()["live"]["sent"] < sent_before + 5:
        assert time.monotonic() < deadline, sg.stats()
        time.sleep(0.02)


def test_configure_with_unreachable_servers_names_the_setting(
    closed_port: int, graph_url: str
) -> None:
    from spangraph.exceptions import ConfigurationError

    provider = TracerProvider()
    try:
        with pytest.raises(ConfigurationError) as err:
            spangraph.configure(
                tracer_provider=provider,
                graph_url=f"falkordb://127.0.0.1:{closed_port}/g",
                redis_url="off",
            )
        assert err.value.setting == "SPANGRAPH_GRAPH_URL"
        with pytest.raises(ConfigurationError) as err:
            spangraph.configure(
                tracer_provider=provider,
                graph_url=graph_url,
                redis_url=f"redis://127.0.0.1:{closed_port}/0",
            )
        assert err.value.setting == "SPANGRAPH_REDIS_URL"
    finally:
        spangraph.shutdown()
        provider.shutdown()


def test_an_embedded_server_that_refuses_writes_names_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded server of a home whose disk is full answers writes with MISCONF: the
    error named SPANGRAPH_GRAPH_URL, a setting nobody had set."""
    from spangraph.exceptions import ConfigurationError, StoreError
    from spangraph.stores.falkordb import FalkorDBStore as Store

    def full(self: Any) -> None:
        raise StoreError("MISCONF Errors writing to the AOF file: No space left on device")

    monkeypatch.setattr(Store, "ensure_schema", full)
    provider = TracerProvider()
    home = tmp_path / "home"
    try:
        with pytest.raises(ConfigurationError) as err:
            spangraph.configure(tracer_provider=provider, home=str(home), redis_url="off")
        assert err.value.setting == "SPANGRAPH_HOME"
        assert "its embedded server (falkordb://127.0.0.1:" in str(err.value)
        assert "No space left on device" in str(err.value)
        assert str(home / "server.log") in str(err.value)
    finally:
        spangraph.shutdown()
        provider.shutdown()
        from spangraph.embedded import EmbeddedServer

        EmbeddedServer(home).stop()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: with its parent gone, it waits
    for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc here: it exists, so it runs
        return True


@pytest.mark.slow
def _back_on_another_port(server: Any, port: int) -> Any:
    """Start the stopped ``server`` while another program holds its ``port``: it comes
    back on a new one."""
    import socket

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        info = server.ensure_running()
    assert info.port != port
    return info


@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "offload"])
@pytest.mark.parametrize("taker", ["a-program", "a-web-server", "another-home"])
def test_embedded_server_back_on_another_port_is_followed(
    tmp_path: Path, configured: Callable[..., spangraph.Spangraph], offload: bool, taker: str
) -> None:
    """The embedded server restarts on a new port when another program took its own in
    the meantime: running programs find it there (server.json) and send what they held.
    When what took the port is another home's embedded server (its own last port, as its
    server.json said), nothing goes there: before, running programs wrote into that
    home's graph and Redis and said all was written (its connections answered, so
    nothing looked for where their own server had gone). When it is a program that
    speaks no Redis and stays there (a web server), its answer to the connection's
    handshake was an error no retry followed: every batch was dropped as rejected."""
    import http.server

    from spangraph.embedded import EmbeddedServer

    home, other_home = tmp_path / "home", tmp_path / "other"
    project = f"moved-{uuid.uuid4().hex[:8]}"
    configured(home=str(home), project=project, offload=offload)
    server, other = EmbeddedServer(home), EmbeddedServer(other_home)
    web: http.server.ThreadingHTTPServer | None = None
    try:
        first = server.status()
        assert first is not None
        before = run_workflow("before-the-move")
        assert spangraph.flush(10)

        assert server.stop()
        if taker == "a-program":
            second = _back_on_another_port(server, first.port)
        elif taker == "a-web-server":
            web = http.server.ThreadingHTTPServer(
                ("127.0.0.1", first.port), http.server.BaseHTTPRequestHandler
            )
            threading.Thread(target=web.serve_forever, daemon=True).start()
            second = server.ensure_running()
            assert second.port != first.port
        else:
            other_home.mkdir()
            (other_home / "server.json").write_text(json.dumps({"port": first.port}))
            assert other.ensure_running().port == first.port
            second = server.ensure_running()
            assert second.port != first.port

        during = timed_run("after-the-move")
        assert spangraph.flush(30)
        store = FalkorDBStore.from_url(second.graph_url)
        try:
            assert span_states(store, before) == ["completed"] * 3  # the data moved along
            assert span_states(store, during) == ["completed"] * 3
        finally:
            store.close()
        after = run_workflow("live-again")
        assert spangraph.flush(10)
        client = redis.Redis(port=second.port)
        try:
            types = [
                json.loads(f[b"data"])["type"]
                for _, f in client.xrange(f"spangraph:stream:{after}")
            ]
        finally:
            client.close()
        assert types[0] == "span.started" and types[-1] == "span.ended"
        assert "workflow.completed" in types
        if taker == "another-home":
            theirs = FalkorDBStore.from_url(f"falkordb://127.0.0.1:{first.port}/spangraph")
            client = redis.Redis(port=first.port)
            try:
                find = "MATCH (s:Span) WHERE s.project_id = $p RETURN count(s) AS n"
                assert sum(r["n"] for r in theirs.query(find, {"p": project})) == 0
                assert client.keys("spangraph:*") == []  # no live events either
            finally:
                theirs.close()
                client.close()
    finally:
        spangraph.shutdown()
        server.stop()
        other.stop()
        if web is not None:
            web.shutdown()
            web.server_close()


SHUTDOWN_GRACE_S = 6.0
"""What shutdown(timeout) may take beyond ``timeout`` on a loaded machine: no thread is
joined past the deadline (a functional bound: without one shared deadline it took 5 s a
processor, one processor after another, and a second's join grace a worker thread)."""


@pytest.mark.slow
def test_shutdown_timeout_is_one_deadline_and_a_dead_store_does_not_starve_live(
    private_servers, tmp_path: Path, configured: Callable[..., spangraph.Spangraph]
) -> None:
    graph_server, graph_info = private_servers.start("graph")
    _, live_info = private_servers.start("live")
    sg = configured(
        graph_url=graph_info.graph_url,
        redis_url=live_info.redis_url,
    )
    graph_server.stop()  # the graph store is gone; Redis is fine
    workflow_id = timed_run("wf-shutdown")

    started = time.monotonic()
    spangraph.shutdown(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + SHUTDOWN_GRACE_S, f"shutdown(timeout=1) took {elapsed:.2f}s"

    stats = sg.stats()
    assert stats["graph"]["dropped"] > 0  # counted, not silent
    assert stats["live"]["dropped"] == 0
    # the live processor flushed side by side with the graph one, not after it
    client = redis.Redis.from_url(live_info.redis_url)
    try:
        names = [
            json.loads(fields[b"data"])["type"]
            for _, fields in client.xrange(f"spangraph:stream:{workflow_id}")
        ]
    finally:
        client.close()
    assert names.count("span.started") == 3 and names.count("span.ended") == 3
    assert "progress" in names


@pytest.mark.slow
def test_offload_shutdown_timeout_bounds_flush_worker_and_agent_together(
    private_servers, tmp_path: Path, configured: Callable[..., spangraph.Spangraph]
) -> None:
    server, info = private_servers.start()
    sg = configured(
        graph_url=info.graph_url,
        redis_url=info.redis_url,
        offload=True,
    )
    assert sg.offload_processor is not None
    agent = sg.offload_processor._agent
    server.stop()
    timed_run("wf-offload-down")
    started = time.monotonic()
    spangraph.shutdown(timeout=1.0)  # the agent cannot write: its flush never comes
    elapsed = time.monotonic() - started
    # before: up to 10 s for the flush, then up to 10 s for the agent to exit
    assert elapsed < 1.0 + SHUTDOWN_GRACE_S, f"shutdown(timeout=1) took {elapsed:.2f}s"
    assert agent is not None and agent.poll() is not None  # the agent is gone


@pytest.mark.slow
@pytest.mark.parametrize("second", ["module", "instance"])
def test_a_second_shutdown_returns_when_the_first_is_done(
    private_servers, configured: Callable[..., spangraph.Spangraph], second: str
) -> None:
    graph_server, graph_info = private_servers.start("graph")
    _, live_info = private_servers.start("live")
    sg = configured(graph_url=graph_info.graph_url, redis_url=live_info.redis_url)
    graph_server.stop()  # the first shutdown waits out its timeout for the graph store
    timed_run("wf-two-shutdowns")
    done: dict[str, float] = {}

    def first() -> None:
        spangraph.shutdown(timeout=1.5)
        done["first"] = time.monotonic()

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.3)
    # e.g. the program's own shutdown in one thread and an atexit or signal handler in
    # another: it must not return while the spans are still being written (before: at once)
    (spangraph.shutdown if second == "module" else sg.shutdown)(timeout=10)
    done["second"] = time.monotonic()
    thread.join(10)
    assert not thread.is_alive()
    assert done["second"] >= done["first"] - 0.05, done
    assert sg.stats()["graph"]["dropped"] > 0  # the work was done once, and counted
    spangraph.shutdown()  # once done, a later call returns at once
    assert time.monotonic() - done["second"] < 1.0


def test_a_shutdown_called_from_inside_a_shutdown_returns_at_once(
    configured: Callable[..., spangraph.Spangraph],
) -> None:
    """A signal handler (or an exit hook) that calls shutdown() while the program's own
    shutdown() runs on the same thread must not wait for it: it cannot finish until the
    handler returns (it waited 6 s, then returned with the work not done)."""
    inner: list[float] = []

    class CallsShutdownWhileShuttingDown(SpanProcessor):
        def shutdown(self) -> None:  # as a signal handler arriving here would
            started = time.monotonic()
            spangraph.shutdown()
            inner.append(time.monotonic() - started)

    sg = configured(graph=False, live=False)
    sg.extra_processors.append(CallsShutdownWhileShuttingDown())
    started = time.monotonic()
    spangraph.shutdown()
    assert inner and inner[0] < 1.0, inner
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "1", True])
def test_shutdown_refuses_a_bad_timeout(timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        spangraph.shutdown(timeout=timeout)  # type: ignore[arg-type]


def _threads_of(sg: spangraph.Spangraph) -> list[threading.Thread]:
    threads = []
    for processor in (sg.graph_processor, sg.live_processor):
        if processor is not None:
            worker = processor._worker
            threads += [t for t in (worker._thread, worker._sender) if t is not None]
    return threads


@pytest.mark.slow
def test_after_shutdown_gives_up_stats_count_what_was_not_written_once(
    private_servers, configured: Callable[..., spangraph.Spangraph]
) -> None:
    """The server hangs (SIGSTOP): shutdown(timeout=1) gives up on workers stuck in a
    write. What they held is counted as dropped when shutdown returns (before: only what
    was still queued; the rest when its socket timed out, seconds later, or never for a
    program that exits); and once the server answers again, nothing is counted twice."""
    _, info = private_servers.start()
    sg = configured(graph_url=info.graph_url, redis_url=info.redis_url)
    run_workflow("warm-up")
    assert spangraph.flush(10)
    warm = sg.stats()
    os.kill(info.pid, signal.SIGSTOP)
    try:
        runs = 50
        for i in range(runs):
            with spangraph.workflow(f"wf-{i}"):
                pass
        time.sleep(0.5)  # the workers are in their writes, and stay there
        spangraph.shutdown(timeout=1.0)
        stats = sg.stats()
        graph, live = stats["graph"], stats["live"]
        assert graph["sent"] == warm["graph"]["sent"]
        assert graph["sent"] + graph["dropped"] == warm["graph"]["sent"] + 2 * runs, stats
        assert live["sent"] == warm["live"]["sent"]
        assert live["dropped"] > 0 and live["queued"] == 0, stats
    finally:
        os.kill(info.pid, signal.SIGCONT)
    for thread in _threads_of(sg):  # the writes get their answers; the workers end
        thread.join(15)
        assert not thread.is_alive(), thread.name
    assert sg.stats() == stats  # nothing counted again, as sent or as dropped


@pytest.mark.slow
def test_a_flush_is_false_when_redis_hangs_past_give_up_after(
    private_servers, graph_url: str, configured: Callable[..., spangraph.Spangraph]
) -> None:
    """Redis hangs (SIGSTOP) longer than the live worker tries a batch: the batch is
    dropped, and spangraph.flush() says so (before: True, the worker had got past it)."""
    _, rinfo = private_servers.start("redis-home")
    sg = configured(graph_url=graph_url, redis_url=rinfo.redis_url)
    run_workflow("warm-up")
    assert spangraph.flush(10)
    os.kill(rinfo.pid, signal.SIGSTOP)
    try:
        run_workflow("while-redis-hangs")
        assert spangraph.flush(30) is False  # within its timeout, but not all written
        live = sg.stats()["live"]
        # one batch, or two if the run was cut in two by the worker's 5 ms gathering
        assert live["dropped"] > 0 and live["failed"] >= 1, live
    finally:
        os.kill(rinfo.pid, signal.SIGCONT)
    run_workflow("after")
    assert spangraph.flush(30) is True  # the next flush covers what came after
    assert sg.stats()["graph"]["dropped"] == 0  # the graph is elsewhere: all written


def test_an_agent_started_after_the_server_moved_finds_it(
    tmp_path: Path, configured: Callable[..., spangraph.Spangraph]
) -> None:
    """The offload agent died while the embedded server was down, and the server came
    back on another port: each new agent was started with the port configure() had
    found, never got through, and nothing more was written."""
    import os
    import signal

    from spangraph.embedded import EmbeddedServer

    home = tmp_path / "home"
    sg = configured(home=str(home), project=f"moved-{uuid.uuid4().hex[:8]}", offload=True)
    server = EmbeddedServer(home)
    try:
        first = server.status()
        assert first is not None and sg.offload_processor is not None
        run_workflow("before-the-move")
        assert spangraph.flush(10)
        assert server.stop()
        agent = sg.offload_processor._agent
        assert agent is not None
        os.kill(agent.pid, signal.SIGKILL)  # (the OOM killer, say)
        agent.wait(10)
        second = _back_on_another_port(server, first.port)
        after = run_workflow("after-the-move")
        assert spangraph.flush(30)
        store = FalkorDBStore.from_url(second.graph_url)
        try:
            assert span_states(store, after) == ["completed"] * 3
        finally:
            store.close()
    finally:
        spangraph.shutdown()
        server.stop()


@pytest.mark.parametrize("kind", ["executor", "pool"])
def test_process_pool_workers_do_not_file_work_under_the_run_they_were_forked_in(
    store: FalkorDBStore, graph_url: str, kind: str
) -> None:
    """A pool's workers, forked while run A was current, kept A's context for every task:
    run B's work was stored as part of run A. A task carries no context: pool workers
    now start with none, while a plain Process started inside a step still nests there."""
    project = f"pool-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "pool_runs.py"), graph_url, project, kind],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.splitlines()[-1])
    rows = store.query(
        "MATCH (s:Span) WHERE s.project_id = $p AND s.name STARTS WITH 'work-' "
        "RETURN s.name AS name, s.workflow_id AS wf, s.parent_span_id AS parent, "
        "s.state AS state",
        {"p": project},
    )
    spans = {r["name"]: r for r in rows}
    assert sorted(spans) == ["work-A-0", "work-A-1", "work-B-0", "work-B-1", "work-C"]
    assert all(r["state"] == "completed" for r in rows)
    for name in ("work-A-0", "work-A-1", "work-B-0", "work-B-1"):
        assert spans[name]["wf"] not in (ids["A"], ids["B"]), name  # in no run, not A's
    assert (spans["work-C"]["wf"], spans["work-C"]["parent"]) == (ids["C"], ids["C_step"])


def test_a_pool_task_that_configures_keeps_the_context_it_attached(graph_url: str) -> None:
    """configure() in a process multiprocessing started also cleared the current context
    (the pool-worker reset ran there, not only right after the fork): the task's spans
    left the caller's run."""
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "pool_task_configures.py"), graph_url, "pool-cfg"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout.splitlines()[-1])
    assert ids["before"] == ids["after"] == ids["caller"]
