"""Neo4jStore: error paths here; the full round trip against a real Neo4j 5 when
NEO4J_URI is set (tests marked ``neo4j``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import spangraph
from spangraph import queries
from spangraph.exceptions import (
    ConfigurationError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from spangraph.stores import WriteBatch
from spangraph.stores.neo4j import Neo4jStore


def _from_reply(code: str, message: str) -> Exception:
    """A server error as the driver makes it from a reply (driver 6 and driver 5)."""
    from neo4j.exceptions import Neo4jError

    hydrate = getattr(Neo4jError, "_hydrate_neo4j", None) or Neo4jError.hydrate
    return hydrate(code=code, message=message)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_relationships_and_paths_come_back_as_the_falkordb_store_gives_them() -> None:
    """Driver values built as the driver builds them from a reply (no server needed)."""
    from neo4j.graph import Graph, Node, Path

    from spangraph.stores.neo4j import _plain

    graph = Graph()
    parent = Node(graph, "4:x:1", 1, ["Span", "Workflow"], {"span_id": "a", "n": [1, 2]})
    child = Node(graph, "4:x:2", 2, ["Span", "Step"], {"span_id": "b"})
    rel = graph.relationship_type("PARENT_OF")(graph, "5:x:1", 1, {"since": 3})
    rel._start_node, rel._end_node = parent, child  # what the driver's hydration sets
    path = Path(parent, rel)
    assert _plain(parent) == {"span_id": "a", "n": [1, 2]}
    assert _plain(rel) == {"type": "PARENT_OF", "properties": {"since": 3}}
    assert _plain([path]) == [
        {
            "nodes": [{"span_id": "a", "n": [1, 2]}, {"span_id": "b"}],
            "relationships": [{"type": "PARENT_OF", "properties": {"since": 3}}],
        }
    ]


def test_unreachable_server_is_unavailable() -> None:
    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="x", connection_timeout=1)
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        store.ping()
    store.close()


def test_an_unreachable_server_fails_writes_queries_and_the_schema_at_once() -> None:
    """The driver's managed transactions retried for 30 s (its default retry time),
    under the worker's own backoff: a write, a query of the API or the schema held its
    caller half a minute (31-34 s each) while Neo4j was down. A functional bound: well
    under that, on any machine."""
    import time

    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="x", connection_timeout=1)
    batch = WriteBatch()
    batch.ends[None] = [{"span_id": "a" * 16, "props": {"name": "x"}}]
    try:
        for call in (lambda: store.write(batch), lambda: store.query("RETURN 1")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="unavailable"):
                call()
            assert time.monotonic() - started < 15.0
    finally:
        store.close()


def test_the_schema_keeps_event_nodes_unique() -> None:
    """MERGE alone keeps (span_id, seq) unique only without concurrent writers (several
    replicas on one database): a uniqueness constraint, after the index that earlier
    versions made on the same properties (which the constraint cannot be made over)."""
    from spangraph.stores.neo4j import DDL

    drop = DDL.index("DROP INDEX spangraph_event_span IF EXISTS")
    create = next(i for i, d in enumerate(DDL) if "spangraph_event_key" in d)
    assert drop < create
    assert "REQUIRE (e.span_id, e.seq) IS UNIQUE" in DDL[create]
    assert not any(d.startswith("CREATE INDEX spangraph_event_span") for d in DDL)


def test_duplicate_events_from_before_leave_the_index_and_say_how_to_mend(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database that holds duplicate Event nodes (written by concurrent replicas
    before) cannot take the uniqueness constraint: every write would fail on the schema.
    The events get the index instead, and the log says how to delete the duplicates.
    (The driver's answer is played by a stand-in: no Neo4j server runs here.)"""
    from spangraph.stores.neo4j import DDL, DEDUPLICATE_EVENTS, EVENT_INDEX

    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="x")
    ran: list[str] = []

    def execute_query(query: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(query.text)
        if "spangraph_event_key" in query.text:
            raise _from_reply(
                "Neo.DatabaseError.Schema.ConstraintCreationFailed",
                "Unable to create Constraint( ... ): Both Node(1) and Node(2) have ...",
            )
        return [], None, None

    monkeypatch.setattr(store._driver, "execute_query", execute_query)
    try:
        with caplog.at_level("WARNING", logger="spangraph.stores.neo4j"):
            store.ensure_schema()
        assert ran == [*DDL, EVENT_INDEX]
        assert store._schema_ready
        assert DEDUPLICATE_EVENTS in caplog.text
    finally:
        store.close()


def test_bad_uri_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        Neo4jStore("neo4j://host:notaport")
    assert info.value.setting == "SPANGRAPH_GRAPH_URL"


@pytest.mark.parametrize(
    "uri", ["neo4j://u:s3cret@127.0.0.1:7687", "bolt://u:s3cret@127.0.0.1:notaport"]
)
def test_errors_never_show_the_password(uri: str) -> None:
    """The driver refuses a password in the URI (NEO4J_PASSWORD holds it) and repeats the
    URI in its message: spangraph's error shows it without the password."""
    with pytest.raises(ConfigurationError) as info:
        Neo4jStore(uri)
    assert "s3cret" not in str(info.value) and "u:***@" in str(info.value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("Neo.ClientError.Transaction.TransactionTimedOut", StoreTimeoutError),
        ("Neo.ClientError.Transaction.TransactionTimedOutClientConfiguration", StoreTimeoutError),
        ("Neo.ClientError.General.TransactionOutOfMemoryError", StoreTimeoutError),
        ("Neo.TransientError.General.MemoryPoolOutOfMemoryError", StoreTimeoutError),
        ("Neo.TransientError.General.OutOfMemoryError", StoreTimeoutError),  # (server heap)
        ("Neo.TransientError.Transaction.DeadlockDetected", StoreUnavailableError),
        # stopped by the server (sent transient; the driver makes them client errors):
        # the batch was dropped
        ("Neo.TransientError.Transaction.Terminated", StoreUnavailableError),
        ("Neo.TransientError.Transaction.LockClientStopped", StoreUnavailableError),
        ("Neo.ClientError.Statement.SyntaxError", StoreError),
    ],
)
def test_server_errors_are_told_apart_as_the_worker_needs(code: str, expected: type) -> None:
    """A transaction the server timed out, or one too big for its memory, was a rejected
    statement (the batch dropped whole) or retried for ever: as a timeout it is retried,
    then split, as on FalkorDB. Driver errors as the driver makes them from a reply."""
    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="secret")
    try:
        error = store._translate(_from_reply(code, "m"), "a write")
        assert type(error) is expected
        assert "secret" not in str(error)
    finally:
        store.close()


