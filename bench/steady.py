"""Steady state: does a span cost more once a long-running program has sent many?

spangraph's workers keep bounded state between batches (the run ids of recent spans for
the lineage of spans from other instrumentations, 65 536 of them; live messages mapped
ahead of a span's end, 16 384). A program that runs for hours sends far more spans than
those bounds, so every span it sends then also evicts an entry. This script measures
what a span costs the traced process (CPU time of all its threads, the calling thread's
loop plus the workers' mapping and writing, through ``force_flush()``) round after
round (for ``--setup offload``, and of its agent process), in rounds of ``--spans`` spans, with the ``bare`` setup of ``bench/overhead.py``
(OTel SDK + BatchSpanProcessor, no-op exporter) alternating as the baseline, and prints
the ratio of the last rounds (past every bound) to the first ones.

    python bench/steady.py                      # 12 rounds x 10 000 spans, about 40 s
    python bench/steady.py --setup offload      # the same with configure(offload=True)

It asserts nothing about time: the figure to read is ``late / early``, the cost of a
span past every bound over its cost in the first rounds (each divided by ``bare``'s in
the same round), which should stay near 1.0. It exits non-zero if a span was dropped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import overhead  # bench/overhead.py: the setups and the workload

from spangraph.embedded import EmbeddedServer

BOUND = 65_536
"""The largest bound of the workers' state (``mapping.Lineage``'s ``max_entries``)."""


def agent_cpu_s(setup: overhead.Setup) -> float:
    """CPU time of the ``offload`` agent process (0 for the other setups)."""
    agent = setup.offload._agent if setup.offload is not None else None
    return overhead.server_cpu_s(agent.pid) if agent is not None else 0.0


def measure(setup: overhead.Setup, n: int, tag: str) -> float:
    """CPU time of this process (and of the agent, for ``offload``) per span for one round
    of ``n`` spans, drained."""
    setup.drain()
    c0 = time.process_time() + agent_cpu_s(setup)
    overhead.workload(setup.provider, n, tag)
    setup.drain()
    return (time.process_time() + agent_cpu_s(setup) - c0) / (n + 1) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", default="full", choices=("full", "graph", "live", "offload"))
    ap.add_argument("--spans", type=int, default=10_000, help="spans a round (default 10 000)")
    ap.add_argument("--rounds", type=int, default=12, help="rounds (default 12)")
    ap.add_argument("--window", type=int, default=3, help="rounds in each of early and late")
    args = ap.parse_args(argv)
    if args.rounds < 2 * args.window + 1:
        ap.error("--rounds must be at least 2 x --window + 1 (the first round is a warm-up)")
    if (args.rounds - args.window) * args.spans < BOUND:
        print(
            f"note: the late rounds start before {BOUND} spans were sent: raise --rounds or"
            " --spans to measure past every bound"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spangraph-steady-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        setups = {name: overhead.make_setup(name, info) for name in ("bare", args.setup)}
        per_round: list[tuple[float, float]] = []
        try:
            dropped0 = setups[args.setup].dropped()
            for r in range(args.rounds):
                costs = {}
                for name in ("bare", args.setup) if r % 2 == 0 else (args.setup, "bare"):
                    setup = setups[name]
                    if setup.store is not None:  # the same graph size every round
                        setup.drain()
                        setup.store.delete_all()
                        setup.store.ensure_schema()
                    costs[name] = measure(setup, args.spans, f"{name}-{r}")
                per_round.append((costs["bare"], costs[args.setup]))
                sent = (r + 1) * (args.spans + 1)
                print(
                    f"round {r + 1:2}/{args.rounds} ({sent:7} spans sent): bare"
                    f" {costs['bare']:7.2f} us, {args.setup} {costs[args.setup]:7.2f} us a span"
                    f" (x{costs[args.setup] / costs['bare']:.2f})"
                )
            dropped = setups[args.setup].dropped() - dropped0
        finally:
            for setup in setups.values():
                setup.close()
            server.stop()
    ratios = [mine / bare for bare, mine in per_round]
    early = statistics.median(ratios[1 : 1 + args.window])  # round 1: warm-up
    late = statistics.median(ratios[-args.window :])
    print(
        f"\n{args.setup}: process CPU a span x bare, rounds 2-{1 + args.window}: {early:.2f};"
        f" last {args.window} rounds: {late:.2f}; late / early {late / early:.2f}"
        f" (dropped {dropped}; {time.perf_counter() - started:.0f} s)"
    )
    if dropped:
        print("spans were dropped: these figures are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
