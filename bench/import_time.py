#!/usr/bin/env python
"""What ``import spangraph`` costs a process, against importing the OTel SDK it builds on.

Run from the repository root, in the project's virtual environment::

    python bench/import_time.py               # 15 fresh interpreters a setup
    python bench/import_time.py --runs 40

Each run is a fresh interpreter that imports ``opentelemetry.sdk.trace`` (the baseline:
any program with OpenTelemetry tracing imports it) and then ``spangraph``, timing each
import with ``perf_counter``; a warm-up run first lets Python write its bytecode caches
(``PYTHONDONTWRITEBYTECODE`` is unset for the children), so what is timed is what a
program pays at every start, not a first compilation. Printed: the median of each, the
ratio of spangraph's import to the SDK's, and the modules of clients, servers and asyncio
an ``import spangraph`` loaded past what the SDK loaded (none is expected: redis, falkordb, neo4j and the service
are imported by ``configure()`` or the CLI command that needs them, asyncio by the code
that runs on it); the exit status is 1 if it loaded any. Nothing here asserts on
time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import NamedTuple

HEAVY = (
    "asyncio",
    "redis",
    "falkordb",
    "neo4j",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "httpx",
    "spangraph.embedded",
    "spangraph.stores.falkordb",
    "spangraph.stores.neo4j",
    "spangraph.server",
)
"""Modules an ``import spangraph`` should not load: asyncio is imported by the code that
runs on it, the rest by what needs them."""

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import opentelemetry.sdk.trace
t1 = time.perf_counter()
before = set(sys.modules)
import spangraph
t2 = time.perf_counter()
heavy = [m for m in json.loads(sys.argv[1]) if m in sys.modules and m not in before]
print(json.dumps({"sdk": t1 - t0, "spangraph": t2 - t1, "heavy": heavy}))
"""


class Run(NamedTuple):
    sdk: float
    """Seconds to import opentelemetry.sdk.trace."""
    spangraph: float
    """Seconds to import spangraph after it."""
    heavy: list[str]
    """The modules of HEAVY that were loaded."""


def one_run() -> Run:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the child failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return Run(result["sdk"], result["spangraph"], result["heavy"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="fresh interpreters (default 15)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    one_run()  # warm-up: bytecode caches written
    runs = [one_run() for _ in range(args.runs)]
    sdk = statistics.median(r.sdk for r in runs)
    sg = statistics.median(r.spangraph for r in runs)
    heavy = sorted({m for r in runs for m in r.heavy})
    print(
        f"# import time, median of {args.runs} fresh interpreters (Python {sys.version.split()[0]})"
    )
    print()
    print("| import | ms | ratio vs the OTel SDK |")
    print("|---|---:|---:|")
    print(f"| opentelemetry.sdk.trace (baseline) | {sdk * 1000:.1f} | 1.00 |")
    print(f"| spangraph, after the SDK | {sg * 1000:.1f} | {sg / sdk:.2f} |")
    print()
    print(
        "modules of HEAVY (clients, servers, asyncio) loaded by `import spangraph`: "
        + (", ".join(heavy) or "none")
    )
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
