"""Runs across services (``configure(propagate=True)``): a run's ids travel in W3C
Baggage to another process, whose spans join the run in the graph and the live stream.
The other service is a real subprocess writing to the same real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import spangraph
from conftest import configure_on
from spangraph import _propagation, _sdk, queries
from spangraph import semconv as sc
from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.exceptions import ConfigurationError
from spangraph.instrument import current_run
from spangraph.processors.live import stream_key
from spangraph.stores import FalkorDBStore
from spangraph.testing import capture

SERVICE = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import context, propagate, trace
    from opentelemetry.sdk.trace import TracerProvider
    import spangraph

    graph_url, redis_url, home, carrier, propagate_on, offload = sys.argv[1:7]
    provider = TracerProvider()
    spangraph.configure(
        tracer_provider=provider, graph_url=graph_url, redis_url=redis_url, home=home,
        project="tool-service", propagate=propagate_on == "1", offload=offload == "1",
    )
    # what a server instrumentation does with a request's headers
    token = context.attach(propagate.extract(json.loads(carrier)))
    try:
        with provider.get_tracer("web").start_as_current_span("GET /search"):
            with spangraph.step("search-index"):
                spangraph.event("hits", n=3)
    finally:
        context.detach(token)
    assert spangraph.flush(10)
    spangraph.shutdown()
    """
)


@pytest.fixture
def configured(
    provider: TracerProvider, graph_url: str, embedded_server: ServerInfo, tmp_path: Path
) -> Iterator[spangraph.Spangraph]:
    yield configure_on(provider, graph_url, embedded_server, tmp_path, propagate=True)
    spangraph.shutdown()


def _call_service(
    graph_url: str,
    server: ServerInfo,
    home: Path,
    carrier: dict[str, str],
    on: bool = True,
    offload: bool = False,
) -> None:
    args = [graph_url, server.redis_url, str(home), json.dumps(carrier)]
    args += ["1" if on else "0", "1" if offload else "0"]
    proc = subprocess.run(
        [sys.executable, "-c", SERVICE, *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "offload"])
def test_a_service_called_from_a_run_joins_it_in_the_graph_and_live(
    offload: bool,
    configured: spangraph.Spangraph,
    store: FalkorDBStore,
    graph_url: str,
    embedded_server: ServerInfo,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    with (
        spangraph.workflow("research") as run,
        spangraph.branch("deep") as branch,
        spangraph.step("call-tool") as call,
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # what an HTTP client instrumentation does
        _call_service(graph_url, embedded_server, tmp_path / "b", carrier, offload=offload)
    assert spangraph.flush(10)
    assert "baggage" in carrier and run.workflow_id in carrier["baggage"]

    rows = {
        row["name"]: row
        for row in store.query(
            "MATCH (s:Span {workflow_id: $wf}) RETURN s.name AS name, s.span_id AS id, "
            "s.parent_span_id AS parent, s.branch_id AS branch, s.project_id AS project, "
            "s.execution_id AS execution",
            {"wf": run.workflow_id},
        )
    }
    assert set(rows) == {"research", "deep", "call-tool", "GET /search", "search-index"}
    server_span, step = rows["GET /search"], rows["search-index"]
    assert server_span["parent"] == call.span_id and step["parent"] == server_span["id"]
    for row in (server_span, step):
        assert row["branch"] == branch.branch_id
        assert row["execution"] == run.execution_id
        assert row["project"] == "tool-service"  # the service's own project
    (root,) = queries.tree(store, run.workflow_id)
    assert [n.name for _, n in root.walk()] == [
        "research", "deep", "call-tool", "GET /search", "search-index",
    ]  # fmt: skip
    # the service's live events are in the run's stream, numbered with the run's
    messages = [json.loads(f[b"data"]) for _, f in redis_client.xrange(stream_key(run.workflow_id))]
    hits = [m for m in messages if m["type"] == "hits"]
    assert len(hits) == 1 and hits[0]["name"] == "search-index"
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


class _CopySpangraphBaggage(SpanProcessor):
    """What OpenTelemetry's contrib Baggage span processors do in other languages
    (JavaScript ``@opentelemetry/baggage-span-processor``, Java ``BaggageSpanProcessor``,
    Go ``baggagecopy``), with a ``spangraph.`` key predicate: baggage onto attributes."""

    def on_start(self, span, parent_context=None) -> None:  # type: ignore[no-untyped-def]
        for key, value in baggage.get_all(parent_context).items():
            if key.startswith("spangraph."):
                span.set_attribute(key, str(value))


@pytest.fixture
def serve(graph_url: str, embedded_server: ServerInfo, tmp_path: Path, start_serve: Any) -> str:
    """A real `spangraph serve` on the test's graph: its OTLP endpoint."""
    service = start_serve(
        SPANGRAPH_GRAPH_URL=graph_url,
        SPANGRAPH_REDIS_URL=embedded_server.redis_url,
        SPANGRAPH_HOME=str(tmp_path / "serve"),
    )
    return f"{service.url}/v1/traces"


def test_a_service_in_another_language_joins_through_otlp(
    configured: spangraph.Spangraph, store: FalkorDBStore, serve: str
) -> None:
    """A service whose OpenTelemetry SDK copies the spangraph.* baggage entries onto its
    spans and exports them over OTLP to `spangraph serve` joins the run too (here the
    Python SDK stands in for the other language's)."""
    service = TracerProvider()
    service.add_span_processor(_CopySpangraphBaggage())
    service.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=serve, timeout=10)))
    with spangraph.workflow("research") as run, spangraph.step("call-tool") as call:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        incoming = propagate.extract(carrier)  # the other service, receiving the request
        with service.get_tracer("svc").start_as_current_span("GET /lookup", context=incoming):
            pass
    service.shutdown()
    assert spangraph.flush(10)
    deadline = time.monotonic() + 20
    while True:
        rows = store.query(
            "MATCH (s:Span {name: 'GET /lookup'}) RETURN s.workflow_id AS wf, "
            "s.execution_id AS ex, s.parent_span_id AS parent"
        )
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows == [{"wf": run.workflow_id, "ex": run.execution_id, "parent": call.span_id}]
    (root,) = queries.tree(store, run.workflow_id)
    assert [n.name for _, n in root.walk()] == ["research", "call-tool", "GET /lookup"]