def test_a_user_who_may_not_change_the_schema_writes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applications run as users with read and write rights only: their first write
    made the schema, which such a user may not (Forbidden), and every configure() and
    write failed. Now the schema is taken as an administrator's, with a warning that
    lists it; any other schema error still fails."""
    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="secret")
    ran: list[str] = []

    def forbidden(query: Any, **_: Any) -> None:
        ran.append(query.text)
        raise _from_reply("Neo.ClientError.Security.Forbidden", "Schema operations are not allowed")

    try:
        monkeypatch.setattr(store.driver, "execute_query", forbidden)
        with caplog.at_level(logging.WARNING, logger="spangraph"):
            store.ensure_schema()
        assert store._schema_ready and len(ran) == 1  # one refusal says it for all
        said = " ".join(r.getMessage() for r in caplog.records)
        assert "may not change the schema" in said and "spangraph_span_id" in said
        other = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}", password="secret")
        try:
            monkeypatch.setattr(
                other.driver,
                "execute_query",
                lambda query, **_: (_ for _ in ()).throw(
                    _from_reply("Neo.ClientError.Statement.SyntaxError", "bad")
                ),
            )
            with pytest.raises(StoreError, match="rejected the schema"):
                other.ensure_schema()
            assert not other._schema_ready
        finally:
            other.close()
    finally:
        store.close()


def test_an_exhausted_connection_pool_is_a_timeout() -> None:
    """No pooled connection free in time (driver 6 has an error class for it, driver 5 a
    ClientError without a server code) is a timeout: retried, then the batch split; it
    was a StoreError, the batch dropped. Made for real: the one connection is held by a
    query waiting on a server that never answers."""
    from neo4j.exceptions import ClientError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = threading.Event()

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()  # held open, never answered
            accepted.set()
            while conn.recv(4096):  # until the driver gives up and closes
                pass
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    store = Neo4jStore(
        f"bolt://127.0.0.1:{listener.getsockname()[1]}",
        max_connection_pool_size=1,
        ping_timeout=3.0,  # how long the ping holds the one connection
        connection_acquisition_timeout=0.5,  # how long the query waits for it
    )
    errors: dict[str, Exception] = {}

    def run(name: str) -> None:
        try:
            store.ping() if name == "first" else store.query("RETURN 1")
        except Exception as exc:
            errors[name] = exc

    first = threading.Thread(target=run, args=("first",))
    try:
        first.start()
        assert accepted.wait(10)
        run("second")
        first.join(10)
        assert isinstance(errors["second"], StoreTimeoutError), errors
        assert type(errors["first"]) is StoreUnavailableError, errors
        # another driver error without a server code is no timeout
        other = store._translate(ClientError("Explicit Transaction must be handled"), "")
        assert type(other) is StoreError
    finally:
        store.close()
        listener.close()


def test_a_forked_child_gets_a_driver_of_its_own() -> None:
    """The driver knows nothing of fork: a child wrote on the parent's sockets, its
    messages crossed with the parent's."""
    store = Neo4jStore(f"bolt://127.0.0.1:{_closed_port()}")
    parent_driver = store.driver
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        ok = store.driver is not parent_driver and store.driver is store.driver
        store.close()  # leaves the parent's driver alone
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert store.driver is parent_driver
    store.close()


