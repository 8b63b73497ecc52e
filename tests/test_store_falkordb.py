"""FalkorDBStore against a real FalkorDB server: schema, idempotent writes, placeholders,
out-of-order rows, exact round trips of awkward text, URLs and errors."""

from __future__ import annotations

import inspect
import json
import time
import uuid
from typing import Any

import pytest
import redis

from spangraph.exceptions import ConfigurationError, StoreError, StoreUnavailableError
from spangraph.stores import FalkorDBStore, WriteBatch
from spangraph.stores.falkordb import DDL

TRACE = "0af7651916cd43dd8448eb211c80319c"
WF = "wf-store-test"


def sid(n: int) -> str:
    return format(n, "016x")


def start_row(span_id: str, name: str, *, parent: str | None = None, **extra: Any) -> dict:
    props = {
        "trace_id": TRACE,
        "workflow_id": WF,
        "project_id": "p",
        "kind": extra.pop("kind", "step"),
        "name": name,
        "start_ns": extra.pop("start_ns", 1_000),
        "attributes": extra.pop("attributes", "{}"),
        **extra,
    }
    if parent:
        props["parent_span_id"] = parent
    return {"span_id": span_id, "props": props}


def end_row(span_id: str, name: str, *, parent: str | None = None, **extra: Any) -> dict:
    row = start_row(span_id, name, parent=parent, **extra)
    row["props"].update(
        {"state": "completed", "status": "OK", "end_ns": 3_000, "duration_ms": 0.002}
    )
    row["props"].update(extra)
    return row


def parent_row(span_id: str, parent: str) -> dict:
    return {"span_id": span_id, "parent_span_id": parent, "trace_id": TRACE, "workflow_id": WF}


def node(store: FalkorDBStore, span_id: str) -> dict[str, Any]:
    rows = store.query(
        "MATCH (s:Span {span_id: $id}) RETURN s AS s, labels(s) AS labels", {"id": span_id}
    )
    assert len(rows) == 1, rows
    return {**rows[0]["s"], "_labels": sorted(rows[0]["labels"])}


def counts(store: FalkorDBStore) -> tuple[int, int, int]:
    nodes = store.query("MATCH (n) RETURN count(n) AS c")[0]["c"]
    edges = store.query("MATCH ()-[r]->() RETURN count(r) AS c")[0]["c"]
    events = store.query("MATCH (e:Event) RETURN count(e) AS c")[0]["c"]
    return nodes, edges, events


def snapshot(store: FalkorDBStore) -> list[Any]:
    """Every node's labels and properties and every edge, in a stable order."""
    nodes = store.query("MATCH (n) RETURN labels(n) AS l, n AS n")
    edges = store.query(
        "MATCH (a)-[r]->(b) RETURN coalesce(a.span_id, '') AS a, type(r) AS t, "
        "coalesce(b.span_id, '') + ':' + coalesce(toString(b.seq), '') AS b"
    )
    return sorted(json.dumps(r, sort_keys=True) for r in nodes + edges)


def sample_batch() -> WriteBatch:
    """A workflow with one finished step (with two events and a retry link) and one
    running step."""
    batch = WriteBatch()
    batch.starts["Workflow"] = [start_row(sid(1), "wf", kind="workflow")]
    batch.starts["Step"] = [start_row(sid(3), "still-running", parent=sid(1))]
    batch.ends["Step"] = [end_row(sid(2), "done", parent=sid(1))]
    batch.parents = [parent_row(sid(2), sid(1)), parent_row(sid(3), sid(1))]
    batch.events = [
        {"span_id": sid(2), "seq": 0, "name": "step.started", "time_ns": 1_000,
         "attributes": '{"attempt":1}'},
        {"span_id": sid(2), "seq": 1, "name": "step.completed", "time_ns": 3_000,
         "attributes": '{"duration_ms":0.002}'},
    ]  # fmt: skip
    batch.links["retry_of"] = [{"span_id": sid(3), "target_span_id": sid(2)}]
    return batch


# -- schema ---------------------------------------------------------------------------------