def test_a_service_without_propagate_keeps_to_itself(
    configured: spangraph.Spangraph,
    store: FalkorDBStore,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Path,
) -> None:
    """Both sides must opt in: a service that did not takes no run ids from baggage."""
    with spangraph.workflow("research") as run, spangraph.step("call-tool"):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        _call_service(graph_url, embedded_server, tmp_path / "b", carrier, on=False)
    assert spangraph.flush(10)
    names = [
        r["name"]
        for r in store.query(
            "MATCH (s:Span {workflow_id: $wf}) RETURN s.name AS name", {"wf": run.workflow_id}
        )
    ]
    assert sorted(names) == ["call-tool", "research"]


def test_without_propagate_no_run_ids_leave_the_process() -> None:
    with capture(), spangraph.workflow("private"):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    assert not any(key in carrier.get("baggage", "") for key in _propagation.KEYS)


@pytest.mark.parametrize(
    "bad", ["", "   ", "x" * 1025, "..", ".", " wf", "wf\n", "a\x1b[2Jb", "a\x00b", "\u202e"]
)
@pytest.mark.parametrize("key", [sc.EXECUTION_ID, sc.BRANCH_ID])
def test_baggage_that_is_not_a_run_id_is_ignored(bad: str, key: str) -> None:
    """Baggage comes from whoever sends the service a request: ids the SDK refuses from
    its user (``..`` cannot be opened in the web UI) or with control characters were
    stamped on the service's spans; a bad execution or branch id was dropped and the
    spans joined the run anyway, in the wrong execution or in no branch."""
    ctx = baggage.set_baggage(sc.WORKFLOW_ID, bad)
    assert _propagation.run_ids(ctx) is None
    good = baggage.set_baggage(sc.WORKFLOW_ID, "wf-1")
    assert _propagation.run_ids(good) == {sc.WORKFLOW_ID: "wf-1"}
    assert _propagation.run_ids(baggage.set_baggage(key, bad, good)) is None


