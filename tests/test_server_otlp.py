"""The OTLP/HTTP receiver (POST /v1/traces) end to end: the app in a real uvicorn server on
a free port, fed by the official OTLPSpanExporter (protobuf, gzip), by hand-made OTLP/JSON
and by broken, oversized and random bodies; spans read back from a real FalkorDB graph and
live events from the session's Redis."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import random
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from spangraph.config import Settings
from spangraph.embedded import ServerInfo
from spangraph.server import create_app
from spangraph.server import ingest as ingest_mod
from spangraph.server.ingest import OTLPIngest, Overloaded
from spangraph.stores import FalkorDBStore, WriteBatch

MiB = 1024 * 1024
PROTO = {"Content-Type": "application/x-protobuf"}
JSON_CT = {"Content-Type": "application/json"}


# -- a real server ----------------------------------------------------------------------------


@dataclass
class Running:
    app: FastAPI
    url: str
    store: FalkorDBStore
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    @property
    def ingest(self) -> OTLPIngest:
        return self.app.state.ingest  # type: ignore[no-any-return]

    def flush(self) -> None:
        assert self.ingest.flush(10), "the ingest pipeline did not flush in time"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def serve(settings: Settings, graph_url: str) -> Iterator[Running]:
    """create_app(settings) in a real uvicorn server (own thread, own event loop)."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    store = FalkorDBStore.from_url(graph_url)
    running = Running(app, f"http://127.0.0.1:{port}", store, server, thread)
    try:
        yield running
    finally:
        if thread.is_alive():
            running.stop()
        sock.close()
        with contextlib.suppress(Exception):
            store.delete_all()
        store.close()


def make_settings(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Path, **extra: Any
) -> Settings:
    return Settings.from_env(
        {},
        graph_url=graph_url,
        redis_url=embedded_server.redis_url,
        home=str(tmp_path),
        **extra,
    )


@pytest.fixture
def running(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> Iterator[Running]:
    with serve(make_settings(graph_url, embedded_server, tmp_path), graph_url) as r:
        yield r


@pytest.fixture
def http(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=30) as client:
        yield client


# -- reading the graph ------------------------------------------------------------------------


def nodes_of(store: FalkorDBStore, trace_id: str) -> dict[str, dict[str, Any]]:
    rows = store.query(
        "MATCH (s:Span {trace_id: $t}) RETURN s AS s, labels(s) AS labels", {"t": trace_id}
    )
    # (not a parent's placeholder, written by a child that arrived first: no name yet)
    return {r["s"]["name"]: {**r["s"], "_labels": sorted(r["labels"])} for r in rows
            if "name" in r["s"]}  # fmt: skip


def edges_of(store: FalkorDBStore, rel: str, trace_id: str) -> set[tuple[str, str]]:
    rows = store.query(
        f"MATCH (a:Span {{trace_id: $t}})-[:{rel}]->(b:Span) RETURN a.name AS a, b.name AS b",
        {"t": trace_id},
    )
    return {(r["a"], r["b"]) for r in rows}


def events_of(store: FalkorDBStore, span_id: str) -> list[dict[str, Any]]:
    return store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.name AS name, e.time_ns AS time_ns, e.attributes AS attributes ORDER BY e.seq",
        {"id": span_id},
    )


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 15.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_for_nodes(running: Running, trace_id: str, names: set[str]) -> dict[str, dict[str, Any]]:
    """Poll the graph until every span of ``names`` is there and has ended."""

    def check() -> dict[str, dict[str, Any]] | None:
        nodes = nodes_of(running.store, trace_id)
        if names <= set(nodes) and all(nodes[n].get("end_ns") for n in names):
            return nodes
        return None

    return wait_for(check, f"spans {sorted(names)} of trace {trace_id}")  # type: ignore[no-any-return]


# -- the client side: the official exporter ---------------------------------------------------


def client_provider(running: Running, *, batch: bool = True, **exporter_kw: Any) -> TracerProvider:
    exporter = OTLPSpanExporter(endpoint=running.traces_url, timeout=10, **exporter_kw)
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "otlp-client", "deployment.environment.name": "otlp-test"}
        )
    )
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    return provider


def make_tree(provider: TracerProvider) -> dict[str, Any]:
    """A small run from "another service": no spangraph ids, a failed grandchild, an event
    and a monitor linked to the step it watches. Returns the SDK's ids, hex."""
    tracer = provider.get_tracer("otlp-test-client", "1.2.3")
    ids: dict[str, Any] = {}
    with tracer.start_as_current_span("otlp-root", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span(
            "child-a",
            attributes={
                "http.request.method": "GET",
                "count": 3,
                "ratio": 0.5,
                "flag": True,
                "tags": ["x", "y"],
                "spangraph.kind": "step",
            },
        ) as child:
            child.add_event("cache.miss", {"key": "k1", "size": 42})
            with tracer.start_as_current_span("grandchild") as grand:
                grand.set_status(Status(StatusCode.ERROR, "boom"))
            ids["grandchild"] = grand.get_span_context().span_id
        with tracer.start_as_current_span(
            "watcher",
            links=[
                Link(child.get_span_context(), {"spangraph.link.type": "monitors"}),
            ],
            attributes={"spangraph.kind": "monitor"},
        ) as watcher:
            pass
    ids["otlp-root"] = root.get_span_context().span_id
    ids["child-a"] = child.get_span_context().span_id
    ids["watcher"] = watcher.get_span_context().span_id
    out = {name: format(sid, "016x") for name, sid in ids.items()}
    out["trace_id"] = format(root.get_span_context().trace_id, "032x")
    return out


TREE_NAMES = {"otlp-root", "child-a", "grandchild", "watcher"}


def assert_tree(running: Running, ids: dict[str, Any]) -> dict[str, dict[str, Any]]:
    trace_id = ids["trace_id"]
    nodes = wait_for_nodes(running, trace_id, TREE_NAMES)
    assert set(nodes) == TREE_NAMES
    for name in TREE_NAMES:
        node = nodes[name]
        assert node["span_id"] == ids[name]
        assert node["trace_id"] == trace_id
        assert node["workflow_id"] == trace_id  # no workflow id: the trace is the run
        assert node["service"] == "otlp-client"
        assert node["env"] == "otlp-test"
        assert node["end_ns"] >= node["start_ns"] > 0
    assert nodes["otlp-root"].get("parent_span_id") is None
    assert nodes["child-a"]["parent_span_id"] == ids["otlp-root"]
    assert nodes["grandchild"]["parent_span_id"] == ids["child-a"]
    assert nodes["grandchild"]["state"] == "failed"
    assert nodes["grandchild"]["status"] == "ERROR"
    assert nodes["grandchild"]["status_message"] == "boom"
    assert {nodes[n]["state"] for n in TREE_NAMES - {"grandchild"}} == {"completed"}
    assert "Step" in nodes["child-a"]["_labels"]
    assert "Monitor" in nodes["watcher"]["_labels"]
    attributes = json.loads(nodes["child-a"]["attributes"])
    assert attributes == {
        "http.request.method": "GET",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "tags": ["x", "y"],
    }
    assert edges_of(running.store, "PARENT_OF", trace_id) == {
        ("otlp-root", "child-a"),
        ("child-a", "grandchild"),
        ("otlp-root", "watcher"),
    }
    assert edges_of(running.store, "MONITORS", trace_id) == {("watcher", "child-a")}
    events = events_of(running.store, ids["child-a"])
    assert [e["name"] for e in events] == ["cache.miss"]
    assert json.loads(events[0]["attributes"]) == {"key": "k1", "size": 42}
    assert events[0]["time_ns"] >= nodes["child-a"]["start_ns"]
    return nodes


def test_children_sent_before_their_parent_join_its_run(running: Running) -> None:
    """An exporter sends each span when it ends: a model call under a step, and what the
    call did, reach the receiver before the step that carries the run's ids. They were
    stored under their trace id as run, outside the run; they now join it once the step
    arrives, options of a decision among them included."""
    from spangraph import queries

    provider = client_provider(running, batch=False)  # one request per span, as it ends
    tracer = provider.get_tracer("other-instrumentation")
    workflow_id = f"wf-late-{uuid.uuid4().hex[:8]}"
    run = {
        "spangraph.workflow.id": workflow_id,
        "spangraph.execution.id": "ex-late",
        "spangraph.branch.id": "main",
    }
    decision = {
        "spangraph.kind": "decision",
        "spangraph.decision.options": ["search", "answer"],
        "spangraph.decision.chosen": "answer",
    }
    with tracer.start_as_current_span(
        "run", attributes={**run, "spangraph.kind": "workflow"}
    ) as root:
        with (
            tracer.start_as_current_span("plan", attributes={**run, "spangraph.kind": "step"}),
            tracer.start_as_current_span(
                "ChatOpenAI", attributes={"openinference.span.kind": "LLM"}
            ),
        ):
            with tracer.start_as_current_span("POST /chat/completions"):
                pass
            with tracer.start_as_current_span("route", attributes=decision):
                pass
        with (
            tracer.start_as_current_span(
                "other-run", attributes={"spangraph.workflow.id": "wf-other"}
            ),
            tracer.start_as_current_span("inside-other"),
        ):
            pass
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")
    names = {"run", "plan", "ChatOpenAI", "POST /chat/completions", "route", "other-run"}
    nodes = wait_for_nodes(running, trace_id, names | {"inside-other"})
    running.flush()
    nodes = nodes_of(running.store, trace_id)
    for name in names - {"other-run"}:
        assert nodes[name]["workflow_id"] == workflow_id, name
        assert nodes[name]["execution_id"] == "ex-late", name
        assert nodes[name]["branch_id"] == "main", name
    # a span with a run of its own keeps it, and so do its children
    assert nodes["other-run"]["workflow_id"] == "wf-other"
    assert nodes["inside-other"]["workflow_id"] == "wf-other"
    # the decision's unexplored option is in the run too
    options = running.store.query(
        "MATCH (:Span {name: 'route', trace_id: $t})-[:OPTION_OF]->(o) "
        "RETURN o.name AS name, o.workflow_id AS workflow_id",
        {"t": trace_id},
    )
    assert {(o["name"], o["workflow_id"]) for o in options} >= {("search", workflow_id)}
    # and the run reads whole: no run named after the trace is left
    in_run = {span["name"] for span in queries.workflow_spans(running.store, workflow_id)}
    assert names - {"other-run"} <= in_run
    assert queries.workflow_spans(running.store, trace_id) == []


def test_the_trace_id_of_a_run_whose_top_span_came_last_names_the_run(
    running: Running, http: httpx.Client, redis_client: redis.Redis
) -> None:
    """Children sent before the span that carries the run's ids were published live on
    their trace's stream. Once the run's span arrives they are the run's: the trace id's
    tree and replay answer 404 naming the run (not the trace's old messages, which the
    run's replay has), and so does a span id."""
    provider = client_provider(running, batch=False)  # one request per span, as it ends
    tracer = provider.get_tracer("other-instrumentation")
    workflow_id = f"wf-late/{uuid.uuid4().hex[:8]}"  # a caller's id, with a slash
    run = {"spangraph.workflow.id": workflow_id, "spangraph.kind": "workflow"}
    with (
        tracer.start_as_current_span("run", attributes=run) as root,
        tracer.start_as_current_span("fetch") as child,
    ):
        child.add_event("retry.scheduled", {"attempt": 1})
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")
    span_id = format(child.get_span_context().span_id, "016x")
    wait_for_nodes(running, trace_id, {"run", "fetch"})
    running.flush()
    assert nodes_of(running.store, trace_id)["fetch"]["workflow_id"] == workflow_id
    # the child's live messages went to the trace's stream, before the run had its id
    wait_for(lambda: redis_client.exists(f"spangraph:stream:{trace_id}"), "the trace's stream")

    for path, kind in (
        (f"/api/workflows/{trace_id}/events", "trace"),
        (f"/api/workflows/{trace_id}/tree", "trace"),
        (f"/api/workflows/{span_id}/tree", "span"),
        (f"/api/workflows/{span_id}/events", "span"),
    ):
        answer = http.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.headers["X-Spangraph-Run"] == "wf-late%2F" + workflow_id[8:], path
        assert answer.headers["X-Spangraph-Id-Kind"] == kind, path
        assert repr(workflow_id) in answer.json()["detail"], path
    # the run's own replay has the child, its event included
    replay = http.get(f"/api/workflows/{quote(workflow_id, safe='')}/events")
    assert replay.status_code == 200
    assert [m["type"] for m in replay.json() if m["name"] == "fetch"] == [
        "span.started",
        "retry.scheduled",
        "span.ended",
    ]
    # an id that names nothing stays an empty replay and a plain 404 tree
    assert http.get("/api/workflows/no-such-run/events").json() == []
    unknown = http.get("/api/workflows/no-such-run/tree")
    assert unknown.status_code == 404 and "X-Spangraph-Run" not in unknown.headers


# -- the official exporter --------------------------------------------------------------------


def test_protobuf_from_the_official_exporter(running: Running) -> None:
    provider = client_provider(running)
    ids = make_tree(provider)
    assert provider.force_flush(10_000)
    provider.shutdown()
    running.flush()
    assert_tree(running, ids)
    stats = running.ingest.stats()
    assert stats["spans_accepted"] == 4
    assert stats["spans_rejected"] == 0
    assert stats["graph"]["dropped"] == 0


def test_gzip_span_by_span(running: Running) -> None:
    """A gzip client that sends each span on its own (children before their parents)."""
    provider = client_provider(running, batch=False, compression=Compression.Gzip)
    ids = make_tree(provider)
    provider.shutdown()
    assert_tree(running, ids)
    assert running.ingest.stats()["requests"] == 4


def test_gzip_and_deflate_bodies(running: Running, http: httpx.Client) -> None:
    doc, ids = json_document()
    body = json.dumps(doc).encode()
    for encoding, data in (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body)[2:-4]),  # raw deflate, as some clients send it
    ):
        r = http.post("/v1/traces", content=data, headers={**JSON_CT, "Content-Encoding": encoding})
        assert r.status_code == 200, (encoding, r.text)
    assert_json_tree(running, ids)