def test_ensure_schema_is_idempotent(graph_url: str) -> None:
    first = FalkorDBStore.from_url(graph_url)
    second = FalkorDBStore.from_url(graph_url)  # a second process: its own schema flag
    try:
        first.ensure_schema()
        first.ensure_schema()
        second.ensure_schema()  # the indexes and the constraint exist already: no error
        rows = first.query("CALL db.indexes() YIELD label, properties RETURN label, properties")
        indexed = {(row["label"], prop) for row in rows for prop in row["properties"]}
        assert {
            ("Span", "span_id"), ("Span", "workflow_id"), ("Workflow", "execution_id"),
            ("Event", "span_id"),
        } <= indexed  # fmt: skip
        assert len(DDL) == 7
        # the unique constraint on span_id exists: a second node with the same id is refused
        first.execute_many([("CREATE (:Span {span_id: 'dup'})", {})])
        with pytest.raises(StoreError) as err:
            first.execute_many([("CREATE (:Span {span_id: 'dup'})", {})])
        assert not isinstance(err.value, StoreUnavailableError)
    finally:
        first.delete_all()
        first.close()
        second.close()


# -- writes ---------------------------------------------------------------------------------


def test_write_batch(store: FalkorDBStore) -> None:
    store.write(sample_batch())
    wf, done, running = node(store, sid(1)), node(store, sid(2)), node(store, sid(3))
    assert wf["_labels"] == ["Span", "Workflow"] and wf["state"] == "running"
    assert done["_labels"] == ["Span", "Step"]
    assert done["state"] == "completed" and done["end_ns"] == 3_000
    assert running["state"] == "running" and "end_ns" not in running
    children = store.query(
        "MATCH (p:Span {span_id: $id})-[:PARENT_OF]->(c) RETURN c.span_id AS c ORDER BY c",
        {"id": sid(1)},
    )
    assert [r["c"] for r in children] == [sid(2), sid(3)]
    events = store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.seq AS seq, e.name AS name, e.time_ns AS t, e.attributes AS a ORDER BY e.seq",
        {"id": sid(2)},
    )
    assert events == [
        {"seq": 0, "name": "step.started", "t": 1_000, "a": '{"attempt":1}'},
        {"seq": 1, "name": "step.completed", "t": 3_000, "a": '{"duration_ms":0.002}'},
    ]
    retry = store.query("MATCH (a)-[:RETRY_OF]->(b) RETURN a.span_id AS a, b.span_id AS b")
    assert retry == [{"a": sid(3), "b": sid(2)}]
    assert counts(store) == (5, 5, 2)  # 3 spans + 2 events; 2 PARENT_OF, 2 HAS_EVENT, 1 RETRY_OF


def test_relationships_and_paths_come_back_whole(store: FalkorDBStore) -> None:
    """A relationship is its type and properties, a path its nodes and relationships in
    order (before, a relationship was only its properties, ``{}``, and a path a string)."""
    store.write(sample_batch())
    rows = store.query(
        "MATCH p = (w:Span {span_id: $id})-[r:PARENT_OF]->(c:Span {span_id: $child}) "
        "RETURN r AS r, p AS p, [p] AS ps",
        {"id": sid(1), "child": sid(2)},
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["r"] == {"type": "PARENT_OF", "properties": {}}
    assert [n["span_id"] for n in row["p"]["nodes"]] == [sid(1), sid(2)]
    assert row["p"]["relationships"] == [{"type": "PARENT_OF", "properties": {}}]
    assert row["ps"] == [row["p"]]  # inside lists too
    json.dumps(row)  # plain values all the way down
    retry = store.query("MATCH ()-[r:RETRY_OF]->() RETURN r AS r")
    assert [r["r"]["type"] for r in retry] == ["RETRY_OF"]


def test_empty_batch_writes_nothing(store: FalkorDBStore) -> None:
    store.write(WriteBatch())
    assert counts(store) == (0, 0, 0)


def test_replayed_batch_changes_nothing(store: FalkorDBStore) -> None:
    store.write(sample_batch())
    before_counts, before = counts(store), snapshot(store)
    store.write(sample_batch())
    store.write(sample_batch())
    assert counts(store) == before_counts
    assert snapshot(store) == before


def test_rows_repeated_within_one_batch_write_one_node(store: FalkorDBStore) -> None:
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(5), "twice"), start_row(sid(5), "twice")]
    batch.starts[None] = [start_row(sid(6), "plain", kind="span")] * 2
    batch.ends["Step"] = [end_row(sid(7), "ended-twice")] * 2
    batch.parents = [parent_row(sid(7), sid(5))] * 2
    store.write(batch)
    assert counts(store) == (3, 1, 0)
    assert node(store, sid(5))["state"] == "running"
    assert node(store, sid(7))["state"] == "completed"


