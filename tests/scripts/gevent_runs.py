"""Workflows in gevent greenlets, spangraph configured after ``monkey.patch_all()``
(``patched-first``) or imported before it (``imported-first``: spangraph's modules were
bound to the standard subprocess, select and threading); in process or with offload.
One run is killed while open (``GreenletExit``).

Usage: python gevent_runs.py GRAPH_URL PROJECT ORDER [offload]
Prints one line: ``DONE {"flushed": bool, "stats": {...}, "killed": WORKFLOW_ID}``.
"""

from __future__ import annotations

import sys

if sys.argv[3] == "imported-first":
    import spangraph  # before the patching, on purpose

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402

import gevent  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import spangraph  # noqa: E402


def work(i: int) -> None:
    with spangraph.workflow(f"green-{i}"), spangraph.step("fetch"):
        gevent.sleep(0.01)


def killed(ids: list[str]) -> None:
    with spangraph.workflow("killed") as run:
        ids.append(run.workflow_id)
        gevent.sleep(60)


def main() -> None:
    graph_url, project = sys.argv[1], sys.argv[2]
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_url,
        redis_url="off",
        project=project,
        offload="offload" in sys.argv[4:],
    )
    ids: list[str] = []
    victim = gevent.spawn(killed, ids)
    gevent.joinall([gevent.spawn(work, i) for i in range(20)])
    victim.kill()
    flushed = spangraph.flush(20)
    print("DONE " + json.dumps({"flushed": flushed, "stats": sg.stats(), "killed": ids[0]}))


if __name__ == "__main__":
    main()
