"""FalkorDBStore's fast paths keep behaviour: the parameter literals are exactly the
client's, and the FalkorDB forms of the labelled upserts leave the same graph as the
shared statements (see docs/performance.md for why they exist)."""

from __future__ import annotations

import json
import random
import string
import sys
import uuid
from typing import Any

import pytest
from falkordb.helpers import stringify_param_value

from spangraph.stores import FalkorDBStore, WriteBatch, cypher
from spangraph.stores import falkordb as falkordb_module
from spangraph.stores.falkordb import _literal
from test_store_falkordb import end_row, node, parent_row, sid, snapshot, start_row

try:
    from spangraph._speedups import cypher_literal
except ImportError:  # the optional C extension was not built
    cypher_literal = None

needs_c = pytest.mark.skipif(cypher_literal is None, reason="spangraph._speedups was not built")

_ALPHABET = string.printable + "`\\\"'日本🚀\x00\u2028"


def _value(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if r < 0.3:
        return "".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(0, 12)))
    if r < 0.45:
        return rnd.randint(-(2**63), 2**63)
    if r < 0.55:
        return rnd.random() * 10 ** rnd.randint(-10, 20)
    if r < 0.6:
        return rnd.choice([True, False, None, float("inf"), -0.0])
    if depth < 3 and r < 0.8:
        items = [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
        return items if rnd.random() < 0.5 else tuple(items)
    if depth < 3:
        keys = string.ascii_letters + "_."
        return {
            "".join(rnd.choice(keys) for _ in range(rnd.randint(1, 8))): _value(rnd, depth + 1)
            for _ in range(rnd.randint(0, 5))
        }
    return "x"


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    """What ``fn(value)`` returns, or the message of the ValueError it raises."""
    try:
        return "ok", fn(value)
    except ValueError as exc:
        return "error", str(exc)


def test_literals_are_exactly_the_clients() -> None:
    rnd = random.Random(1)
    for _ in range(5000):
        value = _value(rnd)
        assert _literal(value) == stringify_param_value(value), value


@pytest.mark.parametrize("value", [{"": 1}, {"a`b": 1}, {b"k": 1}, {1: 2}, [{"ok": {"": 1}}]])
def test_keys_the_client_refuses_or_converts_go_to_the_client(value: Any) -> None:
    assert _outcome(_literal, value) == _outcome(stringify_param_value, value)


class _Str(str):
    pass


class _Int(int):
    def __str__(self) -> str:
        return "int-subclass"


class _List(list[Any]):
    pass


class _Opaque:
    def __str__(self) -> str:
        return 'opaque \\ " 日本'


@needs_c
def test_c_literals_are_exactly_the_clients() -> None:
    rnd = random.Random(2)
    for _ in range(5000):
        value = _value(rnd)
        assert cypher_literal(value, stringify_param_value) == stringify_param_value(value).encode()


@needs_c
@pytest.mark.parametrize(
    "value",
    [
        _Str('sub "class"'),
        _Int(7),
        _List([1, "a"]),
        _Opaque(),
        {"k": _Opaque(), "l": [_Int(1), {"m": _Str("x")}]},
        b"raw",
        {"": 1},
        {"a`b": 1},
        {b"k": 1},
        {1: 2},
        [{"ok": {"": 1}}],
        2**200,
        -(2**63),
        1e-320,
    ],
)
def test_c_literals_hand_other_types_and_keys_to_the_client(value: Any) -> None:
    expected = _outcome(stringify_param_value, value)
    if expected[0] == "ok":
        expected = ("ok", expected[1].encode())
    assert _outcome(lambda v: cypher_literal(v, stringify_param_value), value) == expected


@needs_c
def test_c_literal_of_a_dict_changed_while_written_is_an_error() -> None:
    """Its keys were checked before it was written: a key added by a value's ``__str__``
    (here one the client refuses) must not be written unchecked."""
    values: dict[str, Any] = {}

    class AddsAKey:
        def __str__(self) -> str:
            values["x` }) DETACH DELETE n //"] = 1
            return "v"

    values["a"] = AddsAKey()
    with pytest.raises(RuntimeError, match="changed size"):
        cypher_literal(values, stringify_param_value)


@needs_c
@pytest.mark.parametrize("new_key", ["x` }) DETACH DELETE n //", "", 12345, 2**100, b"abc", 3.5])
def test_c_literal_of_a_dict_whose_keys_change_while_written_is_an_error(new_key: Any) -> None:
    """A key swapped for another (the size stays): a key the client refuses was written
    raw, and a key that is not a str crashed the interpreter."""
    values: dict[Any, Any] = {}

    class SwapsAKey:
        def __str__(self) -> str:
            values.pop("b")
            values[new_key] = 1
            return "v"

    values.update(a=SwapsAKey(), b=2)
    with pytest.raises(RuntimeError, match="changed"):
        cypher_literal(values, stringify_param_value)


@needs_c
def test_c_literal_leaves_the_programs_strings_as_they_were() -> None:
    """No UTF-8 copy is left cached inside a non-ASCII str (a prompt the program keeps
    would grow by its UTF-8 size)."""
    text = "文" * 100_000
    size = sys.getsizeof(text)
    assert cypher_literal({"prompt": text}, stringify_param_value) == (
        f'{{`prompt`:"{text}"}}'.encode()
    )
    assert sys.getsizeof(text) == size


@needs_c
def test_c_literal_errors_are_raised_not_crashed() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        cypher_literal(deep, stringify_param_value)
    with pytest.raises(TypeError, match="not str"):
        cypher_literal(_Opaque(), lambda v: 42)
    assert cypher_literal(["lone \udc80 surrogate", {"k\udcff": 1}], stringify_param_value) == (
        '["lone \ufffd surrogate",{`k\ufffd`:1}]'.encode()
    )


@needs_c
def test_params_header_is_the_same_bytes_with_and_without_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rnd = random.Random(3)
    params = [{"rows": [_value(rnd) for _ in range(20)], "n": _value(rnd)} for _ in range(200)]
    params.append({"rows": [{"name": "surrogate \udc80 inside"}]})
    params.append({"rows": [{"name": "nul \x00 inside"}]})
    with_c = [falkordb_module._params_header(p) for p in params]
    monkeypatch.setattr(falkordb_module, "_c_literal", None)
    assert [falkordb_module._params_header(p) for p in params] == with_c
    assert b"\x00" not in with_c[-1] and "\ufffd".encode() in with_c[-1]


def _random_batches(seed: int) -> list[WriteBatch]:
    """Starts, ends and parent rows of 25 spans under three labels (one of them none),
    in random order across batches: replays, starts after ends, placeholders. A span's
    rows of one kind are equal (see test_rows_repeated_in_one_statement_apply_in_order)."""
    rnd = random.Random(seed)
    kinds = {"Step": "step", "Agent": "agent", None: "span"}
    batches = []
    for _ in range(30):
        batch = WriteBatch()
        for _ in range(6):
            n = rnd.randint(1, 25)
            label = rnd.choice(list(kinds))
            r = rnd.random()
            if r < 0.35:
                row = start_row(sid(n), f"n{n}", kind=kinds[label], start_ns=n % 9 + 1)
                batch.starts.setdefault(label, []).append(row)
            elif r < 0.7:
                batch.ends.setdefault(label, []).append(end_row(sid(n), f"n{n}", kind=kinds[label]))
            else:
                batch.parents.append(parent_row(sid(n), sid(rnd.randint(1, 25))))
        batches.append(batch)
    return batches


def _tree_batches(seed: int) -> list[WriteBatch]:
    """Batches shaped like GraphSpanProcessor's, and worse: 40 spans in a few trees (a
    parent id, trace and workflow id in each row's ``props`` and, mostly, the matching
    ``parents`` row), under four labels and none; start and end rows in random batches,
    half of them with each span once (as the processor sends them: one statement a label
    then), children before and after their parents, repeated rows (equal ones: see
    test_rows_repeated_in_one_statement_apply_in_order), replays, option-like rows (a
    parent in ``props``, no edge row), edge rows that do not match their row, and sibling
    rows whose workflow ids disagree."""
    rnd = random.Random(seed)
    kinds = {
        "Step": "step",
        "Agent": "agent",
        "Workflow": "workflow",
        "Option": "option",
        None: "span",
    }
    spans: dict[int, tuple[str | None, int | None, str]] = {}
    for n in range(1, 41):
        parent = rnd.choice([None, *range(max(1, n - 8), n)]) if n > 1 else None
        if parent is not None and rnd.random() < 0.15:
            parent = rnd.randint(41, 45)  # a parent that never gets a row of its own
        wf = f"wf-{rnd.randint(1, 2)}" if rnd.random() < 0.2 else "wf-1"
        spans[n] = (rnd.choice(list(kinds)), parent, wf)
    batches = []
    for _ in range(25):
        batch = WriteBatch()
        count = rnd.randint(1, 14)
        if rnd.random() < 0.5:  # each span once, as GraphSpanProcessor sends them
            picks = rnd.sample(range(1, 41), count)
        else:
            picks = [rnd.randint(1, 40) for _ in range(count)]
        for n in picks:
            label, parent, wf = spans[n]
            if rnd.random() < 0.05:
                label = rnd.choice(list(kinds))  # a kind that changed
            ended = rnd.random() < 0.6
            make = end_row if ended else start_row
            row = make(sid(n), f"n{n}", kind=kinds[label], start_ns=n % 7 + 1,
                       parent=sid(parent) if parent else None, workflow_id=wf)  # fmt: skip
            (batch.ends if ended else batch.starts).setdefault(label, []).append(row)
            if rnd.random() < 0.1:  # the same row twice
                (batch.ends if ended else batch.starts)[label].append(row)
            if parent is not None and label != "Option":
                r = rnd.random()
                if r < 0.85:
                    batch.parents.append({**parent_row(sid(n), sid(parent)), "workflow_id": wf})
                elif r < 0.92:  # an edge row that does not match the row's props
                    batch.parents.append(parent_row(sid(n), sid(rnd.randint(1, 45))))
        rnd.shuffle(batch.parents)
        batches.append(batch)
        if rnd.random() < 0.2:
            batches.append(batch)  # a replay
    return batches


def _graph_after(
    embedded_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[WriteBatch],
    *,
    shared: bool,
) -> list[Any]:
    store = FalkorDBStore.from_url(
        f"falkordb://127.0.0.1:{embedded_server.port}/t_fast_{uuid.uuid4().hex[:8]}"
    )
    try:
        store.ensure_schema()
        with monkeypatch.context() as m:
            if shared:  # what the Neo4j store sends: the shared statements, as they are
                m.setattr(falkordb_module, "write_statements", WriteBatch.statements)
            for batch in batches:
                store.write(batch)
        # labels(n) lists a node's labels in the order the graph first saw each label,
        # which depends on the order of the statements: compare them as sets
        return sorted(
            json.dumps({**json.loads(line), "l": sorted(json.loads(line).get("l") or [])},
                       sort_keys=True)
            for line in snapshot(store)
        )  # fmt: skip
    finally:
        store.delete_all()
        store.close()


def test_fast_upserts_leave_the_same_graph_as_the_shared_ones(
    embedded_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _random_batches(seed=3)
    fast = _graph_after(embedded_server, monkeypatch, batches, shared=False)
    shared = _graph_after(embedded_server, monkeypatch, batches, shared=True)
    assert fast == shared
    assert len(fast) > 25


@pytest.mark.parametrize("seed", range(12))
def test_fast_upserts_leave_the_same_graph_on_processor_like_batches(
    embedded_server: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    batches = _tree_batches(seed)
    both = cypher.falkordb_upsert
    combined = [c for b in batches for c, _ in falkordb_module.write_statements(b)]
    assert {both(label, None) for label in ("Step", "Agent", None)} & set(combined)
    fast = _graph_after(embedded_server, monkeypatch, batches, shared=False)
    shared = _graph_after(embedded_server, monkeypatch, batches, shared=True)
    assert fast == shared
    assert sum('"PARENT_OF"' in line for line in fast) > 5


def _processor_batch() -> WriteBatch:
    """What GraphSpanProcessor sends for the end of a workflow: steps that started and
    ended in the batch (children first), one still running, then the workflow's end."""
    batch = WriteBatch()
    batch.ends["Step"] = [end_row(sid(n), f"s{n}", parent=sid(1)) for n in range(2, 6)]
    batch.starts["Step"] = [start_row(sid(6), "s6", parent=sid(1))]
    batch.ends["Workflow"] = [end_row(sid(1), "wf", kind="workflow")]
    batch.parents = [parent_row(sid(n), sid(1)) for n in range(2, 7)]
    return batch


def test_a_processor_batch_takes_one_statement_a_label(store: FalkorDBStore) -> None:
    """The start and end rows of a label go in one statement when no span has both, and
    the graph is the expected one (also after a replay)."""
    batch = _processor_batch()
    statements = falkordb_module.write_statements(batch)
    assert statements == [
        (
            cypher.falkordb_upsert("Step", None),
            {"rows": batch.starts["Step"] + batch.ends["Step"]},
        ),
        (cypher.falkordb_upsert("Workflow", True), {"rows": batch.ends["Workflow"]}),
        (cypher.MERGE_PARENT_EDGES, {"rows": batch.parents}),
    ]
    for _ in range(2):
        store.write(batch)
        children = store.query(
            "MATCH (:Workflow {span_id: $id})-[:PARENT_OF]->(c:Step) RETURN c.span_id AS c,"
            " c.state AS state ORDER BY c",
            {"id": sid(1)},
        )
        assert children == [{"c": sid(n), "state": "completed"} for n in range(2, 6)] + [
            {"c": sid(6), "state": "running"}
        ]
        assert store.query("MATCH ()-[r]->() RETURN count(r) AS c") == [{"c": 5}]
        assert node(store, sid(1))["state"] == "completed"


def test_rows_not_shaped_as_the_processors_keep_the_statements_apart() -> None:
    """A span with a start and an end row in one batch, a start row that carries
    ``end_ns`` or an end row without ``state`` (none from the processor): one statement a
    group, starts first, as the shared statements do."""
    batch = WriteBatch()
    batch.starts["Step"] = [start_row(sid(40), "s")]
    batch.ends["Step"] = [end_row(sid(40), "s"), end_row(sid(41), "t")]
    apart = [cypher.falkordb_upsert("Step", False), cypher.falkordb_upsert("Step", True)]
    assert [c for c, _ in falkordb_module.write_statements(batch)] == apart
    batch.ends["Step"] = [end_row(sid(41), "t")]
    assert [c for c, _ in falkordb_module.write_statements(batch)] == [
        cypher.falkordb_upsert("Step", None)
    ]
    batch.starts["Step"] = [start_row(sid(40), "s", end_ns=5)]
    assert [c for c, _ in falkordb_module.write_statements(batch)] == apart
    batch.starts["Step"] = [start_row(sid(40), "s")]
    batch.ends["Step"] = [end_row(sid(41), "t", state=None)]
    assert [c for c, _ in falkordb_module.write_statements(batch)] == apart


def test_rows_repeated_in_one_statement_apply_in_order(store: FalkorDBStore) -> None:
    """Rows of one span repeated in one group are applied one after the other, as Cypher
    defines it (and Neo4j does): the last value of each property wins, and a start row
    after one that carries ``end_ns`` changes nothing. (FalkorDB's ``MERGE ... SET +=``
    over such rows keeps no defined order, so the store merges them first.)"""
    batch = WriteBatch()
    batch.ends["Step"] = [
        end_row(sid(80), "e", start_ns=3, parent=sid(79)),
        end_row(sid(80), "e", start_ns=9, parent=sid(79)),
        end_row(sid(80), "e", start_ns=5, parent=sid(79), status_message="last"),
    ]
    batch.starts["Agent"] = [
        start_row(sid(81), "s", kind="agent", start_ns=3),
        start_row(sid(81), "s", kind="agent", start_ns=4, end_ns=7),
        start_row(sid(81), "s", kind="agent", start_ns=5),
    ]
    batch.parents = [parent_row(sid(80), sid(79))] * 3
    statements = falkordb_module.write_statements(batch)
    assert [len(p["rows"]) for _, p in statements] == [1, 1, 3]  # and the edge rows
    for _ in range(2):
        store.write(batch)
        ended, started = node(store, sid(80)), node(store, sid(81))
        assert (ended["start_ns"], ended["status_message"]) == (5, "last")
        assert (started["start_ns"], started["end_ns"], started["state"]) == (4, 7, "running")
        assert store.query("MATCH ()-[r:PARENT_OF]->() RETURN count(r) AS c") == [{"c": 1}]