def test_shutdown_writes_what_was_accepted(
    graph_url: str, embedded_server: ServerInfo, tmp_path: Path
) -> None:
    """Spans answered 200 are written even if the server stops right after."""
    with serve(make_settings(graph_url, embedded_server, tmp_path), graph_url) as running:
        provider = client_provider(running)
        ids = make_tree(provider)
        assert provider.force_flush(10_000)
        provider.shutdown()
        running.stop()  # no flush: the lifespan's shutdown must write them
        nodes = nodes_of(running.store, ids["trace_id"])
        assert set(nodes) == TREE_NAMES
        assert all(n["end_ns"] for n in nodes.values())


# -- OTLP/JSON --------------------------------------------------------------------------------


def pb_request(*spans: PbSpan) -> ExportTraceServiceRequest:
    """An OTLP/protobuf request with ``spans`` in one resource and scope."""
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])]
    )


def json_spans(*spans: dict[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON request with ``spans`` in one resource and scope."""
    return {"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}


def json_document() -> tuple[dict[str, Any], dict[str, str]]:
    """An OTLP/JSON request written by hand: hex ids, enums as numbers and names, every
    kind of attribute value, plus one span with an invalid trace id."""
    trace_id = uuid.uuid4().hex
    ids = {
        "trace_id": trace_id,
        "root": uuid.uuid4().hex[:16],
        "tool": uuid.uuid4().hex[:16],
        "judge": uuid.uuid4().hex[:16],
    }
    t0 = time.time_ns()

    def s(v: str) -> dict[str, Any]:
        return {"stringValue": v}

    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": s("json-svc")},
                        {"key": "deployment.environment.name", "value": s("staging")},
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "hand-made", "version": "0.1"},
                        "spans": [
                            {  # a child before its parent, as exporters send them
                                "traceId": ids["trace_id"],
                                "spanId": ids["tool"],
                                "parentSpanId": ids["root"],
                                "name": "tool-call",
                                "kind": "SPAN_KIND_CLIENT",
                                "startTimeUnixNano": str(t0 + 1_000_000),
                                "endTimeUnixNano": str(t0 + 5_000_000),
                                "attributes": [
                                    {"key": "gen_ai.operation.name", "value": s("execute_tool")},
                                    {"key": "gen_ai.tool.name", "value": s("search")},
                                    {"key": "retries", "value": {"intValue": "2"}},
                                    {"key": "big", "value": {"intValue": 9007199254740993}},
                                    {"key": "score", "value": {"doubleValue": 0.25}},
                                    {"key": "ok", "value": {"boolValue": False}},
                                    {
                                        "key": "list",
                                        "value": {
                                            "arrayValue": {
                                                "values": [{"intValue": "1"}, {"intValue": 2}]
                                            }
                                        },
                                    },
                                    {
                                        "key": "map",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [{"key": "a", "value": s("b")}]
                                            }
                                        },
                                    },
                                    {"key": "raw", "value": {"bytesValue": "AQID"}},
                                    {"key": "empty", "value": {}},
                                ],
                                "events": [
                                    {
                                        "timeUnixNano": str(t0 + 2_000_000),
                                        "name": "tool.call",
                                        "attributes": [{"key": "q", "value": s("cats")}],
                                    },
                                    {"timeUnixNano": str(t0 + 4_000_000), "name": "tool.response"},
                                ],
                                "status": {"code": 2, "message": "tool failed"},
                            },
                            {
                                "traceId": ids["trace_id"].upper(),  # hex of either case
                                "spanId": ids["root"],
                                "name": "json-root",
                                "kind": 2,
                                "startTimeUnixNano": t0,
                                "endTimeUnixNano": str(t0 + 9_000_000),
                                "status": {"code": "STATUS_CODE_OK"},
                            },
                            {
                                "traceId": ids["trace_id"],
                                "spanId": ids["judge"],
                                "parentSpanId": ids["root"],
                                "name": "judge",
                                "startTimeUnixNano": str(t0 + 6_000_000),
                                "endTimeUnixNano": str(t0 + 8_000_000),
                                "links": [
                                    {
                                        "traceId": ids["trace_id"],
                                        "spanId": ids["tool"],
                                        "attributes": [
                                            {"key": "spangraph.link.type", "value": s("monitors")}
                                        ],
                                    },
                                    {"traceId": "zz", "spanId": "00"},  # dropped, not fatal
                                ],
                                "someFutureField": {"x": 1},  # unknown fields are ignored
                            },
                            {  # all-zero trace id: rejected alone
                                "traceId": "0" * 32,
                                "spanId": uuid.uuid4().hex[:16],
                                "name": "bad-ids",
                                "startTimeUnixNano": str(t0),
                                "endTimeUnixNano": str(t0 + 1),
                            },
                        ],
                    }
                ],
            }
        ]
    }
    return doc, ids


def assert_json_tree(running: Running, ids: dict[str, str]) -> None:
    trace_id = ids["trace_id"]
    nodes = wait_for_nodes(running, trace_id, {"json-root", "tool-call", "judge"})
    assert "bad-ids" not in nodes
    root, tool, judge = nodes["json-root"], nodes["tool-call"], nodes["judge"]
    assert (root["span_id"], tool["span_id"], judge["span_id"]) == (
        ids["root"],
        ids["tool"],
        ids["judge"],
    )
    assert {n["workflow_id"] for n in nodes.values()} == {trace_id}
    assert (root["service"], root["env"]) == ("json-svc", "staging")
    assert tool["state"] == "failed" and tool["status_message"] == "tool failed"
    assert root["state"] == "completed" and root["status"] == "OK"
    assert tool["kind"] == "tool" and "Tool" in tool["_labels"]
    assert tool["duration_ms"] == 4.0
    attributes = json.loads(tool["attributes"])
    assert attributes["retries"] == 2
    assert attributes["big"] == 9007199254740993
    assert attributes["score"] == 0.25
    assert attributes["ok"] is False
    assert attributes["list"] == [1, 2]
    assert attributes["map"] == {"a": "b"}
    assert attributes["raw"] == "AQID"
    assert "empty" not in attributes
    assert edges_of(running.store, "PARENT_OF", trace_id) == {
        ("json-root", "tool-call"),
        ("json-root", "judge"),
    }
    assert edges_of(running.store, "MONITORS", trace_id) == {("judge", "tool-call")}
    events = events_of(running.store, ids["tool"])
    assert [e["name"] for e in events] == ["tool.call", "tool.response"]
    assert json.loads(events[0]["attributes"]) == {"q": "cats"}


def test_json_by_hand(running: Running, http: httpx.Client) -> None:
    doc, ids = json_document()
    r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "trace_id" in partial["errorMessage"]
    assert_json_tree(running, ids)
    stats = running.ingest.stats()
    assert (stats["spans_accepted"], stats["spans_rejected"], stats["links_dropped"]) == (3, 1, 1)

    # all accepted: an empty response; a JSON charset parameter is fine
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"].pop()
    r = http.post(
        "/v1/traces",
        content=json.dumps(doc),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert (r.status_code, r.json()) == (200, {})


def test_protobuf_partial_success(running: Running, http: httpx.Client) -> None:
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    good = PbSpan(
        trace_id=trace_id,
        span_id=b"\x01" * 8,
        name="good",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10,
        attributes=[KeyValue(key="k", value=AnyValue(string_value="v"))],
    )
    bad = [
        PbSpan(trace_id=trace_id[:15], span_id=b"\x02" * 8, name="short-trace"),
        PbSpan(trace_id=trace_id, span_id=b"\x00" * 8, name="zero-span"),
        PbSpan(trace_id=trace_id, span_id=b"\x03" * 8, parent_span_id=b"\x01", name="bad-parent"),
        PbSpan(trace_id=trace_id, span_id=b"\x04" * 8, start_time_unix_nano=2**64 - 1, name="t"),
    ]
    request = pb_request(good, *bad)
    r = http.post("/v1/traces", content=request.SerializeToString(), headers=PROTO)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    response = ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 4
    assert "short-trace" in response.partial_success.error_message
    nodes = wait_for_nodes(running, trace_id.hex(), {"good"})
    assert set(nodes) == {"good"}
    assert nodes["good"]["span_id"] == "01" * 8

    # everything accepted: an empty ExportTraceServiceResponse; an empty request is fine
    for req in (ExportTraceServiceRequest(resource_spans=request.resource_spans[:0]), request):
        if req is request:
            del req.resource_spans[0].scope_spans[0].spans[1:]
        r = http.post("/v1/traces", content=req.SerializeToString(), headers=PROTO)
        assert (r.status_code, r.content) == (200, b"")


def test_end_before_start_or_missing_ends_at_the_start(
    running: Running, http: httpx.Client, redis_client: redis.Redis
) -> None:
    """A span whose end time is before its start, or not set (0), is kept with its start
    and ends at its start (duration 0); the client is told in partial_success with no
    span rejected. Before, the first was stored with a negative duration_ms (and
    published so), and the second was taken as ending at its start without a word."""
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    spans = [
        PbSpan(
            trace_id=trace_id,
            span_id=b"\x01" * 8,
            name="backwards",
            start_time_unix_nano=t0 + 5_000_000,
            end_time_unix_nano=t0,
            events=[PbSpan.Event(name="e", time_unix_nano=t0 + 1)],
        ),
        PbSpan(
            trace_id=trace_id,
            span_id=b"\x02" * 8,
            parent_span_id=b"\x01" * 8,
            name="unended",
            start_time_unix_nano=t0 + 1_000_000,
        ),
        PbSpan(
            trace_id=trace_id,
            span_id=b"\x03" * 8,
            parent_span_id=b"\x01" * 8,
            name="fine",
            start_time_unix_nano=t0 + 2_000_000,
            end_time_unix_nano=t0 + 4_000_000,
        ),
    ]
    body = pb_request(*spans).SerializeToString()
    r = http.post("/v1/traces", content=body, headers=PROTO)
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 0
    assert partial.error_message == (
        "span 'backwards': end_time_unix_nano is before start_time_unix_nano; "
        "stored as ending at its start (duration 0) (2 spans in all)"
    )
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"backwards", "unended", "fine"})
    backwards, unended, fine = nodes["backwards"], nodes["unended"], nodes["fine"]
    assert (backwards["start_ns"], backwards["end_ns"]) == (t0 + 5_000_000, t0 + 5_000_000)
    assert (unended["start_ns"], unended["end_ns"]) == (t0 + 1_000_000, t0 + 1_000_000)
    assert backwards["duration_ms"] == unended["duration_ms"] == 0
    assert {backwards["state"], unended["state"]} == {"completed"}
    assert (fine["end_ns"], fine["duration_ms"]) == (t0 + 4_000_000, 2.0)
    assert [e["time_ns"] for e in events_of(running.store, "01" * 8)] == [t0 + 1]
    assert running.ingest.stats()["end_times_adjusted"] == 2
    # live subscribers see the same end: at the start, duration 0
    ended = {}
    for _, fields in redis_client.xrange(f"spangraph:stream:{trace_id.hex()}"):
        message = json.loads(fields[b"data"])
        if message["type"] == "span.ended":
            ended[message["name"]] = message
    assert set(ended) == {"backwards", "unended", "fine"}
    assert ended["backwards"]["time_unix_nano"] == t0 + 5_000_000
    assert ended["unended"]["time_unix_nano"] == t0 + 1_000_000
    assert ended["backwards"]["attributes"]["duration_ms"] == 0
    assert ended["unended"]["attributes"]["duration_ms"] == 0

    # OTLP/JSON: a span with no endTimeUnixNano; with a rejected span in the same request
    # the message names the rejection first, then the change
    json_trace = uuid.uuid4().hex
    doc = json_spans(
        {
            "traceId": json_trace,
            "spanId": "04" * 8,
            "name": "no-end",
            "startTimeUnixNano": str(t0),
        },
        {
            "traceId": "0" * 32,
            "spanId": "05" * 8,
            "name": "bad-ids",
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + 1),
        },
    )
    r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    message = partial["errorMessage"]
    assert message.startswith("span 'bad-ids': trace_id is all zero; ")
    assert message.endswith(
        "; span 'no-end': end_time_unix_nano is not set; stored as ending at its start (duration 0)"
    )
    del doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
    assert r.status_code == 200
    assert "rejectedSpans" not in r.json()["partialSuccess"]
    assert "'no-end': end_time_unix_nano is not set" in r.json()["partialSuccess"]["errorMessage"]
    node = wait_for_nodes(running, json_trace, {"no-end"})["no-end"]
    assert (node["start_ns"], node["end_ns"], node["duration_ms"]) == (t0, t0, 0)


# -- live events ------------------------------------------------------------------------------


def test_live_events_for_otlp_spans(running: Running, redis_client: redis.Redis) -> None:
    """OTLP spans without a workflow id are published on their trace's channel."""
    provider = client_provider(running)
    tracer = provider.get_tracer("live-client")
    with tracer.start_as_current_span("live-root") as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        pubsub = redis_client.pubsub()
        pubsub.subscribe(f"spangraph:workflow:{trace_id}")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        with tracer.start_as_current_span("live-child") as child:
            child.add_event("step.started", {"attempt": 1})
    assert provider.force_flush(10_000)
    provider.shutdown()

    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while sum(m["type"] == "span.ended" for m in messages) < 2:
        assert time.monotonic() < deadline, f"live messages missing: {messages}"
        raw = pubsub.get_message(timeout=1)
        if raw and raw["type"] == "message":
            messages.append(json.loads(raw["data"]))
    pubsub.close()

    by_span: dict[str, list[str]] = {}
    for m in messages:
        assert m["workflow_id"] == trace_id
        assert m["trace_id"] == trace_id
        assert m["service"] == "otlp-client"
        by_span.setdefault(m["name"], []).append(m["type"])
    assert by_span["live-child"] == ["span.started", "step.started", "span.ended"]
    assert by_span["live-root"] == ["span.started", "span.ended"]
    # the parent is published first although the exporter sent the child first
    assert messages[0]["name"] == "live-root"
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_span_id_repeated_in_one_request_is_rejected(
    running: Running, http: httpx.Client, redis_client: redis.Redis
) -> None:
    """Two spans with one span_id in one request: the first is kept (graph and live), the
    second is rejected and counted. Before, both went to the processors: the node mixed
    the two, and the first span's live messages came out under the second's name."""
    trace_id, span_id, t0 = uuid.uuid4().hex, uuid.uuid4().hex[:16], time.time_ns()
    pubsub = redis_client.pubsub()
    pubsub.subscribe(f"spangraph:workflow:{trace_id}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]

    def span(name: str, offset: int) -> dict[str, Any]:
        return {
            "traceId": trace_id,
            "spanId": span_id,
            "name": name,
            "startTimeUnixNano": str(t0 + offset),
            "endTimeUnixNano": str(t0 + offset + 1_000_000),
            "events": [{"name": f"{name}.event", "timeUnixNano": str(t0 + offset)}],
        }

    r = http.post(
        "/v1/traces", content=json.dumps(json_spans(span("first", 0), span("second", 5))),
        headers=JSON_CT,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert span_id in partial["errorMessage"] and "more than once" in partial["errorMessage"]
    nodes = wait_for_nodes(running, trace_id, {"first"})
    assert set(nodes) == {"first"} and nodes["first"]["span_id"] == span_id
    assert [e["name"] for e in events_of(running.store, span_id)] == ["first.event"]
    assert running.ingest.stats()["spans_rejected"] == 1

    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while not any(m["type"] == "span.ended" for m in messages):
        assert time.monotonic() < deadline, f"live messages missing: {messages}"
        raw = pubsub.get_message(timeout=1)
        if raw and raw["type"] == "message":
            messages.append(json.loads(raw["data"]))
    while (raw := pubsub.get_message(timeout=0.5)) is not None:  # anything after it
        if raw["type"] == "message":
            messages.append(json.loads(raw["data"]))
    pubsub.close()
    assert [(m["type"], m["name"]) for m in messages] == [
        ("span.started", "first"), ("first.event", "first"), ("span.ended", "first"),
    ], messages  # fmt: skip


def test_a_span_sent_again_is_written_again_but_not_published_again(
    running: Running, http: httpx.Client, redis_client: redis.Redis
) -> None:
    """A Collector retries a request whose answer it lost: the graph took the spans again
    (idempotently), and live subscribers got every message again, under new seq numbers
    (a span.started for a span long ended)."""
    trace_id, span_id, t0 = uuid.uuid4().hex, uuid.uuid4().hex[:16], time.time_ns()
    doc = json_spans(
        {
            "traceId": trace_id,
            "spanId": span_id,
            "name": "sent-twice",
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + 1_000_000),
            "events": [{"name": "sent.event", "timeUnixNano": str(t0)}],
        }
    )
    for _ in range(2):
        r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
        assert r.status_code == 200, r.text
    running.flush()
    assert set(wait_for_nodes(running, trace_id, {"sent-twice"})) == {"sent-twice"}
    assert [e["name"] for e in events_of(running.store, span_id)] == ["sent.event"]
    stream = [
        json.loads(fields[b"data"])
        for _, fields in redis_client.xrange(f"spangraph:stream:{trace_id}")
    ]
    assert [(m["type"], m["seq"]) for m in stream] == [
        ("span.started", 1), ("sent.event", 2), ("span.ended", 3),
    ]  # fmt: skip


# -- refused requests -------------------------------------------------------------------------


def rpc_status(r: httpx.Response) -> status_pb2.Status:
    assert r.headers["content-type"] == "application/x-protobuf"
    return status_pb2.Status.FromString(r.content)


def test_malformed_protobuf_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/traces", content=b"\xff\xff\xff\xff", headers=PROTO)
    assert r.status_code == 400
    assert "protobuf" in rpc_status(r).message


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"resourceSpans": 5}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "x"}]}]}]}',
        b"\xff\xfe\x00",
        b"",
        b"[" * 100_000,
    ],
)
def test_malformed_json_is_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/v1/traces", content=body, headers=JSON_CT)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_other_content_types_are_415(http: httpx.Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post("/v1/traces", content=b"{}", headers=headers)
    assert r.status_code == 415
    assert "Content-Type" in rpc_status(r).message


