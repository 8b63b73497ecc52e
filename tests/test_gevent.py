"""spangraph in programs gevent monkey-patches (gunicorn's and Celery's gevent workers):
greenlets' runs are written, in process and with offload, whether spangraph was imported
before the patching or after it; a killed greenlet's run ends ``cancelled``."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from spangraph.stores import FalkorDBStore

pytest.importorskip("gevent")

SCRIPT = Path(__file__).parent / "scripts" / "gevent_runs.py"


@pytest.mark.slow
@pytest.mark.parametrize("offload", [False, True], ids=["in-process", "offload"])
@pytest.mark.parametrize("order", ["patched-first", "imported-first"])
def test_greenlets_runs_are_written(
    store: FalkorDBStore, graph_url: str, order: str, offload: bool
) -> None:
    """With offload, nothing was written: gevent's subprocess makes the pipes to the
    agent non-blocking, and the first read that found no answer yet was taken for the
    agent's end (a new agent every time, flush waiting 30 s in vain); imported before
    the patching, the agent could not even start (a ``subprocess.Popen`` subclass bound
    to the standard class, which gevent's patching breaks)."""
    project = f"g-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), graph_url, project, order,
         *(["offload"] if offload else [])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("DONE ")]
    result = json.loads(line[5:])
    assert result["flushed"] is True, (result, done.stderr[-2000:])
    assert result["stats"]["graph"]["dropped"] == 0
    rows = store.query(
        "MATCH (w:Workflow {project_id: $p}) RETURN w.name AS name, w.state AS state",
        {"p": project},
    )
    states = {r["name"]: r["state"] for r in rows}
    assert states == {
        **{f"green-{i}": "completed" for i in range(20)},
        "killed": "cancelled",  # GreenletExit: a cancellation, not a failure
    }
    steps = store.query(
        "MATCH (:Workflow {project_id: $p})-[:PARENT_OF]->(s:Step) RETURN count(s) AS n",
        {"p": project},
    )
    assert steps[0]["n"] == 20