def test_child_before_parent_creates_placeholder_filled_later(store: FalkorDBStore) -> None:
    child = WriteBatch()
    child.ends["Step"] = [end_row(sid(20), "child", parent=sid(10))]
    child.parents = [parent_row(sid(20), sid(10))]
    store.write(child)

    placeholder = node(store, sid(10))
    assert placeholder["_labels"] == ["Span"]  # no kind label yet
    assert placeholder["trace_id"] == TRACE and placeholder["workflow_id"] == WF
    assert "name" not in placeholder and "state" not in placeholder

    parent_start = WriteBatch()
    parent_start.starts["Workflow"] = [start_row(sid(10), "the-parent", kind="workflow")]
    store.write(parent_start)
    started = node(store, sid(10))
    assert started["_labels"] == ["Span", "Workflow"]
    assert started["name"] == "the-parent" and started["state"] == "running"

    parent_end = WriteBatch()
    parent_end.ends["Workflow"] = [end_row(sid(10), "the-parent", kind="workflow")]
    store.write(parent_end)
    ended = node(store, sid(10))
    assert ended["state"] == "completed" and ended["end_ns"] == 3_000
    # still one node per span and one edge between them
    assert store.query("MATCH (s:Span) RETURN count(s) AS c") == [{"c": 2}]
    assert store.query("MATCH (:Span)-[r:PARENT_OF]->(:Span) RETURN count(r) AS c") == [{"c": 1}]


def test_placeholder_filled_by_end_row_alone(store: FalkorDBStore) -> None:
    """A parent whose start row was lost still gets its final state from its end row."""
    child = WriteBatch()
    child.starts[None] = [start_row(sid(21), "plain-child", kind="span", parent=sid(11))]
    child.parents = [parent_row(sid(21), sid(11))]
    store.write(child)
    assert node(store, sid(21))["_labels"] == ["Span"]  # kind 'span': no kind label
    end = WriteBatch()
    end.ends["Step"] = [end_row(sid(11), "parent")]
    store.write(end)
    filled = node(store, sid(11))
    assert filled["_labels"] == ["Span", "Step"]
    assert filled["state"] == "completed" and filled["name"] == "parent"


def test_start_after_end_keeps_final_state(store: FalkorDBStore) -> None:
    end = WriteBatch()
    end.ends["Step"] = [
        end_row(sid(30), "final-name", attributes='{"final":true}', status_message="ok")
    ]
    store.write(end)
    late_start = WriteBatch()
    late_start.starts["Step"] = [
        start_row(sid(30), "start-name", attributes='{"final":false}', start_ns=999)
    ]
    store.write(late_start)
    got = node(store, sid(30))
    assert got["state"] == "completed"
    assert got["end_ns"] == 3_000
    assert got["name"] == "final-name"
    assert got["attributes"] == '{"final":true}'
    assert got["start_ns"] == 1_000
    assert got["status_message"] == "ok"
    assert got["_labels"] == ["Span", "Step"]


def test_start_and_end_rows_in_one_batch(store: FalkorDBStore) -> None:
    """Starts are written before ends in a batch, so a batch holding both ends completed."""
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(40), "s")]
    batch.ends["Step"] = [end_row(sid(40), "s")]
    store.write(batch)
    assert node(store, sid(40))["state"] == "completed"
    store.write(batch)  # and a replay of it too
    assert node(store, sid(40))["state"] == "completed"


# -- awkward text ---------------------------------------------------------------------------

AWKWARD = [
    "it's",
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    "\\'\\\"",
    "`backtick`",
    "line1\nline2\r\nline3\ttab",
    "MATCH (n) DETACH DELETE n",
    "'}) RETURN 1 //",
    "$rows CYPHER x=1",
    "日本語 ünïcödé",
    "emoji 🚀🧪👩‍💻",
    '{"json": [1, 2]}',
    "",
    " ",
]