def test_other_content_encodings_are_415(http: httpx.Client) -> None:
    r = http.post("/v1/traces", content=b"", headers={**PROTO, "Content-Encoding": "br"})
    assert r.status_code == 415


def test_corrupt_gzip_is_400(http: httpx.Client) -> None:
    body = gzip.compress(ExportTraceServiceRequest().SerializeToString() + b"x" * 100)
    for data in (b"not gzip at all", body[:-5], body + b"trailing junk"):
        r = http.post("/v1/traces", content=data, headers={**PROTO, "Content-Encoding": "gzip"})
        assert r.status_code == 400, data


def test_oversized_bodies_are_413(running: Running, http: httpx.Client) -> None:
    big = b"\0" * (16 * MiB + 1)
    # Content-Length over the cap
    r = http.post("/v1/traces", content=big, headers=PROTO)
    assert r.status_code == 413
    assert "limit" in rpc_status(r).message

    # no Content-Length (chunked): the bytes read are counted
    def chunks() -> Iterator[bytes]:
        for _ in range(17):
            yield b"\0" * MiB

    r = http.post("/v1/traces", content=chunks(), headers=PROTO)
    assert r.status_code == 413
    # a gzip bomb: 17 KiB that inflate to 17 MiB
    bomb = gzip.compress(b"\0" * (17 * MiB))
    assert len(bomb) < 100_000
    r = http.post("/v1/traces", content=bomb, headers={**PROTO, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    # a deflate bomb, as JSON
    r = http.post(
        "/v1/traces",
        content=zlib.compress(b" " * (17 * MiB)),
        headers={**JSON_CT, "Content-Encoding": "deflate"},
    )
    assert r.status_code == 413
    assert running.ingest.stats()["requests_refused"][413] == 4
    # the server still answers
    r = http.post("/v1/traces", content=b"", headers=PROTO)
    assert r.status_code == 200


def test_invalid_utf8_costs_no_span(running: Running, http: httpx.Client) -> None:
    """Text that is not UTF-8 (passed on by some senders and Collectors) is read with
    U+FFFD for each bad sequence; before, protobuf refused the whole request (400, so
    every span of the batch was lost)."""
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    marker = "@@@"  # replaced by three bytes of bad UTF-8 once serialized
    odd = PbSpan(
        trace_id=trace_id,
        span_id=b"\x01" * 8,
        name=f"odd{marker}",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10,
        attributes=[
            KeyValue(key=f"k{marker}", value=AnyValue(string_value=f"v{marker}")),
            KeyValue(
                key="nested",
                value=AnyValue(
                    kvlist_value={
                        "values": [KeyValue(key="in", value=AnyValue(string_value=marker))]
                    }
                ),
            ),
        ],
        events=[PbSpan.Event(name=f"ev{marker}", time_unix_nano=t0 + 1)],
    )
    clean = PbSpan(
        trace_id=trace_id,
        span_id=b"\x02" * 8,
        parent_span_id=b"\x01" * 8,
        name="clean",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 5,
    )
    request = pb_request(odd, clean)
    body = request.SerializeToString().replace(marker.encode(), b"\xff\xc3\x28")
    with pytest.raises(DecodeError):  # protobuf 6 and later say "bad UTF-8", 5 does not
        ExportTraceServiceRequest.FromString(body)
    # the same body with three valid bytes there parses: UTF-8 is its only fault
    ExportTraceServiceRequest.FromString(body.replace(b"\xff\xc3\x28", b"abc"))
    r = http.post("/v1/traces", content=body, headers=PROTO)
    assert (r.status_code, r.content) == (200, b"")
    bad = "\ufffd\ufffd("  # 0xff and a cut-short 0xc3, then "("
    nodes = wait_for_nodes(running, trace_id.hex(), {f"odd{bad}", "clean"})
    odd_node = nodes[f"odd{bad}"]
    assert json.loads(odd_node["attributes"]) == {f"k{bad}": f"v{bad}", "nested": {"in": bad}}
    assert [e["name"] for e in events_of(running.store, odd_node["span_id"])] == [f"ev{bad}"]
    assert nodes["clean"]["parent_span_id"] == odd_node["span_id"]

    # OTLP/JSON: lone surrogate escapes, and bytes that are not UTF-8
    json_trace = uuid.uuid4().hex
    doc = json_spans(
        {
            "traceId": json_trace,
            "spanId": "03" * 8,
            "name": "esc\ud800",
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + 1),
            "attributes": [{"key": "k\udfff", "value": {"stringValue": "v\ud83d"}}],
        },
        {
            "traceId": json_trace,
            "spanId": "04" * 8,
            "name": f"raw{marker}",
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + 1),
        },
    )
    raw = json.dumps(doc).encode().replace(marker.encode(), b"\xff\xfe!")
    r = http.post("/v1/traces", content=raw, headers=JSON_CT)
    assert (r.status_code, r.json()) == (200, {})
    nodes = wait_for_nodes(running, json_trace, {"esc\ufffd", "raw\ufffd\ufffd!"})
    assert json.loads(nodes["esc\ufffd"]["attributes"]) == {"k\ufffd": "v\ufffd"}

    # a body that is not protobuf at all is still 400
    r = http.post("/v1/traces", content=b"\x0a\x05ab\xff", headers=PROTO)
    assert r.status_code == 400


