"""Two runs hand work to one process pool (the ``fork`` start method) whose workers were
forked while the first run was current.

Usage: python pool_runs.py GRAPH_URL PROJECT executor|pool
Prints one JSON line: the two runs' workflow ids and the id of the step a plain
``multiprocessing.Process`` was started from.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import sys

import spangraph


def work(name: str) -> str:
    with spangraph.step(name):
        pass
    return name


def main() -> None:
    graph_url, project, kind = sys.argv[1:4]
    spangraph.configure(graph_url=graph_url, redis_url="off", project=project)
    context = multiprocessing.get_context("fork")
    ids = {}
    pools: list[object] = []

    def run(name: str) -> str:
        if not pools:  # made (and its workers forked) while run A is current
            if kind == "executor":
                pools.append(concurrent.futures.ProcessPoolExecutor(1, mp_context=context))
            else:
                pools.append(context.Pool(1))
        if kind == "executor":
            return pools[0].submit(work, name).result(60)  # type: ignore[attr-defined,no-any-return]
        return pools[0].apply_async(work, (name,)).get(60)  # type: ignore[attr-defined,no-any-return]

    for label in ("A", "B"):
        with spangraph.workflow(f"run-{label}") as wf:
            ids[label] = wf.workflow_id
            assert [run(f"work-{label}-{i}") for i in range(2)]
    if kind == "executor":
        pools[0].shutdown()  # type: ignore[attr-defined]
    else:
        pools[0].close()  # type: ignore[attr-defined]
        pools[0].join()  # type: ignore[attr-defined]
    with spangraph.workflow("run-C") as wf, spangraph.step("starts-a-process") as step:
        ids["C"] = wf.workflow_id
        ids["C_step"] = format(step.span.get_span_context().span_id, "016x")
        child = context.Process(target=work, args=("work-C",))
        child.start()
        child.join(60)
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main()
