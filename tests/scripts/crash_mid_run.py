"""Start a workflow and a step, write them to the graph, say READY, then hang until the
test kills this process with SIGKILL (no shutdown, no flush, no span end).

With ``sigterm``, SIGTERM is turned into KeyboardInterrupt first, as docs/sdk.md shows:
then SIGTERM ends the spans ``cancelled`` and spangraph's shutdown at exit writes them.

Usage: python crash_mid_run.py GRAPH_URL PROJECT [offload] [sigterm]
Prints one line: ``READY {"workflow_id": ..., "workflow_span_id": ..., "step_span_id": ...,
"agent_pid": ...}`` (``agent_pid``: with ``offload``, the agent process; else null).
"""

from __future__ import annotations

import json
import signal
import sys
import time

from opentelemetry.sdk.trace import TracerProvider

import spangraph


def main() -> None:
    graph_url, project = sys.argv[1], sys.argv[2]
    offload = "offload" in sys.argv[3:]
    if "sigterm" in sys.argv[3:]:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=graph_url,
        redis_url="off",
        project=project,
        offload=offload,
    )
    agent = sg.offload_processor._agent if sg.offload_processor is not None else None
    with spangraph.workflow("doomed-run") as run, spangraph.step("never-ends") as step:
        if not spangraph.flush(10):
            sys.exit("flush timed out")
        ready = {
            "workflow_id": run.workflow_id,
            "workflow_span_id": run.span_id,
            "step_span_id": step.span_id,
            "agent_pid": agent.pid if agent is not None else None,
        }
        print("READY " + json.dumps(ready), flush=True)
        time.sleep(120)


if __name__ == "__main__":
    main()