@pytest.mark.parametrize("text", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_text_round_trips(store: FalkorDBStore, text: str) -> None:
    attrs = json.dumps({"k": text, text or "empty": [text]}, ensure_ascii=False)
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(50), text, attributes=attrs)]
    batch.ends["Step"] = [
        end_row(sid(51), text, attributes=attrs, status_message=text, service=text, env=text)
    ]
    batch.events = [{"span_id": sid(51), "seq": 0, "name": text, "time_ns": 5, "attributes": attrs}]
    store.write(batch)
    started, ended = node(store, sid(50)), node(store, sid(51))
    assert started["name"] == text
    assert json.loads(started["attributes"]) == json.loads(attrs)
    for key in ("name", "status_message", "service", "env"):
        assert ended[key] == text, key
    assert ended["attributes"] == attrs
    event = store.query(
        "MATCH (e:Event {span_id: $id}) RETURN e.name AS n, e.attributes AS a", {"id": sid(51)}
    )
    assert event == [{"n": text, "a": attrs}]
    # the text also works as a query parameter: matched exactly, not interpreted
    found = store.query(
        "MATCH (s:Span) WHERE s.name = $name RETURN s.span_id AS id ORDER BY id", {"name": text}
    )
    assert [r["id"] for r in found] == [sid(50), sid(51)]
    assert counts(store) == (3, 1, 1)  # nothing was injected


def test_nul_character_does_not_reject_the_batch(store: FalkorDBStore) -> None:
    """FalkorDB strings cannot hold NUL: it is stored as U+FFFD, and the rest of the batch
    (here another span) is written, instead of the whole batch being rejected."""
    batch = WriteBatch()
    batch.ends["Step"] = [
        end_row(sid(55), "bad\x00name", status_message="ValueError: \x00 in input"),
        end_row(sid(56), "fine"),
    ]
    store.write(batch)
    assert node(store, sid(55))["name"] == "bad\ufffdname"
    assert node(store, sid(55))["status_message"] == "ValueError: \ufffd in input"
    assert node(store, sid(56))["name"] == "fine"


@pytest.mark.parametrize("c_literals", [True, False], ids=["c", "python"])
def test_lone_surrogates_do_not_reject_the_batch(
    store: FalkorDBStore, c_literals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A str with lone surrogates (bytes decoded with ``surrogateescape``), which UTF-8
    cannot encode, is stored with U+FFFD in their place, and the rest of the batch is
    written, with the C literals and without them."""
    from spangraph.stores import falkordb as falkordb_module

    if not c_literals:
        monkeypatch.setattr(falkordb_module, "_c_literal", None)
    batch = WriteBatch()
    batch.ends["Step"] = [
        end_row(sid(57), "bad\udc80name", status_message="OSError: \udcff.txt"),
        end_row(sid(58), "fine"),
    ]
    batch.events.append(
        {"span_id": sid(57), "seq": 0, "name": "ev\udc81", "time_ns": 1, "attributes": "{}"}
    )
    store.write(batch)
    assert node(store, sid(57))["name"] == "bad\ufffdname"
    assert node(store, sid(57))["status_message"] == "OSError: \ufffd.txt"
    assert node(store, sid(58))["name"] == "fine"
    events = store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) RETURN e.name AS name",
        {"id": sid(57)},
    )
    assert events == [{"name": "ev\ufffd"}]


@pytest.mark.parametrize("c_literals", [True, False], ids=["c", "python"])
def test_query_parameters_with_nul_or_lone_surrogates(
    store: FalkorDBStore, c_literals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look-up whose parameter holds NUL or a lone surrogate (an id from a URL, say) is
    answered, not rejected: the parameter is mended as the write mended the stored text,
    so it finds that text, and an unknown one finds nothing."""
    from spangraph.stores import falkordb as falkordb_module

    if not c_literals:
        monkeypatch.setattr(falkordb_module, "_c_literal", None)
    batch = WriteBatch()
    batch.ends["Step"] = [end_row(sid(59), "a\x00b"), end_row(sid(60), "c\udc80d")]
    store.write(batch)
    find = "MATCH (s:Span) WHERE s.name = $name RETURN s.span_id AS id"
    assert store.query(find, {"name": "a\x00b"}) == [{"id": sid(59)}]
    assert store.query(find, {"name": "c\udc80d"}) == [{"id": sid(60)}]
    assert store.query(find, {"name": "nothing\x00here"}) == []
    assert store.query(find, {"name": ["x\x00", {"k": "\udcff"}]}) == []


# -- URLs -----------------------------------------------------------------------------------


def test_from_url_graph_name(embedded_server) -> None:
    port = embedded_server.port
    cases = {
        f"falkordb://127.0.0.1:{port}/my_graph": "my_graph",
        f"falkordb://127.0.0.1:{port}/with%20space": "with space",
        f"falkordb://127.0.0.1:{port}": "spangraph",
        f"falkordb://127.0.0.1:{port}/": "spangraph",
        f"redis://127.0.0.1:{port}/g2": "g2",
    }
    for url, graph in cases.items():
        store = FalkorDBStore.from_url(url)
        try:
            assert store.graph_name == graph, url
            assert store.url == f"falkordb://127.0.0.1:{port}/{graph}"
            store.ping()
        finally:
            store.close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379/g", "neo4j://127.0.0.1:7687", "falkordb://h:notaport/g",
     "falkordb://h:99999/g", "127.0.0.1:6379"],
)  # fmt: skip
def test_from_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        FalkorDBStore.from_url(url)
    assert err.value.setting == "SPANGRAPH_GRAPH_URL"
    assert url in str(err.value)


