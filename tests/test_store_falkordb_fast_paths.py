"""FalkorDBStore's fast paths keep behaviour: the parameter literals are exactly the
client's, and the FalkorDB forms of the labelled upserts leave the same graph as the
shared statements (see docs/performance.md for why they exist)."""

from __future__ import annotations

import random
import string
import uuid
from typing import Any

import pytest
from falkordb.helpers import stringify_param_value

from spangraph.stores import FalkorDBStore, WriteBatch
from spangraph.stores import falkordb as falkordb_module
from spangraph.stores.falkordb import _literal
from test_store_falkordb import end_row, parent_row, sid, snapshot, start_row

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


def test_literals_are_exactly_the_clients() -> None:
    rnd = random.Random(1)
    for _ in range(5000):
        value = _value(rnd)
        assert _literal(value) == stringify_param_value(value), value


@pytest.mark.parametrize("value", [{"": 1}, {"a`b": 1}, {b"k": 1}, {1: 2}, [{"ok": {"": 1}}]])
def test_keys_the_client_refuses_or_converts_go_to_the_client(value: Any) -> None:
    def outcome(fn: Any) -> tuple[str, str]:
        try:
            return "ok", fn(value)
        except ValueError as exc:
            return "error", str(exc)

    assert outcome(_literal) == outcome(stringify_param_value)


def _random_batches(seed: int) -> list[WriteBatch]:
    """Starts, ends and parent rows of 25 spans under three labels (one of them none),
    in random order across batches: replays, starts after ends, placeholders."""
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
                row = start_row(sid(n), f"n{n}", kind=kinds[label], start_ns=rnd.randint(1, 9))
                batch.starts.setdefault(label, []).append(row)
            elif r < 0.7:
                batch.ends.setdefault(label, []).append(end_row(sid(n), f"n{n}", kind=kinds[label]))
            else:
                batch.parents.append(parent_row(sid(n), sid(rnd.randint(1, 25))))
        batches.append(batch)
    return batches


def test_fast_upserts_leave_the_same_graph_as_the_shared_ones(
    embedded_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = []
    for fast in (True, False):
        store = FalkorDBStore.from_url(
            f"falkordb://127.0.0.1:{embedded_server.port}/t_fast_{uuid.uuid4().hex[:8]}"
        )
        try:
            store.ensure_schema()
            with monkeypatch.context() as m:
                if not fast:
                    m.setattr(falkordb_module, "_FAST_FORMS", {})
                for batch in _random_batches(seed=3):
                    store.write(batch)
            snapshots.append(snapshot(store))
        finally:
            store.delete_all()
            store.close()
    assert snapshots[0] == snapshots[1]
    assert len(snapshots[0]) > 25
