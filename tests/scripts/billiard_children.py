"""Trace in processes billiard (Celery's process pool) starts, then exit without
flushing anywhere.

billiard ends the processes it forks with ``os._exit`` after its own exit function, and
(billiard 4) bootstraps them with multiprocessing's after-fork and exit functions without
importing ``multiprocessing.util`` first. What they traced must be written all the same.

Usage: python billiard_children.py GRAPH_URL PROJECT (inherit|own|pool|initializer)
[offload]
``inherit``: the parent configures spangraph, three ``billiard.Process`` children
inherit it; ``own``: the parent traces nothing, each child configures itself. ``pool``: the same with a ``billiard.Pool`` of two workers, a task each
(``maxtasksperchild=1``, as ``celery worker --max-tasks-per-child 1``). ``initializer``:
the parent traces nothing; each pool worker configures itself when it starts (as in
Celery's ``worker_process_init``). The pools are made as Celery's prefork pool makes
them: each worker's end sends Celery's ``worker_process_shutdown`` (billiard's pool ends
its workers with ``os._exit`` from inside, running no finalizer).
"""

from __future__ import annotations

import sys

import billiard
from _children import run_all  # (this directory: the script's)

import spangraph


def _configure(graph_url: str, project: str, offload: bool) -> None:
    spangraph.configure(graph_url=graph_url, redis_url="off", project=project, offload=offload)


def configured_work(i: int, graph_url: str, project: str, offload: bool) -> int:
    _configure(graph_url, project, offload)
    return work(i)


def work(i: int) -> int:
    with spangraph.workflow(f"child-{i}"), spangraph.step(f"child-{i}-step"):
        pass
    return i


def main() -> None:
    graph_url, project, mode = sys.argv[1:4]
    offload = "offload" in sys.argv[4:]
    if mode in ("inherit", "own"):
        assert "multiprocessing.util" not in sys.modules  # billiard alone does not load it
        if mode == "inherit":
            _configure(graph_url, project, offload)
            children = [billiard.Process(target=work, args=(i,)) for i in range(3)]
        else:
            children = [
                billiard.Process(target=configured_work, args=(i, graph_url, project, offload))
                for i in range(3)
            ]
        run_all(children)
        return
    from billiard.pool import Pool  # what Celery's prefork pool makes
    from celery.concurrency.prefork import process_destructor

    if mode == "pool":
        _configure(graph_url, project, offload)
        pool = Pool(2, maxtasksperchild=1, on_process_exit=process_destructor)
    else:
        pool = Pool(
            2,
            initializer=_configure,
            initargs=(graph_url, project, offload),
            maxtasksperchild=1,
            on_process_exit=process_destructor,
        )
    try:
        done = pool.map(work, range(3))
    finally:
        pool.close()
        pool.join()
    assert done == [0, 1, 2], done


if __name__ == "__main__":
    main()