def test_counts_are_checked_before_spans_are_built(
    running: Running, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many spans, or a flood of empty resource/scope entries (a few bytes each, or a
    small gzip body), are 413 before any span is built; before, a 16 MiB body was
    converted first (seconds of CPU and hundreds of MB) and then refused, or accepted
    after 20 s of work on millions of empty entries."""
    built: list[int] = []
    real_to_spans = ingest_mod.to_spans

    def to_spans(request: Any, **limits: Any) -> Any:
        built.append(1)
        return real_to_spans(request, **limits)

    monkeypatch.setattr(ingest_mod, "to_spans", to_spans)
    cap = running.ingest.max_spans_per_request
    span = PbSpan(
        trace_id=b"\x0b" * 16, span_id=b"\x01" * 8, start_time_unix_nano=1, end_time_unix_nano=2
    )
    too_many = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span] * (cap + 1))])]
    ).SerializeToString()
    r = http.post("/v1/traces", content=too_many, headers=PROTO)
    assert r.status_code == 413
    assert f"more than {cap} spans" in rpc_status(r).message
    # empty ScopeSpans (2 bytes each) inside one ResourceSpans, gzip-compressed
    inner = b"\x12\x00" * (4 * cap)
    empties = b"\x0a" + _varint(len(inner)) + inner
    r = http.post(
        "/v1/traces",
        content=gzip.compress(empties),
        headers={**PROTO, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 413
    assert "resourceSpans and scopeSpans" in rpc_status(r).message
    # the same as OTLP/JSON
    doc = {"resourceSpans": [{}] * (cap + 1)}
    r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
    assert r.status_code == 413
    assert "resourceSpans and scopeSpans" in r.json()["message"]
    spans_doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{}] * (cap + 1)}]}]}
    r = http.post("/v1/traces", content=json.dumps(spans_doc), headers=JSON_CT)
    assert r.status_code == 413
    assert built == []
    # a few empty entries around real spans are fine
    ok = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(),
            ResourceSpans(scope_spans=[ScopeSpans(), ScopeSpans(spans=[span])]),
        ]
    ).SerializeToString()
    r = http.post("/v1/traces", content=ok, headers=PROTO)
    assert (r.status_code, r.content) == (200, b"")
    assert built == [1]


def one_span_body(name: str = "s", padding: int = 0) -> bytes:
    t0 = time.time_ns()
    span = PbSpan(
        trace_id=uuid.uuid4().bytes,
        span_id=uuid.uuid4().bytes[:8],
        name=name,
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 1000,
        attributes=[KeyValue(key="pad", value=AnyValue(string_value="p" * padding))],
    )
    return pb_request(span).SerializeToString()


def raw_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_body_that_stalls_is_408(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that stopped coming held its connection and its bytes for good."""
    from spangraph.server import otlp

    monkeypatch.setattr(otlp, "BODY_TIMEOUT", 0.5)
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"\x0a" * 10
        )
        answer = raw_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert running.ingest.decode_slots.buffered == 0


