#!/usr/bin/env python
"""Deleting old runs (``spangraph prune``, ``serve --retention``) on a large graph, and
what it does to the programs' writes meanwhile.

Run from the repository root, in the project's virtual environment::

    python bench/prune.py                        # 2 000 runs of 50 spans, half deleted
    python bench/prune.py --runs 200 --spans 20

It starts its own embedded server (redis-server + FalkorDB module) in a temporary
directory and stops it at the end. The graph gets ``--runs`` runs of ``--spans`` spans
(a chain of parent and children, one event on every fifth span), written by
``UNWIND ... CREATE`` statements of about ``--batch-spans`` spans: that write rate is
the baseline. The older half of the runs is then deleted by ``_prune.prune`` in batches
of the same size. Beside both, a thread writes one span (a ``MERGE``, as the graph
processor does) every 10 ms into the same graph and times each write: what a program's
writes wait while a prune runs, against what they wait while the graph is written.
Nothing here asserts: the figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid

from spangraph import _prune
from spangraph.embedded import EmbeddedServer
from spangraph.stores.falkordb import FalkorDBStore

FILL = (
    "UNWIND $runs AS run\n"
    "UNWIND range(0, $spans - 1) AS i\n"
    "CREATE (s:Span {span_id: run.id + '-' + toString(i), workflow_id: run.id,\n"
    "  parent_span_id: CASE WHEN i = 0 THEN null ELSE run.id + '-' + toString(i - 1) END,\n"
    "  project_id: 'bench', kind: 'step', name: 'step', state: 'completed',\n"
    "  start_ns: run.start + i, end_ns: run.start + i + 1, attributes: '{\"k\":1}'})\n"
    "FOREACH (_ IN CASE WHEN i % 5 = 0 THEN [1] ELSE [] END |\n"
    "  CREATE (s)-[:HAS_EVENT]->(:Event {span_id: s.span_id, seq: 0, name: 'e',\n"
    "    time_ns: run.start + i}))"
)
LINK = (
    "UNWIND $ids AS id\n"
    "MATCH (p:Span {workflow_id: id}), (c:Span {workflow_id: id})\n"
    "WHERE c.parent_span_id = p.span_id\n"
    "CREATE (p)-[:PARENT_OF]->(c)"
)
PROBE = (
    "MERGE (s:Span {span_id: $id})\n"
    "SET s.workflow_id = $id, s.project_id = 'probe', s.start_ns = $now, s.end_ns = $now"
)


class Probe(threading.Thread):
    """One span written every 10 ms; the time each write took, in ms, by phase."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.store = FalkorDBStore.from_url(url)
        self.phase = "idle"
        self.times: dict[str, list[float]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            phase = self.phase
            t0 = time.perf_counter()
            now = time.time_ns()
            self.store.execute_many([(PROBE, {"id": f"probe-{uuid.uuid4().hex}", "now": now})])
            self.times.setdefault(phase, []).append((time.perf_counter() - t0) * 1000)

    def summary(self, phase: str) -> str:
        times = sorted(self.times.get(phase, ()))
        if not times:
            return "no writes"
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        return (
            f"median {statistics.median(times):.1f} ms, 99th percentile {p99:.1f} ms, "
            f"longest {times[-1]:.1f} ms ({len(times)} writes)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs written (default 2000)")
    parser.add_argument("--spans", type=int, default=50, help="spans a run (default 50)")
    parser.add_argument(
        "--batch-spans", type=int, default=5000, help="spans a statement (default 5000)"
    )
    args = parser.parse_args(argv)
    if args.runs < 2 or args.spans < 1 or args.batch_spans < 1:
        parser.error("--runs must be 2 or more, --spans and --batch-spans 1 or more")
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        try:
            url = f"falkordb://127.0.0.1:{info.port}/prune_bench"
            store = FalkorDBStore.from_url(url)
            store.ensure_schema()
            probe = Probe(url)
            probe.start()
            time.sleep(0.5)  # the probe's writes alone
            probe.phase = "write"
            per = max(1, args.batch_spans // args.spans)
            t0 = time.perf_counter()
            for first in range(0, args.runs, per):
                runs = [
                    {"id": f"run-{i:07}", "start": 1_000_000 * i}
                    for i in range(first, min(first + per, args.runs))
                ]
                store.execute_many(
                    [
                        (FILL, {"runs": runs, "spans": args.spans}),
                        (LINK, {"ids": [r["id"] for r in runs]}),
                    ]
                )
            written_s = time.perf_counter() - t0
            spans = args.runs * args.spans
            events = args.runs * len(range(0, args.spans, 5))
            probe.phase = "between"
            time.sleep(0.5)
            old = args.runs // 2
            cutoff = 1_000_000 * old  # runs 0 .. old-1 ended before it
            batches: list[float] = []
            last = [time.perf_counter()]

            def on_batch(done: list[_prune.PrunedRun]) -> None:
                now = time.perf_counter()
                batches.append(now - last[0])
                last[0] = now

            probe.phase = "prune"
            t0 = last[0] = time.perf_counter()
            result = _prune.prune(
                store,
                older_than_s=0,
                now_ns=cutoff,
                batch_spans=args.batch_spans,
                on_batch=on_batch,
            )
            pruned_s = time.perf_counter() - t0
            probe.phase = "after"
            time.sleep(0.3)
            probe.stop.set()
            probe.join(5)
            left = store.query("MATCH (s:Span {project_id: 'bench'}) RETURN count(s) AS n")
            store.close()
        finally:
            server.stop()
    write_rate = spans / written_s
    prune_rate = result.spans / pruned_s
    print(
        f"{spans} spans in {args.runs} runs (+{events} events): written in {written_s:.2f} s, "
        f"{write_rate:,.0f} spans/s (statements of about {per * args.spans} spans)"
    )
    print(
        f"prune of {result.spans} spans ({len(result.runs)} runs, {left[0]['n']} spans left): "
        f"{pruned_s:.2f} s, {prune_rate:,.0f} spans/s: {prune_rate / write_rate:.2f} x the "
        f"write rate; {len(batches)} batches, longest {max(batches, default=0):.3f} s "
        f"(the first includes the look-up)"
    )
    print(f"a one-span write every 10 ms, while the graph is written: {probe.summary('write')}")
    print(f"a one-span write every 10 ms, while runs are pruned: {probe.summary('prune')}")
    print(f"a one-span write every 10 ms, alone: {probe.summary('between')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