def test_a_name_is_not_held_to_the_rules_of_ids() -> None:
    ctx = baggage.set_baggage(sc.WORKFLOW_ID, "wf-1")
    ctx = baggage.set_baggage(sc.WORKFLOW_NAME, "a name\twith a tab", ctx)
    assert _propagation.run_ids(ctx) == {
        sc.WORKFLOW_ID: "wf-1",
        sc.WORKFLOW_NAME: "a name\twith a tab",
    }
    blank_name = baggage.set_baggage(sc.WORKFLOW_NAME, " ", ctx)
    assert _propagation.run_ids(blank_name) == {sc.WORKFLOW_ID: "wf-1"}


@pytest.mark.parametrize("name", [" padded name ", "研究" * 500])
def test_a_name_the_propagator_would_not_carry_leaves_the_ids_going(
    configured: spangraph.Spangraph, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A workflow name with spaces around it, or too long for one entry (4.5 KB
    percent-encoded), kept every id out of baggage: the called services never joined."""
    _propagation._warned = False
    with caplog.at_level("WARNING", logger="spangraph"), spangraph.workflow(name) as run:
        assert _carrier_ids() == {
            sc.WORKFLOW_ID: run.workflow_id,
            sc.EXECUTION_ID: run.execution_id,
        }
    assert "left out of baggage" not in caplog.text


def test_a_run_started_here_replaces_the_ids_that_came_in(configured: spangraph.Spangraph) -> None:
    """A workflow started inside a request from another run is a run of its own: the
    baggage it sends on names it (and no branch of the caller)."""
    incoming = baggage.set_baggage(
        sc.BRANCH_ID, "their-branch", baggage.set_baggage(sc.WORKFLOW_ID, "their-run")
    )
    token = otel_context.attach(incoming)
    try:
        assert current_run().workflow_id == "their-run"  # type: ignore[union-attr]
        with spangraph.workflow("mine") as run:
            assert _propagation.run_ids() == {
                sc.WORKFLOW_ID: run.workflow_id,
                sc.EXECUTION_ID: run.execution_id,
                sc.WORKFLOW_NAME: "mine",
            }
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("off", False)])
def test_propagate_setting_from_the_environment(value: str, expected: bool) -> None:
    assert Settings.from_env({"SPANGRAPH_PROPAGATE": value}).propagate is expected


def test_bad_propagate_setting_names_it() -> None:
    with pytest.raises(ConfigurationError, match="SPANGRAPH_PROPAGATE"):
        Settings.from_env({"SPANGRAPH_PROPAGATE": "sometimes"})
    with pytest.raises(ConfigurationError, match="SPANGRAPH_PROPAGATE"):
        Settings(propagate="yes")  # type: ignore[arg-type]


def _sends_run_ids() -> bool:
    with spangraph.workflow("after"):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return any(key in carrier.get("baggage", "") for key in _propagation.KEYS)


def test_no_run_ids_leave_once_the_configuration_is_shut_down(
    configured: spangraph.Spangraph,
) -> None:
    assert _sends_run_ids()
    configured.shutdown()  # the instance's own shutdown, not spangraph.shutdown()
    assert _sdk.current() is None
    assert not _sends_run_ids()


def test_no_run_ids_leave_after_a_configure_that_failed(
    configured: spangraph.Spangraph, closed_port: int, tmp_path: Path
) -> None:
    assert _sends_run_ids()
    with pytest.raises(ConfigurationError):
        spangraph.configure(
            graph_url=f"falkordb://127.0.0.1:{closed_port}",
            live=False,
            home=str(tmp_path / "other"),
            propagate=True,
        )
    # the configuration before it was shut down first: nothing is configured now
    assert _sdk.current() is None
    assert not _sends_run_ids()


def _carrier_ids() -> dict[str, str] | None:
    """The run ids a called service would take from the headers sent now."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return _propagation.run_ids(propagate.extract(carrier))


@pytest.mark.parametrize(
    "ids",
    [
        {"workflow_id": "wf-1", "execution_id": "é" * 1000},  # 9 000 bytes percent-encoded
        # (over the header's 8 192 bytes together: the test after this one)
    ],
)
def test_ids_the_propagator_would_change_or_drop_are_not_sent_at_all(
    configured: spangraph.Spangraph, ids: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a callee could get the workflow id without its execution id (and take the
    workflow id for it), or an id stripped of its spaces."""
    _propagation._warned = False
    ids = dict(ids)
    name = ids.pop("name", "odd")
    with caplog.at_level("WARNING", logger="spangraph"), spangraph.workflow(name, **ids):
        assert _carrier_ids() is None
    assert "left out of baggage" in caplog.text


def test_run_ids_are_left_out_when_the_programs_own_baggage_fills_the_header(
    configured: spangraph.Spangraph,
) -> None:
    ctx = baggage.set_baggage("user.note", "n" * 4000)
    ctx = baggage.set_baggage("user.more", "m" * 3900, ctx)  # 7 930 bytes: 262 left
    token = otel_context.attach(ctx)
    try:
        # the workflow id would fit, and the execution id not
        with spangraph.workflow("crowded", workflow_id="wf-1", execution_id="x" * 300):
            assert _carrier_ids() is None
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            assert "user.note" in carrier["baggage"]  # the program's own still go
        with spangraph.workflow("fits") as run:
            assert _carrier_ids() == {
                sc.WORKFLOW_ID: run.workflow_id,
                sc.EXECUTION_ID: run.execution_id,
                sc.WORKFLOW_NAME: "fits",
            }
    finally:
        otel_context.detach(token)


def test_long_ids_that_fit_are_carried_unchanged(configured: spangraph.Spangraph) -> None:
    wf, ex = "w" * 1024, "é" * 400  # 1 024 and 3 600 bytes in the header
    with spangraph.workflow("long", workflow_id=wf, execution_id=ex):
        assert _carrier_ids() == {sc.WORKFLOW_ID: wf, sc.EXECUTION_ID: ex, sc.WORKFLOW_NAME: "long"}


def test_ids_with_a_lone_surrogate_are_carried_as_stored(configured: spangraph.Spangraph) -> None:
    """A name, id or branch id made from bytes that are not UTF-8 (os.fsdecode) goes in
    baggage as the spans carry it, with U+FFFD (before: UnicodeEncodeError from the
    workflow's start, and its span left running)."""
    odd = os.fsdecode(b"report-\xff.csv")
    with (
        spangraph.workflow(f"ingest {odd}", workflow_id=f"wf-{odd}") as run,
        spangraph.branch("b", branch_id=f"br-{odd}"),
    ):
        ids = _carrier_ids()
    assert ids == {
        sc.WORKFLOW_ID: "wf-report-\ufffd.csv",
        sc.EXECUTION_ID: "wf-report-\ufffd.csv",
        sc.WORKFLOW_NAME: "ingest report-\ufffd.csv",
        sc.BRANCH_ID: "br-report-\ufffd.csv",
    }
    assert spangraph.flush(10)
    [row] = configured.store.query(
        "MATCH (s:Workflow {span_id: $id}) RETURN s.state AS state, s.workflow_id AS wf",
        {"id": run.span_id},
    )
    assert row == {"state": "completed", "wf": ids[sc.WORKFLOW_ID]}


def test_the_programs_own_baggage_with_a_lone_surrogate_leaves_run_ids_going(
    configured: spangraph.Spangraph,
) -> None:
    token = otel_context.attach(baggage.set_baggage("user.file", os.fsdecode(b"\xff")))
    try:
        # (the program's own entry is the propagator's to send: it cannot encode it)
        with spangraph.workflow("with-odd-baggage") as run:
            assert baggage.get_baggage(sc.WORKFLOW_ID) == run.workflow_id
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize("with_baggage", [True, False])
def test_propagate_warns_when_the_propagators_send_no_baggage(
    provider: TracerProvider,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    with_baggage: bool,
) -> None:
    """OTEL_PROPAGATORS=tracecontext: propagate=True carried nothing, silently."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    before = propagate.get_global_textmap()
    chosen = [TraceContextTextMapPropagator()] + ([W3CBaggagePropagator()] if with_baggage else [])
    propagate.set_global_textmap(CompositePropagator(chosen))
    try:
        with caplog.at_level("WARNING", logger="spangraph"):
            configure_on(provider, graph_url, embedded_server, tmp_path, propagate=True)
        warned = "send no baggage header" in caplog.text
        assert warned is not with_baggage, caplog.text
    finally:
        spangraph.shutdown()
        propagate.set_global_textmap(before)