def test_from_url_password(private_servers) -> None:
    password = "p@ss:w/rd#1"
    _, info = private_servers.start()

    admin = redis.Redis(port=info.port)
    admin.config_set("requirepass", password)
    admin.close()
    try:
        quoted = "p%40ss%3Aw%2Frd%231"
        store = FalkorDBStore.from_url(f"falkordb://:{quoted}@127.0.0.1:{info.port}/pw")
        try:
            store.ensure_schema()
            batch = WriteBatch()
            batch.starts["Step"] = [start_row(sid(60), "with-password")]
            store.write(batch)
            assert node(store, sid(60))["name"] == "with-password"
        finally:
            store.close()
        named = FalkorDBStore.from_url(f"falkordb://default:{quoted}@127.0.0.1:{info.port}/pw")
        try:
            assert named.query("MATCH (s:Span) RETURN count(s) AS c") == [{"c": 1}]
        finally:
            named.close()
        with pytest.raises(StoreError):
            FalkorDBStore.from_url(f"falkordb://:wrong@127.0.0.1:{info.port}/pw")
    finally:
        admin = redis.Redis(port=info.port, password=password)
        admin.config_set("requirepass", "")  # let the fixture's stop() reach it
        admin.close()


# -- errors ---------------------------------------------------------------------------------


def test_unreachable_server_is_store_unavailable(closed_port: int) -> None:
    with pytest.raises(StoreUnavailableError) as err:
        FalkorDBStore.from_url(f"falkordb://127.0.0.1:{closed_port}/g")
    assert str(closed_port) in str(err.value)


@pytest.mark.parametrize("ssl", [False, True])
def test_the_first_ping_connects_as_the_falkordb_client_does(
    store: FalkorDBStore, ssl: bool
) -> None:
    """The PING before the FalkorDB client's first command (a server that accepts and
    never answers fails in the connect timeout) speaks the same protocol, and checks TLS
    as that client does: a check of its own would refuse servers the client takes (for
    one, a certificate that does not name the host, where the client checks no name)."""
    from falkordb import FalkorDB

    port = store._db.connection.connection_pool.connection_kwargs["port"]
    store._client_kwargs["ssl"] = ssl  # the probe's client connects only at a command
    ours = store._probe_client(port).connection_pool.connection_kwargs
    theirs = inspect.signature(FalkorDB).parameters  # what the store passes it: defaults
    assert ours["protocol"] == theirs["protocol"].default
    if ssl:
        for key in ("ssl_check_hostname", "ssl_cert_reqs", "ssl_ca_certs"):
            assert ours[key] == theirs[key].default, key
    assert ours["socket_timeout"] <= 5.0


def test_server_gone_is_store_unavailable(private_servers) -> None:
    server, info = private_servers.start()
    store = FalkorDBStore.from_url(info.graph_url)
    try:
        store.ensure_schema()
        server.stop()
        batch = WriteBatch()
        batch.starts["Step"] = [start_row(sid(70), "s")]
        with pytest.raises(StoreUnavailableError):
            store.write(batch)
        with pytest.raises(StoreUnavailableError):
            store.query("MATCH (n) RETURN n")
        with pytest.raises(StoreUnavailableError):
            store.ping()
    finally:
        store.close()


