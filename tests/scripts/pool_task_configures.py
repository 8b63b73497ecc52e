"""A process pool task (``spawn``) attaches its caller's context, as docs/sdk.md shows,
then configures spangraph itself, as a spawned worker must: the context stays.

Usage: python pool_task_configures.py GRAPH_URL PROJECT
Prints one JSON line: the caller's trace id, and the task's before and after configure().
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import sys

from opentelemetry import context, propagate, trace

import spangraph


def _trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def task(carrier: dict[str, str], graph_url: str, project: str) -> tuple[str, str]:
    token = context.attach(propagate.extract(carrier))
    try:
        before = _trace_id()
        spangraph.configure(graph_url=graph_url, redis_url="off", project=project)
        return before, _trace_id()
    finally:
        context.detach(token)


def main() -> None:
    graph_url, project = sys.argv[1:3]
    spangraph.configure(graph_url=graph_url, redis_url="off", project=project, propagate=True)
    spawn = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as executor,
        spangraph.workflow("caller"),
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        before, after = executor.submit(task, carrier, graph_url, project).result(60)
        print(json.dumps({"caller": _trace_id(), "before": before, "after": after}))


if __name__ == "__main__":
    main()