def test_configure_with_unreachable_neo4j_names_the_setting() -> None:
    with pytest.raises(ConfigurationError) as info:
        spangraph.configure(
            tracer_provider=TracerProvider(),
            graph_url=f"bolt://127.0.0.1:{_closed_port()}",
            redis_url="off",
        )
    assert info.value.setting == "SPANGRAPH_GRAPH_URL"


@pytest.fixture
def neo4j_store() -> Iterator[Neo4jStore]:
    store = Neo4jStore(
        os.environ["NEO4J_URI"],
        user=os.environ.get("NEO4J_USER", "neo4j"),
        password=os.environ.get("NEO4J_PASSWORD"),
        database=os.environ.get("NEO4J_DATABASE"),
    )
    store.ensure_schema()
    store.delete_all()
    yield store
    store.delete_all()
    store.close()


def _row(span_id: str, **props: object) -> dict[str, object]:
    return {"span_id": span_id, "props": {"trace_id": "a" * 32, "workflow_id": "wf", **props}}


@pytest.mark.neo4j
def test_neo4j_round_trip_is_idempotent(neo4j_store: Neo4jStore) -> None:
    batch = WriteBatch(
        starts={"Workflow": [_row("0000000000000001", name="w", kind="workflow", start_ns=1)]},
        ends={
            "Step": [
                _row(
                    "0000000000000002",
                    name="s",
                    kind="step",
                    state="completed",
                    start_ns=2,
                    end_ns=3,
                    parent_span_id="0000000000000001",
                )
            ]
        },
        parents=[
            {
                "span_id": "0000000000000002",
                "parent_span_id": "0000000000000001",
                "trace_id": "a" * 32,
                "workflow_id": "wf",
            }
        ],
        events=[
            {
                "span_id": "0000000000000002",
                "seq": 0,
                "name": "step.completed",
                "time_ns": 3,
                "attributes": "{}",
            }
        ],
    )
    neo4j_store.write(batch)
    neo4j_store.write(batch)
    counts = neo4j_store.query(
        "MATCH (s:Span) WITH count(s) AS spans "
        "MATCH (:Span)-[r:PARENT_OF]->(:Span) WITH spans, count(r) AS edges "
        "MATCH (e:Event) RETURN spans, edges, count(e) AS events"
    )
    assert counts == [{"spans": 2, "edges": 1, "events": 1}]
    roots = queries.tree(neo4j_store, "wf")
    assert [r.name for r in roots] == ["w"]
    assert [c.name for c in roots[0].children] == ["s"]
    assert roots[0].span["state"] == "running"
    assert [p["span_id"] for p in queries.path_to_root(neo4j_store, "0000000000000002")] == [
        "0000000000000001",
        "0000000000000002",
    ]


@pytest.mark.neo4j
def test_workflow_through_configure_lands_in_neo4j(neo4j_store: Neo4jStore) -> None:
    project = f"p-{uuid.uuid4().hex[:8]}"
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=os.environ["NEO4J_URI"],
        redis_url="off",
        project=project,
    )
    try:
        with spangraph.workflow("neo4j-run") as run, spangraph.step("one"):
            pass
        assert spangraph.flush(10)
        assert sg.stats()["graph"]["dropped"] == 0
        roots = queries.tree(neo4j_store, run.workflow_id or "")
        assert [(r.name, r.span["state"]) for r in roots] == [("neo4j-run", "completed")]
        assert [c.name for c in roots[0].children] == ["one"]
    finally:
        spangraph.shutdown()


@pytest.mark.neo4j
def test_neo4j_lone_surrogates_do_not_reject_the_batch(neo4j_store: Neo4jStore) -> None:
    """UTF-8 cannot encode a lone surrogate: the batch is written with U+FFFD instead."""
    batch = WriteBatch(
        ends={
            "Step": [
                _row("00000000000000a1", name="bad\udc80name", kind="step", state="completed"),
                _row("00000000000000a2", name="fine", kind="step", state="completed"),
            ]
        }
    )
    neo4j_store.write(batch)
    names = neo4j_store.query(
        "MATCH (s:Span) WHERE s.span_id IN ['00000000000000a1', '00000000000000a2'] "
        "RETURN s.name AS name ORDER BY s.span_id"
    )
    assert names == [{"name": "bad\ufffdname"}, {"name": "fine"}]
    # a look-up with the same text finds it (the parameter is mended the same way)
    found = neo4j_store.query(
        "MATCH (s:Span) WHERE s.name = $name RETURN s.span_id AS id", {"name": "bad\udc80name"}
    )
    assert found == [{"id": "00000000000000a1"}]
