"""Trace in processes multiprocessing starts, then exit without flushing anywhere.

multiprocessing ends the processes it forks (the ``fork`` and ``forkserver`` start
methods) with ``os._exit``: no ``atexit`` there. What they traced must be written all
the same.

Usage: python multiprocessing_children.py GRAPH_URL PROJECT START_METHOD [offload] [pool]
The parent configures spangraph; with ``fork`` the children inherit that, otherwise each
configures itself. Three children (or, with ``pool``, a ProcessPoolExecutor of two
workers running three tasks) each trace one workflow with one step.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys

from _children import run_all  # (this directory: the script's)

import spangraph


def _configure(graph_url: str, project: str, offload: bool) -> None:
    spangraph.configure(graph_url=graph_url, redis_url="off", project=project, offload=offload)


def work(i: int, graph_url: str, project: str, offload: bool, configure: bool) -> int:
    if configure:
        _configure(graph_url, project, offload)
    with spangraph.workflow(f"child-{i}"), spangraph.step(f"child-{i}-step"):
        pass
    return i


def main() -> None:
    graph_url, project, method = sys.argv[1:4]
    offload, pool = "offload" in sys.argv[4:], "pool" in sys.argv[4:]
    _configure(graph_url, project, offload)
    context = multiprocessing.get_context(method)
    configure = method != "fork"
    args = [(i, graph_url, project, offload, configure) for i in range(3)]
    if pool:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            done = [f.result() for f in [executor.submit(work, *a) for a in args]]
        assert done == [0, 1, 2], done
    else:
        run_all([context.Process(target=work, args=a) for a in args])


if __name__ == "__main__":
    main()