def test_rejected_statement_is_store_error(store: FalkorDBStore) -> None:
    with pytest.raises(StoreError) as err:
        store.query("THIS IS NOT CYPHER")
    assert not isinstance(err.value, StoreUnavailableError)
    with pytest.raises(StoreError) as err:
        store.execute_many([("MATCH (n RETURN n", {})])
    assert not isinstance(err.value, StoreUnavailableError)
    # queries are read-only: a write through query() is refused
    with pytest.raises(StoreError):
        store.query("CREATE (:Span {span_id: 'x'})")
    assert counts(store) == (0, 0, 0)


def test_delete_all(store: FalkorDBStore) -> None:
    store.write(sample_batch())
    store.delete_all()
    store.delete_all()  # a missing graph is fine
    store.write(sample_batch())  # and the schema is created again
    assert counts(store) == (5, 5, 2)


def test_query_of_a_graph_never_written_is_empty(embedded_server) -> None:
    """A fresh server has no graph key yet: reads answer no rows instead of an error."""
    store = FalkorDBStore.from_url(
        f"falkordb://127.0.0.1:{embedded_server.port}/never_{uuid.uuid4().hex[:8]}"
    )
    try:
        assert store.query("MATCH (s:Span) RETURN s.span_id AS id") == []
        assert store.query("MATCH (s:Workflow {name: $n}) RETURN s", {"n": "x"}) == []
    finally:
        store.close()


def test_encoded_batch_writes_what_the_batch_writes(store: FalkorDBStore) -> None:
    batch = WriteBatch()
    batch.ends["Step"] = [end_row(sid(80), "encoded", parent=sid(81))]
    batch.parents = [parent_row(sid(80), sid(81))]
    encoded = store.encode(batch)
    assert encoded.commands == 2  # the node, then its PARENT_OF edge
    store.write(encoded)
    assert node(store, sid(80))["state"] == "completed"
    assert counts(store)[1] == 1
    assert store.encode(WriteBatch()).commands == 0
    store.write(store.encode(WriteBatch()))  # nothing to send: no error


def test_submitted_batches_are_written_in_order(store: FalkorDBStore) -> None:
    first, second = WriteBatch(), WriteBatch()
    first.starts["Step"] = [start_row(sid(90), "in-flight")]
    second.ends["Step"] = [end_row(sid(90), "in-flight")]
    wait_first = store.submit(store.encode(first))
    wait_second = store.submit(store.encode(second))  # before the first reply is read
    wait_first()
    wait_second()
    assert node(store, sid(90))["state"] == "completed"
    store.submit(store.encode(WriteBatch()))()  # an empty batch sends nothing


def test_submit_rejected_statement_keeps_the_connection_in_step(store: FalkorDBStore) -> None:
    bad = store._encode([("MATCH (n RETURN n", {}), ("MATCH (n RETURN n", {})])
    good = WriteBatch()
    good.starts["Step"] = [start_row(sid(95), "after-error")]
    wait_bad = store.submit(bad)
    wait_good = store.submit(store.encode(good))
    with pytest.raises(StoreError) as err:
        wait_bad()
    assert not isinstance(err.value, StoreUnavailableError)
    wait_good()  # its reply is its own, not the second error of the bad one
    assert node(store, sid(95))["state"] == "running"


def test_submit_to_a_server_gone_is_store_unavailable_then_recovers(private_servers) -> None:
    server, info = private_servers.start()
    store = FalkorDBStore.from_url(info.graph_url)
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(99), "s")]
    try:
        store.submit(store.encode(batch))()
        server.stop()
        with pytest.raises(StoreUnavailableError):
            store.submit(store.encode(batch))()
        private_servers.restart_on_port(server, info.port)
        deadline = time.monotonic() + 10
        while True:  # the server takes a moment to accept connections
            try:
                store.submit(store.encode(batch))()  # on a new connection
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "the restarted server never answered"
                time.sleep(0.05)
        assert node(store, sid(99))["name"] == "s"
    finally:
        store.close()