def test_a_body_declared_too_large_that_trickles_is_not_waited_for(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the cap by its Content-Length, its 413 waits for the body to be read away
    (so the client reads the answer): that read had no time limit."""
    from spangraph.server import otlp

    monkeypatch.setattr(otlp, "BODY_TIMEOUT", 0.5)
    port = int(running.url.rsplit(":", 1)[1])
    declared = running.ingest.max_body_bytes + 1000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
            + b"\x0a" * 10
        )
        assert raw_answer(sock).startswith(b"HTTP/1.1 413 ")


def test_bytes_held_by_bodies_being_received_are_capped(running: Running) -> None:
    """Bodies were counted only once whole: forty uploads stalled just short of 16 MiB
    held 16 MiB each (656 MB), though the docs promised at most 2 + 8 bodies."""
    slots = running.ingest.decode_slots
    slots.max_buffered = 64 * 1024
    port = int(running.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=running.url, timeout=30) as http:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-protobuf\r\nContent-Length: 1000000\r\n\r\n"
                + b"\x0a"
                * 50_000
            )
            deadline = time.monotonic() + 10
            while slots.buffered < 50_000:
                assert time.monotonic() < deadline, slots.buffered
                time.sleep(0.01)
            refused = http.post("/v1/traces", content=one_span_body(padding=30_000), headers=PROTO)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "busy" in status_pb2.Status.FromString(refused.content).message
        deadline = time.monotonic() + 10
        while slots.buffered:  # the stalled one left: its bytes are given back
            assert time.monotonic() < deadline, slots.buffered
            time.sleep(0.01)
        accepted = http.post("/v1/traces", content=one_span_body(padding=30_000), headers=PROTO)
        assert accepted.status_code == 200
    assert slots.buffered == 0


def test_decoding_does_not_wait_for_the_threads_of_queries(running: Running) -> None:
    """Decodes ran in the thread pool every plain route shares: forty queries stuck on
    the graph store held an OTLP request until they ended."""
    store = running.app.state.store
    release = threading.Event()
    stuck = threading.Semaphore(0)
    real_query = store.query

    def stuck_query(*args: Any, **kwargs: Any) -> Any:
        stuck.release()
        release.wait(60)
        return real_query(*args, **kwargs)

    store.query = stuck_query
    limits = httpx.Limits(max_connections=60)
    with httpx.Client(base_url=running.url, timeout=90, limits=limits) as http:
        queries = [
            threading.Thread(target=http.get, args=("/api/workflows",), daemon=True)
            for _ in range(45)
        ]
        try:
            for thread in queries:
                thread.start()
            for _ in range(40):  # every thread of the shared pool is stuck
                assert stuck.acquire(timeout=30)
            started = time.monotonic()
            answer = http.post("/v1/traces", content=one_span_body(), headers=PROTO, timeout=20)
            assert answer.status_code == 200
            assert time.monotonic() - started < 15  # (before: until the queries ended)
        finally:
            release.set()
            for thread in queries:
                thread.join(60)


def test_requests_are_decoded_a_few_at_a_time(running: Running) -> None:
    """A burst of requests is decoded at most MAX_CONCURRENT_DECODES at a time; the rest
    wait without taking a thread from the pool the query routes run in."""
    ingest = running.ingest
    real_handle = ingest.handle
    release = threading.Event()
    lock = threading.Lock()
    active = peak = 0

    def held_handle(*args: Any) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            release.wait(30)
            return real_handle(*args)
        finally:
            with lock:
                active -= 1

    ingest.handle = held_handle  # type: ignore[method-assign]
    body = ExportTraceServiceRequest().SerializeToString()
    statuses: list[int] = []
    burst = 6  # within MAX_CONCURRENT_DECODES + MAX_WAITING_DECODES: none refused
    with httpx.Client(base_url=running.url, timeout=30) as http:

        def post() -> None:
            statuses.append(http.post("/v1/traces", content=body, headers=PROTO).status_code)

        threads = [threading.Thread(target=post) for _ in range(burst)]
        try:
            for t in threads:
                t.start()
            wait_for(
                lambda: (
                    active == ingest_mod.MAX_CONCURRENT_DECODES
                    and ingest.stats()["decodes_waiting"]
                    == burst - ingest_mod.MAX_CONCURRENT_DECODES
                ),
                "the decode slots to fill and the rest to wait",
            )
            # not stuck behind the burst (it waits as long as the burst is held)
            assert http.get("/api/health", timeout=10).status_code == 200
        finally:
            release.set()
            for t in threads:
                t.join(30)
    assert statuses == [200] * burst
    assert peak == ingest_mod.MAX_CONCURRENT_DECODES


def test_requests_over_the_waiting_cap_are_503(running: Running) -> None:
    """While every decode slot is busy and MAX_WAITING_DECODES requests wait for one, a
    further request is refused at once: 503 with Retry-After and a google.rpc.Status body
    (OTLP exporters retry it), instead of waiting with its body in memory (up to 16 MiB
    each, with no limit on how many). The requests that waited are all accepted."""
    ingest = running.ingest
    real_handle = ingest.handle
    release = threading.Event()
    lock = threading.Lock()
    decoding = 0

    def held_handle(*args: Any) -> Any:
        nonlocal decoding
        with lock:
            decoding += 1
        release.wait(30)
        return real_handle(*args)

    ingest.handle = held_handle  # type: ignore[method-assign]
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()

    def body(i: int) -> bytes:
        span = PbSpan(
            trace_id=trace_id,
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"s{i}",
            start_time_unix_nano=t0,
            end_time_unix_nano=t0 + 1000,
        )
        return pb_request(span).SerializeToString()

    held = ingest_mod.MAX_CONCURRENT_DECODES + ingest_mod.MAX_WAITING_DECODES
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=2 * held)
    with httpx.Client(base_url=running.url, timeout=30, limits=limits) as http:

        def post(i: int) -> None:
            statuses.append(http.post("/v1/traces", content=body(i), headers=PROTO).status_code)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(held)]
        try:
            for t in threads:
                t.start()
            wait_for(
                lambda: (
                    decoding == ingest_mod.MAX_CONCURRENT_DECODES
                    and ingest.stats()["decodes_waiting"] == ingest_mod.MAX_WAITING_DECODES
                ),
                "the decode slots and the waiting places to fill",
            )
            # one more, protobuf and JSON: refused at once, in the request's encoding
            r = http.post("/v1/traces", content=body(held), headers=PROTO, timeout=5)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "2"
            status = rpc_status(r)
            assert status.code == 14  # UNAVAILABLE
            assert "busy" in status.message
            r = http.post("/v1/traces", content=b"{}", headers=JSON_CT, timeout=5)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "2"
            assert r.json()["code"] == 14
            assert "busy" in r.json()["message"]
            assert http.get("/api/health", timeout=5).status_code == 200
            assert decoding == ingest_mod.MAX_CONCURRENT_DECODES
        finally:
            release.set()
            for t in threads:
                t.join(30)
        assert statuses == [200] * held
        # with room again, the next request is taken
        r = http.post("/v1/traces", content=body(held), headers=PROTO)
        assert (r.status_code, r.content) == (200, b"")
    running.flush()
    names = {f"s{i}" for i in range(held + 1)}
    assert set(wait_for_nodes(running, trace_id.hex(), names)) == names
    stats = ingest.stats()
    assert (stats["requests_busy"], stats["decodes_waiting"]) == (2, 0)
    assert stats["requests_refused"] == {503: 2}


def test_attributes_over_the_span_limit_are_cut(running: Running, http: httpx.Client) -> None:
    """A span keeps its first 128 attributes (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT) and
    spangraph's own after them, and the client is told. Before, every attribute was kept:
    ten spans of 250 000 attributes made the run list the web UI reads every 5 s 40 MB."""
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    workflow_id = f"wf-wide-{uuid.uuid4().hex[:8]}"
    attributes = [KeyValue(key=f"a{i}", value=AnyValue(int_value=i)) for i in range(300)]
    attributes[250:250] = [
        KeyValue(key="spangraph.workflow.id", value=AnyValue(string_value=workflow_id)),
        KeyValue(key="spangraph.kind", value=AnyValue(string_value="workflow")),
    ]
    wide = PbSpan(
        trace_id=trace_id, span_id=b"\x03" * 8, name="wide", start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10, attributes=attributes,
    )  # fmt: skip
    r = http.post("/v1/traces", content=pb_request(wide).SerializeToString(), headers=PROTO)
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 0
    assert "kept 130 of its 302 attributes" in partial.error_message
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"wide"})
    kept = json.loads(nodes["wide"]["attributes"])
    # (spangraph's own are node properties, not in the attributes' JSON)
    assert sorted(kept) == sorted(f"a{i}" for i in range(128))
    assert nodes["wide"]["workflow_id"] == workflow_id and nodes["wide"]["kind"] == "workflow"
    assert running.ingest.stats()["attributes_over_limit"] == 300 - 128


def test_events_and_links_over_the_span_limits_are_cut(
    running: Running,
    http: httpx.Client,
    graph_url: str,
    embedded_server: ServerInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A span keeps its last 128 events and last 128 links (the SDK's span limits,
    OTEL_SPAN_EVENT_COUNT_LIMIT / OTEL_SPAN_LINK_COUNT_LIMIT), and the client is told in
    partial_success with no span rejected. Before, every event was kept: one span with
    400 000 events (5.6 MB) made a graph write longer than the store's timeout, which was
    retried over and over while the store answered nothing else, and then dropped with
    the other spans of its batch."""
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    big = PbSpan(
        trace_id=trace_id,
        span_id=b"\x01" * 8,
        name="big",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10_000,
        events=[PbSpan.Event(name=f"e{i}", time_unix_nano=t0 + i) for i in range(2000)],
        links=[
            PbSpan.Link(trace_id=trace_id, span_id=(100 + i).to_bytes(8, "big")) for i in range(300)
        ],
    )
    good = PbSpan(trace_id=trace_id, span_id=b"\x02" * 8, name="good", start_time_unix_nano=t0)
    body = pb_request(big, good).SerializeToString()
    r = http.post("/v1/traces", content=body, headers=PROTO)
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 0
    assert "kept its last 128 of 2000 events" in partial.error_message
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"big", "good"})
    assert set(nodes) >= {"big", "good"}
    events = events_of(running.store, "01" * 8)
    assert [e["name"] for e in events] == [f"e{i}" for i in range(2000 - 128, 2000)]
    stats = running.ingest.stats()
    assert (stats["events_over_limit"], stats["links_over_limit"]) == (2000 - 128, 300 - 128)
    assert stats["graph"]["dropped"] == 0
    # JSON answers the same way
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": uuid.uuid4().hex,
                                "spanId": "03" * 8,
                                "name": "j",
                                "links": [
                                    {"traceId": uuid.uuid4().hex, "spanId": f"{i + 1:016x}"}
                                    for i in range(128)
                                ]
                                + [  # the last: kept, as the Python SDK keeps the last
                                    {
                                        "traceId": uuid.uuid4().hex,
                                        "spanId": "0f" * 8,
                                        "attributes": [
                                            {
                                                "key": "spangraph.link.type",
                                                "value": {"stringValue": "monitors"},
                                            }
                                        ],
                                    }
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    r = http.post("/v1/traces", content=json.dumps(doc), headers=JSON_CT)
    assert r.status_code == 200
    assert "kept its last 128 of 129 links" in r.json()["partialSuccess"]["errorMessage"]
    assert "rejectedSpans" not in r.json()["partialSuccess"]
    running.flush()
    wait_for_nodes(running, doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"], {"j"})
    watched = running.store.query(
        "MATCH (:Span {span_id: $id})-[:MONITORS]->(t:Span) RETURN t.span_id AS id",
        {"id": "03" * 8},
    )
    assert watched == [{"id": "0f" * 8}]

    # the limits follow the SDK's environment variables
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "5")
    settings = make_settings(graph_url, embedded_server, tmp_path)
    with serve(settings, graph_url) as other, httpx.Client(base_url=other.url) as client:
        big.span_id = b"\x04" * 8
        del big.links[:]
        body = pb_request(big).SerializeToString()
        r = client.post("/v1/traces", content=body, headers=PROTO)
        assert r.status_code == 200
        other.flush()
        wait_for_nodes(other, trace_id.hex(), {"big"})
        assert [e["name"] for e in events_of(other.store, "04" * 8)] == [
            f"e{i}" for i in range(1995, 2000)
        ]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_bearer_token(graph_url: str, embedded_server: ServerInfo, tmp_path: Path) -> None:
    settings = make_settings(graph_url, embedded_server, tmp_path, api_token="s3cret")
    with serve(settings, graph_url) as running, httpx.Client(base_url=running.url) as http:
        body = ExportTraceServiceRequest().SerializeToString()
        assert http.post("/v1/traces", content=body, headers=PROTO).status_code == 401
        r = http.post("/v1/traces", content=body, headers={**PROTO, "Authorization": "Bearer nope"})
        assert r.status_code == 401
        r = http.post(
            "/v1/traces", content=body, headers={**PROTO, "Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 200
        # the official exporter with the token
        provider = client_provider(running, headers={"Authorization": "Bearer s3cret"})
        ids = make_tree(provider)
        assert provider.force_flush(10_000)
        provider.shutdown()
        assert_tree(running, ids)


class BlockingStore:
    """A graph store whose writes wait until released (a slow or stuck database)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.written = 0

    def write(self, batch: WriteBatch) -> None:
        self.release.wait(30)
        self.written += sum(len(rows) for rows in batch.ends.values())


def test_full_queue_is_503_and_nothing_is_lost(running: Running, http: httpx.Client) -> None:
    """While the graph cannot keep up, requests are refused whole (503 + Retry-After, the
    client retries) instead of being accepted and dropped."""
    store = BlockingStore()
    small = OTLPIngest(running.app.state.settings, store, None, max_queue_size=8)
    real, running.app.state.ingest = running.app.state.ingest, small
    try:
        spans = [
            PbSpan(
                trace_id=b"\x0a" * 16,
                span_id=i.to_bytes(8, "big"),
                name=f"s{i}",
                start_time_unix_nano=1,
                end_time_unix_nano=2,
            )
            for i in range(1, 4)
        ]
        body = pb_request(*spans).SerializeToString()
        assert http.post("/v1/traces", content=body, headers=PROTO).status_code == 200
        # the worker holds up to a batch while the store blocks; the queue fills up
        deadline = time.monotonic() + 10
        refused = None
        while refused is None:
            r = http.post("/v1/traces", content=body, headers=PROTO)
            if r.status_code == 503:
                refused = r
            else:
                assert r.status_code == 200
                assert time.monotonic() < deadline, "never refused"
        assert refused.headers["retry-after"]
        assert "queue" in rpc_status(refused).message
        # more spans than the queue can ever hold: 413, not a retry loop
        many = pb_request(*spans * 2).SerializeToString()
        assert http.post("/v1/traces", content=many, headers=PROTO).status_code == 413
        accepted = small.stats()["spans_accepted"]
        store.release.set()
        assert small.flush(10)
        assert store.written == accepted
        assert small.stats()["graph"]["dropped"] == 0
    finally:
        store.release.set()
        running.app.state.ingest = real
        small.shutdown()
    with pytest.raises(ingest_mod.IngestClosed):
        small.ingest([object()])  # type: ignore[list-item]


# -- fuzzing ----------------------------------------------------------------------------------


def test_fuzz_never_5xx(running: Running, http: httpx.Client) -> None:
    rng = random.Random(20260101)
    # accepted before the fuzzing
    provider = client_provider(running)
    before = make_tree(provider)
    assert provider.force_flush(10_000)
    provider.shutdown()
    running.flush()
    nodes_before = assert_tree(running, before)

    # a valid body of another trace, to truncate and mutate
    doc, _ = json_document()
    json_body = json.dumps(doc).encode()
    t0 = time.time_ns()
    tid = uuid.uuid4().bytes
    valid = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            PbSpan(
                                trace_id=tid,
                                span_id=rng.randbytes(8),
                                parent_span_id=rng.randbytes(8),
                                name=f"fuzz-{i}",
                                kind=rng.randrange(6),
                                start_time_unix_nano=t0,
                                end_time_unix_nano=t0 + 1000,
                                attributes=[
                                    KeyValue(key="a", value=AnyValue(string_value="x" * i)),
                                    KeyValue(key="n", value=AnyValue(int_value=i)),
                                ],
                                events=[PbSpan.Event(name="e", time_unix_nano=t0)],
                                links=[PbSpan.Link(trace_id=tid, span_id=rng.randbytes(8))],
                            )
                            for i in range(8)
                        ]
                    )
                ]
            )
        ]
    ).SerializeToString()

    bodies: list[tuple[bytes, dict[str, str]]] = []
    for _ in range(250):
        bodies.append((rng.randbytes(rng.randrange(0, 400)), PROTO))
    for cut in sorted(rng.sample(range(len(valid)), 120)):
        bodies.append((valid[:cut], PROTO))
    for _ in range(60):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        bodies.append((bytes(mutated), PROTO))
    for _ in range(40):
        cut = rng.randrange(len(json_body))
        bodies.append((json_body[:cut], JSON_CT))
        mutated = bytearray(json_body)
        mutated[rng.randrange(len(mutated))] = rng.choice(b'{}[]",:0a\\')
        bodies.append((bytes(mutated), JSON_CT))
    for _ in range(30):
        bodies.append((gzip.compress(rng.randbytes(200))[: rng.randrange(1, 60)], PROTO))
    statuses: dict[int, int] = {}
    for body, headers in bodies:
        if body[:2] == b"\x1f\x8b":
            headers = {**headers, "Content-Encoding": "gzip"}
        r = http.post("/v1/traces", content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (r.status_code, body[:80], r.content[:200])
    assert statuses.get(400, 0) > 100 and statuses.get(200, 0) > 0

    # the server still takes a valid request, and nothing accepted before is lost
    provider = client_provider(running)
    after = make_tree(provider)
    assert provider.force_flush(10_000)
    provider.shutdown()
    assert_tree(running, after)
    running.flush()
    again = nodes_of(running.store, before["trace_id"])
    for name, node in nodes_before.items():
        assert again[name]["span_id"] == node["span_id"]
        assert again[name]["state"] == node["state"]
        assert again[name]["end_ns"] == node["end_ns"]
    stats = running.ingest.stats()
    assert stats["graph"]["failed"] == 0, stats
    assert stats["requests_refused"].get(500) is None


# -- decoding units ---------------------------------------------------------------------------


def test_decompress_multi_member_gzip_and_caps() -> None:
    body = gzip.compress(b"abc") + gzip.compress(b"def")
    assert ingest_mod.decompress(body, "gzip") == b"abcdef"
    assert ingest_mod.decompress(b"xyz", "identity") == b"xyz"
    assert ingest_mod.decompress(zlib.compress(b"q" * 100), "deflate", limit=100) == b"q" * 100
    with pytest.raises(ingest_mod.PayloadTooLarge):
        ingest_mod.decompress(zlib.compress(b"q" * 101), "deflate", limit=100)
    with pytest.raises(ingest_mod.PayloadTooLarge):
        ingest_mod.decompress(gzip.compress(b"q" * 60) * 2, "gzip", limit=100)
    with pytest.raises(ingest_mod.BadRequest):
        ingest_mod.decompress(b"", "gzip")
    # a few members are fine; many are refused before the copies of the rest add up
    assert ingest_mod.decompress(gzip.compress(b"x") * 32, "gzip") == b"x" * 32
    many = gzip.compress(b"") * 50_000  # ~1 MiB: 1.6 s of copying before, 2 MiB 13 s
    with pytest.raises(ingest_mod.BadRequest, match="more than 32 members"):
        ingest_mod.decompress(many, "gzip")
    with pytest.raises(ingest_mod.UnsupportedMediaType):
        ingest_mod.decompress(b"", "zstd")


def test_resources_keep_what_is_read_and_are_shared() -> None:
    """Each ResourceSpans became a Resource with all its attributes, and the processors
    keep every Resource they meet: 40 requests with a 10 MB attribute held 400 MB. Now a
    Resource holds service and environment only, one object for the same values."""

    def request(service: str) -> ExportTraceServiceRequest:
        span = PbSpan(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s",
                      start_time_unix_nano=1, end_time_unix_nano=2)  # fmt: skip
        rs = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
        rs.resource.attributes.extend(
            [
                KeyValue(key="service.name", value=AnyValue(string_value=service)),
                KeyValue(key="deployment.environment.name", value=AnyValue(int_value=7)),
                KeyValue(key="big", value=AnyValue(string_value="x" * 1_000_000)),
            ]
        )
        return ExportTraceServiceRequest(resource_spans=[rs])

    [a], [b], [c] = (ingest_mod.to_spans(request(s)).spans for s in ("svc", "svc", "other"))
    assert dict(a.resource.attributes) == {
        "service.name": "svc",
        "deployment.environment.name": "7",
    }
    assert a.resource is b.resource
    assert c.resource is not a.resource
    assert c.resource.attributes["service.name"] == "other"


def test_json_with_both_spellings_of_a_list_is_400() -> None:
    """The span cap counted ``resourceSpans`` while protobuf built ``resource_spans``:
    ``{"resourceSpans": [], "resource_spans": [5 000 000 spans]}`` passed it."""
    span = {"traceId": "01" * 16, "spanId": "02" * 8, "name": "s"}
    scope = {"scopeSpans": [{"spans": [span] * 3}]}
    for document in (
        {"resourceSpans": [], "resource_spans": [scope]},
        {"resourceSpans": [{"scopeSpans": [], "scope_spans": scope["scopeSpans"]}]},
    ):
        with pytest.raises(ingest_mod.BadRequest, match=r"both .* are given"):
            ingest_mod.decode_json(json.dumps(document).encode(), max_spans=2)
    ok = ingest_mod.decode_json(json.dumps({"resource_spans": [scope]}).encode(), max_spans=3)
    assert len(ok.resource_spans[0].scope_spans[0].spans) == 3


def test_json_ids_hex_and_lenient_base64() -> None:
    tid, sid = uuid.uuid4().bytes, b"\x12" * 8
    span = {"traceId": base64.b64encode(tid).decode(), "spanId": sid.hex(), "name": "x"}
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    request = ingest_mod.decode_json(json.dumps(doc).encode())
    decoded = ingest_mod.to_spans(request)
    assert decoded.rejected == 0
    (got,) = decoded.spans
    assert got.context.trace_id == int.from_bytes(tid, "big")
    assert got.context.span_id == int.from_bytes(sid, "big")
    span["spanId"] = "not an id!"
    decoded = ingest_mod.to_spans(ingest_mod.decode_json(json.dumps(doc).encode()))
    assert (decoded.spans, decoded.rejected) == ([], 1)
    assert decoded.error is not None and "span_id is neither hex nor base64" in decoded.error


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("parentSpanId", "not-a-parent-id!", "parent_span_id is neither hex nor base64"),
        ("parentSpanId", "ab" * 4, "parent_span_id has 4 bytes, not 8"),
        ("traceId", "not hex!", "trace_id is neither hex nor base64"),
        ("traceId", "", "trace_id is missing"),
        ("spanId", "ab" * 9, "span_id has 9 bytes, not 8"),
    ],
)
def test_a_bad_json_id_is_rejected_for_what_it_is(field: str, value: str, reason: str) -> None:
    """Before, an id that was not hex was replaced before parsing by an empty id (a parent
    by one zero byte), and the span was rejected as "parent_span_id has 1 bytes"."""
    span = {"traceId": uuid.uuid4().hex, "spanId": "12" * 8, "name": "x", field: value}
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    decoded = ingest_mod.to_spans(ingest_mod.decode_json(json.dumps(doc).encode()))
    assert (decoded.spans, decoded.rejected) == ([], 1)
    assert decoded.error is not None and reason in decoded.error


def test_parents_first_orders_within_a_request() -> None:
    ctx = lambda sid: type("C", (), {"span_id": sid})()  # noqa: E731
    spans = [
        type("S", (), {"context": ctx(3), "parent": ctx(2)})(),
        type("S", (), {"context": ctx(2), "parent": ctx(1)})(),
        type("S", (), {"context": ctx(9), "parent": ctx(8)})(),  # parent elsewhere
        type("S", (), {"context": ctx(1), "parent": None})(),
        type("S", (), {"context": ctx(5), "parent": ctx(6)})(),  # a cycle: kept, any order
        type("S", (), {"context": ctx(6), "parent": ctx(5)})(),
    ]
    ordered = [s.context.span_id for s in ingest_mod.parents_first(spans)]  # type: ignore[arg-type]
    assert sorted(ordered) == [1, 2, 3, 5, 6, 9]
    assert ordered.index(1) < ordered.index(2) < ordered.index(3)


def test_overloaded_is_all_or_nothing(tmp_path: Path) -> None:
    store = BlockingStore()
    ingest = OTLPIngest(Settings.from_env({}, home=str(tmp_path)), store, None, max_queue_size=4)
    try:
        spans = ingest_mod.to_spans(
            ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(
                        scope_spans=[
                            ScopeSpans(
                                spans=[
                                    PbSpan(trace_id=b"\x01" * 16, span_id=bytes([0] * 7 + [i]))
                                    for i in (1, 2, 3)
                                ]
                            )
                        ]
                    )
                ]
            )
        ).spans
        with pytest.raises(ingest_mod.PayloadTooLarge):
            ingest.ingest(spans)  # 6 items can never fit a queue of 4
        assert ingest.ingest(spans[:2]) == 2
        with pytest.raises(Overloaded):  # the first batch is stuck in the store
            wait_for(lambda: ingest.ingest(spans[:2]) and False, "overload", timeout=5)
        assert ingest.stats()["graph"]["dropped"] == 0
    finally:
        store.release.set()
        ingest.shutdown()


def test_mending_walks_only_the_messages_protobuf_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bad string among 200 spans: the field-by-field walk visits the path to it (the
    request, its ResourceSpans and ScopeSpans, the span, the attribute, its value...),
    not the 199 good spans, which protobuf's own parser takes as they are. Strings deeper
    than the parser-checked levels are mended all the same."""
    marker = "@@@"
    deep = AnyValue(string_value=f"deep{marker}")
    for _ in range(12):  # nested kvlists, deeper than the parser-checked levels
        deep = AnyValue(kvlist_value={"values": [KeyValue(key="k", value=deep)]})
    spans = [
        PbSpan(trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"), name=f"s{i}")
        for i in range(1, 201)
    ]
    spans[100].name = f"bad{marker}"
    spans[150].attributes.append(KeyValue(key="nested", value=deep))
    request = pb_request(*spans)
    body = request.SerializeToString().replace(marker.encode(), b"\xff\xfe\xc3")
    walked: list[str] = []
    real = ingest_mod.mend_utf8

    def counting(data: bytes, descriptor: Any, depth: int = 0) -> bytes:
        walked.append(descriptor.name)
        return real(data, descriptor, depth)

    monkeypatch.setattr(ingest_mod, "mend_utf8", counting)
    decoded = ingest_mod.decode_protobuf(body)
    got = decoded.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in got[99:102]] == ["s100", "bad\ufffd\ufffd\ufffd", "s102"]
    value = got[150].attributes[0].value
    for _ in range(12):
        value = value.kvlist_value.values[0].value
    assert value.string_value == "deep\ufffd\ufffd\ufffd"
    assert walked.count("Span") == 2  # the two spans with bad text, of 200
    assert len(walked) < 50, walked  # 5 on the path to each, 3 per level of nesting


def test_option_span_ids_that_are_not_span_ids(running: Running) -> None:
    """``spangraph.decision.option_span_ids`` from another program become node keys only
    when they are span ids (16 hex digits, either case): one holding a control character
    crashed the embedded FalkorDB (signal 11 in its unique index) on every restart, as
    the write was retried."""
    from spangraph import queries
    from spangraph import semconv as sc

    provider = client_provider(running, batch=False)
    tracer = provider.get_tracer("other-program")
    common = {sc.WORKFLOW_ID: "wf-odd-option-ids"}
    with (
        tracer.start_as_current_span("run", attributes={**common, sc.KIND: "workflow"}),
        tracer.start_as_current_span(
            "route", attributes={**common, sc.KIND: "decision"}
        ) as decision,
    ):
        with tracer.start_as_current_span(
            "up", attributes={**common, sc.KIND: "option"}
        ) as explored:
            pass
        upper = format(explored.get_span_context().span_id, "016X")
        decision.set_attributes(
            {
                sc.DECISION_OPTIONS: ["ctrl", "up", "long"],
                sc.DECISION_OPTION_SPAN_IDS: ["x\x01y" * 4, upper, "0" * 17],
            }
        )
    provider.shutdown()
    running.flush()
    running.store.ping()  # the server is up
    [found] = queries.decisions(running.store, "wf-odd-option-ids")
    assert [(o["name"], o["explored"], o["span_id"]) for o in found["options"]] == [
        ("ctrl", False, found["options"][0]["span_id"]),
        ("up", True, upper.lower()),
        ("long", False, found["options"][2]["span_id"]),
    ]
    assert all(len(o["span_id"]) == 16 for o in found["options"])


@pytest.mark.parametrize(("offered", "name"), [("fast", "fast"), (7, "7")])
def test_a_single_option_offered_as_one_value(running: Running, offered: object, name: str) -> None:
    """Another program offering one option as a single value, not an array: one option,
    explored, as the same spans traced in process give (before: the value was dropped
    and the decision offered nothing)."""
    from spangraph import queries
    from spangraph import semconv as sc

    provider = client_provider(running, batch=False)
    tracer = provider.get_tracer("other-program")
    common = {sc.WORKFLOW_ID: f"wf-one-option-{name}"}
    with (
        tracer.start_as_current_span("run", attributes={**common, sc.KIND: "workflow"}),
        tracer.start_as_current_span("route", attributes={**common, sc.KIND: "decision"}) as d,
    ):
        with tracer.start_as_current_span(name, attributes={**common, sc.KIND: "option"}) as o:
            pass
        d.set_attributes(
            {
                sc.DECISION_OPTIONS: offered,
                sc.DECISION_OPTION_SPAN_IDS: format(o.get_span_context().span_id, "016x"),
            }
        )
    provider.shutdown()
    running.flush()
    [found] = queries.decisions(running.store, f"wf-one-option-{name}")
    assert [(x["name"], x["explored"], x["span_id"]) for x in found["options"]] == [
        (name, True, format(o.get_span_context().span_id, "016x"))
    ]
    edges = running.store.query(
        "MATCH (:Decision {span_id: $d})-[r:OPTION_OF]->(o) RETURN o.name AS option",
        {"d": found["span_id"]},
    )
    assert [e["option"] for e in edges] == [name]


def text(key: str, value: str) -> KeyValue:
    """A string attribute of a protobuf span."""
    return KeyValue(key=key, value=AnyValue(string_value=value))


def test_values_that_spread_are_bounded(
    running: Running, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """What one span's data spreads to many places is bounded: an id over MAX_ID_CHARS
    (copied to each span of its run and into Redis keys) rejects its span; service,
    environment and event names are cut like span names; attributes with an empty key
    on a resource or scope are left out, as the SDK would warn once for each (one
    request of 30 000 resources logged 60 000 warnings)."""
    from spangraph._attrs import MAX_VALUE_CHARS
    from spangraph._ids import MAX_ID_CHARS

    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()

    too_long = PbSpan(
        trace_id=trace_id,
        span_id=b"\x01" * 8,
        name="too-long-id",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10,
        attributes=[text("spangraph.workflow.id", "w" * (MAX_ID_CHARS + 1))],
    )
    longest = PbSpan(
        trace_id=trace_id,
        span_id=b"\x02" * 8,
        name="longest-id",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10,
        attributes=[text("spangraph.workflow.id", "w" * MAX_ID_CHARS)],
        events=[PbSpan.Event(name="e" * 100_000, time_unix_nano=t0 + 1)],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[ScopeSpans(spans=[too_long, longest])],
            )
        ]
    )
    rs = request.resource_spans[0]
    rs.resource.attributes.extend(
        [
            text("service.name", "s" * 100_000),
            text("deployment.environment.name", "d" * 100_000),
            text("", "no key"),
        ]
    )
    rs.scope_spans[0].scope.attributes.append(text("", "no key"))
    caplog.set_level(logging.WARNING)
    r = http.post("/v1/traces", content=request.SerializeToString(), headers=PROTO)
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 1
    assert f"spangraph.workflow.id has {MAX_ID_CHARS + 1} characters" in partial.error_message
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"longest-id"})
    assert set(nodes) == {"longest-id"}
    node = nodes["longest-id"]
    assert len(node["workflow_id"]) == MAX_ID_CHARS
    assert len(node["service"]) == len(node["env"]) == MAX_VALUE_CHARS
    assert node["service"].startswith("sss") and "truncated" in node["service"]
    [event] = events_of(running.store, "02" * 8)
    assert len(event["name"]) == MAX_VALUE_CHARS
    assert not [r for r in caplog.records if "invalid" in r.getMessage().lower()]


