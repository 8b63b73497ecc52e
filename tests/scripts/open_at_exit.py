"""Leave spans of spangraph's blocks open and exit normally: a workflow and a step in a
daemon thread (blocked for good), a workflow in an asyncio task never finished (its loop
left unclosed), a workflow in a generator never closed (held by a global). spangraph's
exit hook ends them ``cancelled`` (``spangraph.exceptions.ProgramExited``) before it
flushes; a thread that is not a daemon, still working, is waited for (its run completes).

Usage: python open_at_exit.py GRAPH_URL PROJECT [offload] [child]
With ``child``, all of it happens in a process started by multiprocessing (fork), which
ends with ``os._exit`` after its finalizers (before Python 3.13 without ``atexit``).
Prints one line before exiting: ``OPEN {"thread": WORKFLOW_ID, "task": WORKFLOW_ID}``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import threading
import time

from opentelemetry.sdk.trace import TracerProvider

import spangraph

held: list[object] = []


def leave_spans_open() -> dict[str, str]:
    ids: dict[str, str] = {}
    started = threading.Event()

    def blocked() -> None:
        with spangraph.workflow("in-a-daemon-thread") as run, spangraph.step("blocked"):
            ids["thread"] = run.workflow_id
            started.set()
            threading.Event().wait()

    threading.Thread(target=blocked, daemon=True).start()
    started.wait(10)

    def still_working() -> None:  # not a daemon: the exit waits for it, its run completes
        with spangraph.workflow("still-working"):
            time.sleep(0.5)

    threading.Thread(target=still_working).start()

    loop = asyncio.new_event_loop()

    async def start_task() -> None:
        async def waits() -> None:
            async with spangraph.workflow("in-a-task") as run:
                ids["task"] = run.workflow_id
                await asyncio.Event().wait()

        held.append(asyncio.get_running_loop().create_task(waits()))
        await asyncio.sleep(0.05)

    loop.run_until_complete(start_task())
    held.append(loop)

    @spangraph.workflow(name="in-a-generator")
    def numbers():  # type: ignore[no-untyped-def]
        yield 1
        yield 2

    gen = numbers()
    next(gen)
    held.append(gen)
    return ids


def main(graph_url: str, project: str, offload: bool) -> None:
    spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_url,
        redis_url="off",
        project=project,
        offload=offload,
    )
    print("OPEN " + json.dumps(leave_spans_open()), flush=True)


if __name__ == "__main__":
    graph_url, project, offload = sys.argv[1], sys.argv[2], "offload" in sys.argv[3:]
    if "child" in sys.argv[3:]:
        process = multiprocessing.get_context("fork").Process(
            target=main, args=(graph_url, project, offload)
        )
        process.start()
        process.join(60)
        sys.exit(process.exitcode)
    main(graph_url, project, offload)
