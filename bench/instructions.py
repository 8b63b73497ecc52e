#!/usr/bin/env python
"""What spangraph costs, counted in instructions: per span, on the calling thread and in the
whole traced process, against the bare OTel SDK.

Run from the repository root, in the project's virtual environment, on a machine with
``valgrind`` (Debian: ``apt-get install valgrind``)::

    python bench/instructions.py                      # bare, handoff, offload, full; ~4 min
    python bench/instructions.py --setups bare,offload --reps 1
    python bench/instructions.py --workload agent --setups bare,full,offload

Wall-clock figures (``bench/overhead.py``) move with whatever else the machine is doing.
Instruction counts do not: ``valgrind --tool=callgrind`` counts the instructions each
thread executes, the same for the same program and inputs however busy the machine is.
This script runs the tight loop of ``bench/overhead.py`` (one workflow span with N child
spans of 5 attributes, on the same setups, built by the same code) under callgrind, in a
child process per run, twice: with a small and a large N. The difference between the two
counts, divided by the difference in spans, is the cost of one span; start-up, imports,
warm-up and shutdown cancel out. After the warm-up, ``gc.collect()`` and ``gc.freeze()``
leave the heap built so far out of later garbage collections: whether a collection of the
whole start-up heap falls inside a run or not would otherwise decide a run's count; the
collections of what the loop itself allocates stay in. Each run ends with ``force_flush()``, so the work a
setup's threads do for those spans is inside the count.

``--workload agent`` runs the agent-like workload of ``bench/overhead.py`` instead (steps
of 5 attributes and 3 events that each sleep ~1 ms, releasing the GIL as a model or tool
call would; default 100 and 500 steps): the cost a step, where spangraph's threads mostly
run while the calling thread waits. Its whole-process figure varies a little from run to
run (how the workers' batches fall around the sleeps); the calling thread's does not.

Figures a setup, each divided by ``bare``'s:

* *calling thread*: what the thread that creates the spans executes (callgrind's
  thread 1);
* *calling thread without GC*: the same, less what it spent in the cyclic garbage
  collector (``gc_collect_main``, inclusive, from ``callgrind_annotate``). A collection
  runs on whichever thread's allocation crosses the collector's threshold, so when
  spangraph's threads allocate, some of the collections of the program's own garbage fall
  on them and some of theirs on the calling thread: this figure is the calling thread's
  own work, which that does not move;
* *whole process*: every thread of the traced process, so the work spangraph's own threads
  do (taking the GIL from the calling thread) is in it.

Processes other than the traced one (the embedded server, the ``offload`` agent) run at
native speed outside valgrind and are not counted here; ``bench/overhead.py`` reports
their CPU time.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import overhead  # bench/overhead.py: the setups and the workload

from spangraph.embedded import EmbeddedServer, ServerInfo

DEFAULT_SETUPS = ("bare", "handoff", "offload", "full")
WORKLOADS = {"tight": overhead.workload, "agent": overhead.agent_workload}
DEFAULT_SPANS = {"tight": (1_000, 5_000), "agent": (100, 500)}
WARMUP_SPANS = {"tight": 300, "agent": 100}


def child(setup: str, spans: int, port: int, workload: str = "tight") -> int:
    """One counted run: build ``setup``, warm up, run ``workload`` with ``spans`` child
    spans, flush, exit."""
    info = ServerInfo(pid=0, port=port, home="")
    built = overhead.make_setup(setup, info)
    run, warmup = WORKLOADS[workload], WARMUP_SPANS[workload]
    run(built.provider, warmup, "warm-up")
    built.drain()
    gc.collect()
    gc.freeze()  # the heap so far (imports, set-up) is left out of later collections
    run(built.provider, spans, "counted")
    built.drain()
    dropped = built.dropped() + (warmup + spans + 2 - built.exporter.exported)
    if dropped:
        print(f"{setup}: {dropped} spans dropped", file=sys.stderr)
        return 3
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: the same for every setup, and quicker


_GC_LINE = re.compile(r"^\s*([\d,]+) .*:gc_collect_main \[", re.M)


def thread_totals(out_dir: str) -> list[tuple[int, int]]:
    """(instructions, of which in the garbage collector) per thread of one callgrind
    run, thread 1 first."""
    totals: list[tuple[int, int, int]] = []
    for name in os.listdir(out_dir):
        number = int(name.rsplit("-", 1)[1]) if "-" in name else 0
        path = os.path.join(out_dir, name)
        with open(path) as fh:
            for line in fh:
                if line.startswith("summary:"):
                    total = int(line.split()[1])
                    break
            else:
                continue
        annotated = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        in_gc = sum(int(m.group(1).replace(",", "")) for m in _GC_LINE.finditer(annotated))
        totals.append((number, total, in_gc))
    return [(total, in_gc) for _, total, in_gc in sorted(totals)]


def counted(setup: str, spans: int, port: int, workload: str) -> tuple[int, int, int]:
    """(calling thread, calling thread without GC, whole process) instructions of one
    child run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="spangraph-callgrind-") as out_dir:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--fair-sched=yes",
            f"--callgrind-out-file={out_dir}/cg",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            setup,
            str(spans),
            str(port),
            workload,
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{setup} x {spans}: exit {done.returncode}\n{done.stderr[-2000:]}")
        threads = thread_totals(out_dir)
    return threads[0][0], threads[0][0] - threads[0][1], sum(t for t, _ in threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--spans",
        type=int,
        nargs=2,
        default=None,
        metavar=("SMALL", "LARGE"),
        help="child spans (steps) of the two runs a setup (default 1000 5000; agent: 100 500)",
    )
    ap.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="tight",
        help="tight: the tight loop of empty spans (default); agent: the agent-like steps",
    )
    ap.add_argument("--reps", type=int, default=2, help="pairs of runs a setup (default 2)")
    ap.add_argument(
        "--setups",
        default=",".join(DEFAULT_SETUPS),
        help=f"comma-separated, from {', '.join(overhead.CONFIGS)} (default: %(default)s)",
    )
    ap.add_argument(
        "--child", nargs=4, metavar=("SETUP", "SPANS", "PORT", "WORKLOAD"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        setup, spans, port, workload = args.child
        return child(setup, int(spans), int(port), workload)

    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = sorted(set(setups) - set(overhead.CONFIGS))
    if unknown:
        ap.error(
            f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(overhead.CONFIGS)}"
        )
    if "bare" not in setups:
        setups.insert(0, "bare")
    small, large = args.spans or DEFAULT_SPANS[args.workload]
    if not 0 < small < large:
        ap.error("--spans: need 0 < SMALL < LARGE")
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    m = overhead.machine()
    print(
        "# spangraph instruction counts (valgrind --tool=callgrind)\n\n"
        f"{m['cpus']} CPUs, {m['cpu']}, Python {m['python']}, {m['platform']}\n"
        f"workload: {args.workload}; child spans a run: {small} and {large}"
        f" (+{WARMUP_SPANS[args.workload]} warm-up); {args.reps} pair(s) a setup"
    )
    started = time.perf_counter()
    per_span: dict[str, list[tuple[float, float, float]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        try:
            for rep in range(args.reps):
                for setup in setups:
                    lo = counted(setup, small, info.port, args.workload)
                    hi = counted(setup, large, info.port, args.workload)
                    main_i, own_i, proc_i = (
                        (h - lo_) / (large - small) for h, lo_ in zip(hi, lo, strict=True)
                    )
                    per_span[setup].append((main_i, own_i, proc_i))
                    print(
                        f"pair {rep + 1} {setup:8s} calling thread {main_i:10,.0f}"
                        f" (without GC {own_i:10,.0f})"
                        f"  whole process {proc_i:10,.0f} instructions a span",
                        flush=True,
                    )
        finally:
            server.stop()

    base = [statistics.median(p[i] for p in per_span["bare"]) for i in range(3)]
    print(
        "\n| setup | calling thread, instructions a span | ratio vs bare "
        "| calling thread without GC | ratio vs bare "
        "| whole process, instructions a span | ratio vs bare |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setup in setups:
        cells = []
        for i in range(3):
            value = statistics.median(p[i] for p in per_span[setup])
            cells.append(f"{value:,.0f} | {value / base[i]:.3f}")
        print(f"| {setup} | {' | '.join(cells)} |")
    print(f"\nmedians over {args.reps} pair(s); total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