def test_a_rejected_span_is_not_said_stored_and_a_long_kind_is_no_reason_to_reject(
    running: Running, http: httpx.Client
) -> None:
    """A span rejected for its id, whose end was also before its start, was reported as
    "stored as ending at its start" (and counted among the adjusted ones): it was not
    stored at all. A ``spangraph.kind`` or ``spangraph.state`` over 1 024 characters
    rejected its span, though only the id attributes are bounded (the SDK stores such a
    span, its kind and state unknown: ``span``, and its state from its status)."""
    from spangraph._ids import MAX_ID_CHARS

    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()

    rejected = PbSpan(
        trace_id=trace_id,
        span_id=b"\x01" * 8,
        name="rejected-one",
        start_time_unix_nano=t0 + 10,
        end_time_unix_nano=t0,
        attributes=[text("spangraph.workflow.id", "w" * (MAX_ID_CHARS + 1))],
    )
    long_kind = PbSpan(
        trace_id=trace_id,
        span_id=b"\x02" * 8,
        name="long-kind",
        start_time_unix_nano=t0,
        end_time_unix_nano=t0 + 10,
        attributes=[text("spangraph.kind", "k" * 2000), text("spangraph.state", "s" * 2000)],
    )
    request = pb_request(rejected, long_kind)
    r = http.post("/v1/traces", content=request.SerializeToString(), headers=PROTO)
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 1
    assert "spangraph.workflow.id has" in partial.error_message
    assert "stored as" not in partial.error_message
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"long-kind"})
    assert set(nodes) == {"long-kind"}
    assert (nodes["long-kind"]["kind"], nodes["long-kind"]["state"]) == ("span", "completed")


