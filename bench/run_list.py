#!/usr/bin/env python
"""The run list (``GET /api/workflows``, ``spangraph query workflows``) on a large graph.

Run from the repository root, in the project's virtual environment::

    python bench/run_list.py                   # 20 000 runs, 50 a page
    python bench/run_list.py --runs 2000 --limit 200

It starts its own embedded server (redis-server + FalkorDB module) in a temporary
directory and stops it at the end. The graph holds ``--runs`` workflow spans (half with
a parent in another service, one in ten under a span of its own run, as another
instrumentation's workflow span inside a run is) and the list is read with
``queries.workflows``: the runs' top workflow spans, newest first. The baseline is the
same filter, order and limit over every workflow span without the top-span check
(``MATCH (s:Workflow) ... ORDER BY s.start_ns DESC LIMIT $limit``), in the same run,
alternating. Nothing here asserts: the figures are printed (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from typing import Any

from spangraph import queries
from spangraph.embedded import EmbeddedServer
from spangraph.stores.falkordb import FalkorDBStore

BASELINE = (
    queries.RUN_FILTERS + "RETURN s.span_id AS span_id, s.name AS name, s.start_ns AS start_ns\n"
    "ORDER BY s.start_ns DESC\n"
    "LIMIT $limit"
)


def _fill(store: FalkorDBStore, runs: int) -> None:
    rows: list[dict[str, Any]] = []
    nested: list[dict[str, Any]] = []
    for i in range(runs):
        row = {
            "span_id": uuid.uuid4().hex[:16],
            "trace_id": uuid.uuid4().hex,
            "workflow_id": f"run-{i}",
            "execution_id": f"thread-{i // 4}",  # four runs a thread (a conversation's turns)
            "name": f"agent-{i % 50}",
            "kind": "workflow",
            "state": "completed",
            "project_id": "bench",
            "start_ns": 1_000_000 * i,
        }
        if i % 10 == 3:  # under a span of its own run
            parent = uuid.uuid4().hex[:16]
            row["parent_span_id"] = parent
            nested.append(
                {"span_id": parent, "workflow_id": row["workflow_id"], "child": row["span_id"]}
            )
        elif i % 2:  # a parent in another service, never written here
            row["parent_span_id"] = uuid.uuid4().hex[:16]
        rows.append(row)
    create = "UNWIND $rows AS r CREATE (s:Span:Workflow) SET s = r"
    link = (
        "UNWIND $rows AS r MATCH (c:Span {span_id: r.child}) "
        "CREATE (:Span:Step {span_id: r.span_id, workflow_id: r.workflow_id})-[:PARENT_OF]->(c)"
    )
    for k in range(0, len(rows), 1000):
        store.execute_many([(create, {"rows": rows[k : k + 1000]})])
    for k in range(0, len(nested), 1000):
        store.execute_many([(link, {"rows": nested[k : k + 1000]})])


def _best(fn: Any, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = len(fn())
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        store = FalkorDBStore.from_url(info.graph_url)
        try:
            store.ensure_schema()
            _fill(store, args.runs)
            params = {
                "project_id": None, "state": None, "name": None, "name_contains": None,
                "execution_id": None,
                "since_ns": None, "limit": args.limit,
            }  # fmt: skip
            cases = (
                ("every run", {}),
                ("one name in 50", {"name": "agent-7"}),
                ("one execution (4 runs)", {"execution_id": "thread-7"}),
            )
            for label, given in cases:
                base = _best(lambda g=given: store.query(BASELINE, {**params, **g}), args.repeat)
                ours = _best(
                    lambda g=given: queries.workflows(store, limit=args.limit, **g), args.repeat
                )
                print(
                    f"{args.runs} runs, {label}, {args.limit} a page: run list {ours[0] * 1000:.1f} ms "
                    f"({ours[1]} rows), baseline {base[0] * 1000:.1f} ms ({base[1]} rows): "
                    f"ratio {ours[0] / base[0]:.2f}"
                )
        finally:
            store.delete_all()
            store.close()
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