def test_unreadable_reply_drops_the_connection(store: FalkorDBStore) -> None:
    """A reply the client cannot parse leaves the connection out of step: it is dropped
    (the next write opens another) and the batch is rejected, not retried forever."""

    class Garbled:
        def read_response(self) -> None:
            raise redis.exceptions.InvalidResponse("Protocol Error: b'?'")

    lost: list[bool] = []
    with pytest.raises(StoreError) as err:
        store._read_replies(Garbled(), 2, lambda: lost.append(True))
    assert not isinstance(err.value, StoreUnavailableError)
    assert lost == [True]
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(97), "after-garble")]
    store.submit(store.encode(batch))()  # the store itself still writes
    assert node(store, sid(97))["name"] == "after-garble"


def test_a_server_that_never_answers_is_found_out_within_the_connect_timeout(
    silent_port: int,
) -> None:
    """A server that accepts and never answers: the first exchange has the connect
    timeout (5 s), not the timeout queries get (a functional bound: before, the query
    timeout; 60 s here, so that a loaded machine cannot blur the two)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{silent_port}.*unreachable"):
        FalkorDBStore.from_url(f"falkordb://127.0.0.1:{silent_port}/g", socket_timeout=60.0)
    assert time.monotonic() - started < 30.0


# -- a batch in two; a write that times out -------------------------------------------------


def assert_halves_write_the_batch(
    store: FalkorDBStore,
    graph_url: str,
    batch: WriteBatch,
    halves: tuple[WriteBatch, WriteBatch],
    *,
    before: WriteBatch | None = None,
) -> None:
    """``batch`` written to ``store`` and its two halves, one after the other, to a graph
    of their own (each after ``before``) leave the same graph."""
    if before is not None:
        store.write(before)
    store.write(batch)
    other = FalkorDBStore.from_url(graph_url + "_halves")
    try:
        if before is not None:
            other.write(before)
        for half in halves:
            other.write(half)
        assert snapshot(other) == snapshot(store)
    finally:
        other.delete_all()
        other.close()


def test_a_batch_split_in_two_writes_what_it_writes(store: FalkorDBStore, graph_url: str) -> None:
    batch = sample_batch()
    batch.ends["Decision"] = [end_row(sid(4), "pick", parent=sid(1), kind="decision")]
    batch.ends["Option"] = [end_row(f"{sid(4)}:o{i}", f"option {i}") for i in range(3)]
    batch.parents.append(parent_row(sid(4), sid(1)))
    batch.links["option_of"] = [
        {"span_id": sid(4), "target_span_id": f"{sid(4)}:o{i}"} for i in range(3)
    ]
    halves = batch.split()
    assert halves is not None
    first, second = halves
    rows = lambda b: sorted(  # noqa: E731
        json.dumps(r, sort_keys=True)
        for group in (*b.starts.values(), *b.ends.values(), b.parents, b.events,
                      *b.links.values())
        for r in group
    )  # fmt: skip
    assert rows(first) and rows(second) and sorted(rows(first) + rows(second)) == rows(batch)
    spans_of = lambda b: {r["span_id"] for g in (*b.starts.values(), *b.ends.values()) for r in g}  # noqa: E731
    assert spans_of(first) == {sid(1), sid(3)}  # the first half of the spans, in row order
    options = {f"{sid(4)}:o{i}" for i in range(3)}
    assert spans_of(second) == {sid(2), sid(4)} | options  # options go with their decision
    assert second.links["option_of"] and "option_of" not in first.links

    assert_halves_write_the_batch(store, graph_url, batch, halves)
    one = WriteBatch()
    one.ends["Step"] = [end_row(sid(9), "alone")]
    one.events = [{"span_id": sid(9), "seq": 0, "name": "e", "time_ns": 1, "attributes": "{}"}]
    assert one.split() is None  # one span: nothing to split


def test_adopted_rows_go_with_their_span_and_the_rest_to_both_halves(
    store: FalkorDBStore, graph_url: str
) -> None:
    """A span stored under its trace id as run gets its parent's run ids (ADOPT_SPANS):
    split for its size, a batch puts a row with the rows of its span, and rows of spans
    written before in both halves (they all went to the second: a batch that kept
    timing out never got a smaller statement)."""
    earlier = WriteBatch()
    earlier.ends["Step"] = [end_row(sid(60 + i), f"early-{i}", workflow_id=TRACE) for i in range(4)]
    batch = sample_batch()
    batch.starts["Step"][0]["props"]["workflow_id"] = TRACE  # the running step: no run yet
    adopt = lambda n: {  # noqa: E731
        "span_id": sid(n), "trace_id": TRACE, "workflow_id": "wf-adopted",
        "execution_id": "ex-adopted", "branch_id": None,
    }  # fmt: skip
    batch.adopted = [adopt(3), *(adopt(60 + i) for i in range(4))]
    halves = batch.split()
    assert halves is not None
    first, second = halves
    assert sid(3) in {r["span_id"] for g in second.starts.values() for r in g}
    assert [r["span_id"] for r in first.adopted] == [sid(61), sid(63)]
    assert [r["span_id"] for r in second.adopted] == [sid(3), sid(60), sid(62)]

    assert_halves_write_the_batch(store, graph_url, batch, halves, before=earlier)
    for n in (3, 60, 61, 62, 63):
        assert (node(store, sid(n))["workflow_id"], node(store, sid(n))["execution_id"]) == (
            "wf-adopted",
            "ex-adopted",
        )
    assert node(store, sid(2))["workflow_id"] == WF  # a run of its own: left as it is


def test_a_write_not_answered_in_time_is_a_store_timeout(
    graph_url: str, redis_client: redis.Redis
) -> None:
    """The server took the write and did not answer within the socket timeout: a
    StoreTimeoutError (still a StoreUnavailableError, retried); a ping then times out too,
    so the processor knows the server, not the batch, is stuck."""
    from spangraph.exceptions import StoreTimeoutError

    store = FalkorDBStore.from_url(graph_url, socket_timeout=0.3)
    try:
        store.write(sample_batch())  # connected, schema made
        # longer than the steps below, also on a machine that stalls for seconds
        redis_client.execute_command("CLIENT", "PAUSE", 8000, "ALL")
        paused = time.monotonic()
        with pytest.raises(StoreTimeoutError, match=r"did not answer a write within 0\.3 s"):
            store.write(sample_batch())
        with pytest.raises(StoreUnavailableError) as caught:
            store.ping()
        assert not isinstance(caught.value, StoreTimeoutError)
        time.sleep(max(0.0, 8.1 - (time.monotonic() - paused)))
        store.write(sample_batch())  # answered again
        assert counts(store) == (5, 5, 2)
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
        store.delete_all()
        store.close()


def test_a_costly_read_is_stopped_by_the_server_at_its_time_limit(graph_url: str) -> None:
    """A read the client gave up on (its socket timeout) ran on in the server for minutes
    (a `spangraph query cypher` over long paths), and every write waited behind it: the
    programs' spans, the live events, a new program's configure(). The server now stops
    it a little before the client stops waiting."""
    # (a margin of 0.5 s between the two: 0.1 s was too little on a loaded machine)
    store = FalkorDBStore.from_url(graph_url, socket_timeout=5.0)
    try:
        store.ensure_schema()  # the graph exists: an empty one answers no rows at once
        costly = "UNWIND range(1, 1000000) AS a UNWIND range(1, 1000) AS b RETURN count(*) AS n"
        with pytest.raises(StoreError, match=r"time limit of 4\.5 s") as info:
            store.query(costly)
        # the server answered (it stopped the query), not the client's timeout
        assert not isinstance(info.value, StoreUnavailableError)
        assert store.query("RETURN 1 AS one") == [{"one": 1}]
    finally:
        store.close()


def test_a_server_with_a_lower_timeout_max_keeps_its_own(private_servers: Any) -> None:
    """A FalkorDB whose TIMEOUT_MAX is below the limit reads are sent with refuses them
    all ("cannot exceed the TIMEOUT_MAX"): reads go on without one, under its own."""
    _, info = private_servers.start("timeout-max")
    admin = redis.Redis(port=info.port)
    admin.execute_command("GRAPH.CONFIG", "SET", "TIMEOUT_MAX", "500")
    admin.close()
    store = FalkorDBStore.from_url(info.graph_url, socket_timeout=5.0)  # a 4.5 s limit
    try:
        store.ensure_schema()
        assert store.query("RETURN 1 AS one") == [{"one": 1}]
        costly = "UNWIND range(1, 1000000) AS a UNWIND range(1, 1000) AS b RETURN count(*) AS n"
        with pytest.raises(StoreError, match="stopped a query at its time limit") as info_:
            store.query(costly)
        assert not isinstance(info_.value, StoreUnavailableError)
        assert store.query("RETURN 2 AS two") == [{"two": 2}]
    finally:
        store.close()