def test_a_missing_start_time(running: Running, http: httpx.Client) -> None:
    """A span without a start time starts at its end (or, with no end either, when it
    was received), and the client is told (before: it started in 1970, a run of one such
    span spreading over 56 years)."""
    trace_id = uuid.uuid4().bytes
    t0 = time.time_ns()
    no_start = PbSpan(trace_id=trace_id, span_id=b"\x01" * 8, name="no-start",
                      end_time_unix_nano=t0 + 500)  # fmt: skip
    no_times = PbSpan(trace_id=trace_id, span_id=b"\x02" * 8, name="no-times")
    request = pb_request(no_start, no_times)
    r = http.post("/v1/traces", content=request.SerializeToString(), headers=PROTO)
    after = time.time_ns()
    assert r.status_code == 200
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 0
    assert "'no-start': start_time_unix_nano is not set" in partial.error_message
    assert "(2 spans in all)" in partial.error_message
    running.flush()
    nodes = wait_for_nodes(running, trace_id.hex(), {"no-start", "no-times"})
    assert (nodes["no-start"]["start_ns"], nodes["no-start"]["end_ns"]) == (t0 + 500, t0 + 500)
    assert t0 <= nodes["no-times"]["start_ns"] == nodes["no-times"]["end_ns"] <= after


def test_the_receivers_answers_are_declared_in_openapi(http: httpx.Client) -> None:
    """Every status the receiver answers with is in /openapi.json (the 500 of an internal
    error while ingesting was not)."""
    declared = http.get("/openapi.json").json()["paths"]["/v1/traces"]["post"]["responses"]
    assert {"200", "400", "408", "413", "415", "500", "503"} <= set(declared)


def test_json_int_values_no_int64_holds_are_doubles_not_a_refused_batch(
    running: Running, http: httpx.Client
) -> None:
    """OpenTelemetry JS's JSON exporter writes every integral Number as ``intValue``:
    ``2**63`` (``9223372036854776000``) and ``1e21`` made protobuf refuse the whole
    request (400), and every span of the batch was lost (the exporter does not send it
    again). They are the doubles they are; an array's empty item stays, as null."""
    trace_id = uuid.uuid4().hex
    spans = [
        {
            "traceId": trace_id, "spanId": f"{i:016x}", "name": f"span-{i}",
            "startTimeUnixNano": str(time.time_ns()), "endTimeUnixNano": str(time.time_ns()),
            "attributes": attributes,
        }
        for i, attributes in enumerate([
            [{"key": "ok", "value": {"intValue": 7}}],
            [
                {"key": "int64_big", "value": {"intValue": 2**63}},
                {"key": "big_float_int", "value": {"intValue": 1e21}},
                {"key": "half", "value": {"intValue": 2.5}},
                {"key": "as_text", "value": {"intValue": "-9223372036854775808"}},
                {"key": "spaced", "value": {"intValue": " 12"}},  # not protobuf's grammar
                {"key": "whole", "value": {"intValue": 5.0}},  # an int, as when alone
                {"key": "sparse", "value": {"arrayValue": {"values": [
                    {"stringValue": "a"}, {}, {"stringValue": "c"}]}}},
            ],
        ], start=1)
    ]  # fmt: skip
    body = json.dumps(json_spans(*spans)).replace("9223372036854775808,", "9223372036854776000,")
    r = http.post("/v1/traces", content=body, headers=JSON_CT)
    assert (r.status_code, r.json()) == (200, {}), r.text
    nodes = wait_for_nodes(running, trace_id, {"span-1", "span-2"})
    assert json.loads(nodes["span-1"]["attributes"])["ok"] == 7
    attrs = json.loads(nodes["span-2"]["attributes"])
    assert attrs["int64_big"] == 9.223372036854776e18 and attrs["big_float_int"] == 1e21
    assert attrs["half"] == 2.5 and attrs["as_text"] == -(2**63)
    assert attrs["spaced"] == 12 and attrs["whole"] == 5 and isinstance(attrs["whole"], int)
    assert attrs["sparse"] == ["a", None, "c"]


@pytest.mark.parametrize("children_first", [False, True])
def test_a_span_without_a_project_takes_its_parent_s(
    running: Running, http: httpx.Client, children_first: bool
) -> None:
    """A root with ``spangraph.project.id`` and a child with none (another language's
    instrumentation, an OpenTelemetry library under a spangraph step): the child took
    the service's default project, so the run's spans were in two projects. Sent after
    its parent, or before it (then corrected when the parent comes)."""
    trace_id = uuid.uuid4().hex
    now = time.time_ns()

    def span(span_id: str, name: str, parent: str | None, **attrs: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "traceId": trace_id, "spanId": span_id, "name": name,
            "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1000),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()],
        }  # fmt: skip
        if parent:
            out["parentSpanId"] = parent
        return out

    root = span("00000000000000a1", "js-run", None, **{
        "spangraph.kind": "workflow", "spangraph.workflow.id": f"js-{trace_id[:8]}",
        "spangraph.project.id": "polyglot"})  # fmt: skip
    step = span("00000000000000a2", "plan", "00000000000000a1", **{"spangraph.kind": "step"})
    own = span("00000000000000a3", "own", "00000000000000a2", **{"spangraph.project.id": "x"})
    batches = [[step, own], [root]] if children_first else [[root, step, own]]
    for spans in batches:
        r = http.post("/v1/traces", content=json.dumps(json_spans(*spans)), headers=JSON_CT)
        assert r.status_code == 200, r.text
    wait_for(
        lambda: (
            {(n["name"], n["project_id"]) for n in nodes_of(running.store, trace_id).values()}
            == {("js-run", "polyglot"), ("plan", "polyglot"), ("own", "x")}
        ),
        what="the projects",
    )
