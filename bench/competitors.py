#!/usr/bin/env python
"""spangraph beside other tracing SDKs: per-span cost on the calling thread, same workload.

Run from the repository root, in the project's virtual environment, with the SDKs to
compare installed (each one missing is skipped, with a line saying how to install it)::

    pip install logfire langfuse traceloop-sdk arize-phoenix-otel
    python bench/competitors.py              # 20 000 spans x 5 rounds, agent-like 1 000 x 5 (~3 min)
    python bench/competitors.py --quick      # 5 000 spans x 3 rounds, 300 steps x 3 (< 1 min)
    python bench/competitors.py --setups bare,spangraph,logfire --spans 50000 --rounds 7

No SaaS endpoint is reached: the script starts a local OTLP/HTTP sink (a stdlib HTTP
server in its own process, on a free port, that answers 200 to every POST and keeps the
bodies only to count the spans in them after each round, outside the timed region), and
every SDK exports there, so their exporters do their real work (encoding the spans to
OTLP protobuf, compressing where they do, the HTTP round trip). spangraph writes to its
own embedded server (redis-server + FalkorDB, in a temporary directory, stopped at the end).

Setups, one a child process (``multiprocessing``, spawn), each building its tracing the
way its documentation's quickstart does, in its own TracerProvider:

* ``bare``      : TracerProvider + BatchSpanProcessor(no-op exporter), as in
  ``bench/overhead.py`` -- the baseline of every ratio;
* ``otlp``      : TracerProvider + BatchSpanProcessor(OTLPSpanExporter(sink)): the plain
  OTel SDK exporting OTLP/HTTP, what every competitor below does at least (a reference);
* ``spangraph`` : bare + GraphSpanProcessor + LiveEventProcessor in process, embedded
  store (``bench/overhead.py``'s ``full``; ``spangraph.configure()``);
* ``offload``   : bare + OffloadSpanProcessor (``spangraph.configure(offload=True)``);
* ``logfire``   : ``logfire.configure(send_to_logfire=False, console=False)`` with
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` at the sink;
* ``langfuse``  : ``Langfuse(public_key, secret_key, host=sink)`` (dummy keys);
* ``traceloop`` : ``Traceloop.init(api_endpoint=sink, api_key=..., telemetry_enabled=False,
  instruments=set())`` (OpenLLMetry);
* ``phoenix``   : ``phoenix.otel.register(endpoint=sink, batch=True)`` (OpenInference).

Why child processes: Logfire, Langfuse, Traceloop and Phoenix each set the global
TracerProvider, and some patch modules (Traceloop instruments ``threading``), so they
cannot share one interpreter without changing each other's figures. Each setup lives in
one long-lived child for the whole run (built and warmed up once, as ``bench/overhead.py``
keeps its setups across rounds), and the parent runs the rounds alternately across the
children, the order rotating every round, one child at a time while the others wait on
their pipe: so every setup, ``bare`` included, is measured in the same run, interleaved
with the others, in the same steady state (not a fresh interpreter per round, whose
imports and first-call costs would be part of every round).

The workload is ``bench/overhead.py``'s: part 1, one workflow span with N child spans of 5
attributes (``with tracer.start_as_current_span(...)``, the tracer got from the setup's
provider); part 3, the agent-like steps (~1 ms I/O wait and 3 events each). Measured as
there, in the child: the loop's wall time (the headline figure), the calling thread's CPU
time (``time.thread_time``), the process CPU time of all threads over loop + drain
(``force_flush`` after the loop, so nothing hides in the flush) and the CPU time of the
other process doing the setup's work (the embedded server and the offload agent for
spangraph, the sink for the others). Every figure is the median over rounds, divided by
``bare``'s. Nothing asserts on time; the script exits non-zero if spangraph dropped spans.

Every BatchSpanProcessor gets ``OTEL_BSP_MAX_QUEUE_SIZE=1000000`` (``--bsp-queue``), so
that every setup exports every span: with the SDK default of 2 048 the OTLP exporters
cannot keep up with the tight loop and drop part of its spans (``--bsp-queue 0`` shows
it; the *sink spans* column counts what arrived).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import overhead  # bench/overhead.py: the setups, the workload, the helpers
from overhead import loadavg, machine, med, server_cpu_s

from spangraph.embedded import EmbeddedServer, ServerInfo

SETUPS = ("bare", "otlp", "spangraph", "offload", "logfire", "langfuse", "traceloop", "phoenix")
PACKAGES = {  # setup -> (import name, distribution, pip name)
    "logfire": ("logfire", "logfire", "logfire"),
    "langfuse": ("langfuse", "langfuse", "langfuse"),
    "traceloop": ("traceloop.sdk", "traceloop-sdk", "traceloop-sdk"),
    "phoenix": ("phoenix.otel", "arize-phoenix-otel", "arize-phoenix-otel"),
}
VERSIONS = (
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "logfire",
    "langfuse",
    "traceloop-sdk",
    "arize-phoenix-otel",
    "openinference-instrumentation",
)
LABELS = {
    "bare": "OTel SDK + BatchSpanProcessor (no-op exporter)",
    "otlp": "OTel SDK + BatchSpanProcessor (OTLP/HTTP exporter to the sink)",
    "spangraph": "bare + spangraph graph + live, in process",
    "offload": "bare + spangraph graph + live in an agent process (`offload=True`)",
    "logfire": "Logfire (`logfire.configure`, OTLP to the sink)",
    "langfuse": "Langfuse (`Langfuse(...)`, OTLP to the sink)",
    "traceloop": "OpenLLMetry (`Traceloop.init`, OTLP to the sink)",
    "phoenix": "Phoenix / OpenInference (`register(batch=True)`, OTLP to the sink)",
}


# -- the OTLP/HTTP sink -------------------------------------------------------------------


def sink_main(conn: Any) -> None:
    """A local OTLP/HTTP endpoint: 200 to every POST; GET /stats counts the spans of the
    bodies received since the last GET (decoded then, not while they arrive) and forgets
    them."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[tuple[bytes, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith("/v1/traces"):
                with lock:
                    bodies.append((body, self.headers.get("Content-Encoding", "")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            with lock:
                taken = bodies[:]
                bodies.clear()
            spans = size = 0
            for body, encoding in taken:
                size += len(body)
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    import zlib

                    body = zlib.decompress(body)
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        spans += len(ss.spans)
            out = json.dumps({"requests": len(taken), "bytes": size, "spans": spans}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    conn.send(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.recv()  # any message, or EOF: stop
    server.shutdown()


def sink_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=60) as resp:
        return json.loads(resp.read())


# -- one setup in its child process -------------------------------------------------------


class Competitor:
    """The interface of overhead.Setup the rounds use, for an SDK's own set-up."""

    def __init__(self, name: str, provider: Any, flush: Callable[[], Any], sink_pid: int):
        self.name = name
        self.provider = provider
        self._flush = flush
        self.sink_pid = sink_pid
        self.store = None

    def drain(self) -> None:
        if self._flush() is False:
            raise RuntimeError(f"{self.name}: force_flush timed out")

    def dropped(self) -> int:
        return 0

    def other_cpu_s(self, server_pid: int) -> float:
        return server_cpu_s(self.sink_pid)

    def close(self) -> None:
        self.drain()


def build(name: str, info: ServerInfo, sink: str, sink_pid: int) -> Any:
    """Build setup ``name`` the way its SDK's quickstart does, exporting to ``sink``."""
    from opentelemetry import trace

    if name == "bare":
        return overhead.make_setup("bare", info)
    if name == "spangraph":
        return overhead.make_setup("full", info)
    if name == "offload":
        return overhead.make_setup("offload", info)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=overhead.RESOURCE)
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink}/v1/traces"))
        )
        return Competitor(name, provider, provider.force_flush, sink_pid)
    if name == "logfire":
        # logfire adds BatchSpanProcessor(OTLPSpanExporter()) to its own pipeline when
        # this is set (and not send_to_logfire): the documented way to another backend
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{sink}/v1/traces"
        import logfire

        logfire.configure(
            send_to_logfire=False,
            service_name="bench",
            console=False,  # the quickstart's console exporter would print every span
            metrics=False,  # no metrics in this workload; no periodic metric export
        )
        return Competitor(name, trace.get_tracer_provider(), logfire.force_flush, sink_pid)
    if name == "langfuse":
        from langfuse import Langfuse

        client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", host=sink)
        provider = trace.get_tracer_provider()  # Langfuse set it (no other was registered)

        def flush() -> bool:
            client.flush()
            return True

        return Competitor(name, provider, flush, sink_pid)
    if name == "traceloop":
        from traceloop.sdk import Traceloop

        Traceloop.init(
            app_name="bench",
            api_endpoint=sink,
            api_key="bench",
            telemetry_enabled=False,
            instruments=set(),  # no library instrumentation: nothing here would fire it
            disable_batch=False,
        )
        provider = trace.get_tracer_provider()
        return Competitor(name, provider, provider.force_flush, sink_pid)
    if name == "phoenix":
        from phoenix.otel import register

        provider = register(
            project_name="bench",
            endpoint=f"{sink}/v1/traces",
            protocol="http/protobuf",
            batch=True,  # the default (False) is a SimpleSpanProcessor: one POST a span
            auto_instrument=False,
            verbose=False,
        )
        return Competitor(name, provider, provider.force_flush, sink_pid)
    raise ValueError(name)


def worker_main(
    name: str, conn: Any, port: int, server_pid: int, sink: str, sink_pid: int, bsp_queue: int
) -> None:
    """A setup's child process: build, warm up, then run the rounds the parent asks for."""
    if bsp_queue:  # read by every BatchSpanProcessor that is not given a max_queue_size
        os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(bsp_queue)
    os.environ["TRACELOOP_TELEMETRY"] = "false"
    os.environ["TRACELOOP_METRICS_ENABLED"] = "false"
    os.environ["OTEL_SDK_DISABLED"] = "false"
    info = ServerInfo(pid=server_pid, port=port, home="")
    works = {"tight": overhead.workload, "agent": overhead.agent_workload}
    try:
        setup = build(name, info, sink, sink_pid)
        for kind, warm in (("tight", 2000), ("agent", 100)):
            works[kind](setup.provider, warm, f"warmup-{kind}")
            setup.drain()
        sink_stats(sink)  # forget the warm-up's exports
        conn.send({"ok": True})
    except Exception as exc:  # reported by the parent, which skips the setup
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    while True:
        msg = conn.recv()
        if msg is None:
            break
        kind, n, tag = msg
        res = overhead.measure_round(setup, n, server_pid, tag, works[kind])
        res["sink"] = sink_stats(sink)
        conn.send(res)
    if hasattr(setup, "offload") and hasattr(setup, "graph"):  # overhead.Setup
        for proc_name, proc in (("graph", setup.graph), ("live", setup.live)):
            if proc is not None:
                print(f"  {name}/{proc_name} stats(): {proc.stats()}", flush=True)
    setup.close()
    conn.send("closed")


# -- the parent ---------------------------------------------------------------------------


def installed(name: str) -> bool:
    if name not in PACKAGES:
        return True
    import importlib.util

    module, _, pip_name = PACKAGES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(f"skipped {name}: not installed (pip install {pip_name})")
    return found


def versions() -> dict[str, str]:
    out = {}
    for dist in VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_part(
    title: str,
    kind: str,
    names: list[str],
    children: dict[str, Any],
    n: int,
    rounds: int,
) -> dict[str, list[dict]]:
    print(f"\n## {title}: {rounds} rounds x {n} per setup\n")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            children[name].send((kind, n, f"{name}-{kind}-{r}"))
            res = children[name].recv()
            if res["dropped"] or res["bsp_lost"]:
                print(
                    f"  ! {name}: {res['dropped']} dropped by spangraph,"
                    f" {res['bsp_lost']} by the BSP; round not counted"
                )
                res["invalid"] = True
            results[name].append(res)
        line = "  ".join(f"{name} {results[name][-1]['loop_us']:.2f}" for name in names)
        print(f"round {r + 1}/{rounds} loop us/span: {line}  (load {loadavg()})", flush=True)
    return results


def table(results: dict[str, list[dict]], md: bool) -> None:
    def m(name: str, key: str) -> float:
        return med([r[key] for r in results[name] if not r.get("invalid")])

    def ratio(name: str, key: str) -> float:
        return m(name, key) / m("bare", key)

    if md:
        print(
            "| setup | loop µs/span | ratio | main-thread CPU µs/span | ratio |"
            " process CPU µs/span (loop+drain) | ratio | other process CPU µs/span |"
            " spans at the sink a round |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print(
            f"{'setup':10} {'loop us':>8} {'ratio':>6} {'main CPU':>9} {'ratio':>6}"
            f" {'main GC':>8} {'loop+drain':>10} {'ratio':>6} {'proc CPU':>9} {'ratio':>6}"
            f" {'other CPU':>9} {'sink spans':>10} {'sink KB':>8}"
        )
    for name in results:
        sink_spans = med([r["sink"]["spans"] for r in results[name]])
        sink_kb = med([r["sink"]["bytes"] / 1024 for r in results[name]])
        if md:
            print(
                f"| {LABELS[name]} | {m(name, 'loop_us'):.2f} | {ratio(name, 'loop_us'):.2f} |"
                f" {m(name, 'main_cpu_us'):.2f} | {ratio(name, 'main_cpu_us'):.2f} |"
                f" {m(name, 'proc_cpu_us'):.2f} | {ratio(name, 'proc_cpu_us'):.2f} |"
                f" {m(name, 'other_cpu_us'):.2f} | {sink_spans:.0f} |"
            )
        else:
            print(
                f"{name:10} {m(name, 'loop_us'):8.2f} {ratio(name, 'loop_us'):6.2f}"
                f" {m(name, 'main_cpu_us'):9.2f} {ratio(name, 'main_cpu_us'):6.2f}"
                f" {m(name, 'main_gc_us'):8.2f} {m(name, 'drain_us'):10.2f}"
                f" {ratio(name, 'drain_us'):6.2f} {m(name, 'proc_cpu_us'):9.2f}"
                f" {ratio(name, 'proc_cpu_us'):6.2f} {m(name, 'other_cpu_us'):9.2f}"
                f" {sink_spans:10.0f} {sink_kb:8.0f}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--spans", type=int, default=None, help="child spans a round (default 20000; 5000 quick)"
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds a setup (default 5; 3 with --quick)"
    )
    ap.add_argument(
        "--agent-spans",
        type=int,
        default=None,
        help="steps a round of the agent-like workload (default 1000; 300 with --quick; 0: skip)",
    )
    ap.add_argument(
        "--agent-rounds",
        type=int,
        default=None,
        help="rounds of the agent-like workload (default 5; 3 with --quick)",
    )
    ap.add_argument(
        "--setups", default=",".join(SETUPS), help=f"comma-separated, of {','.join(SETUPS)}"
    )
    ap.add_argument(
        "--bsp-queue",
        type=int,
        default=1_000_000,
        help="OTEL_BSP_MAX_QUEUE_SIZE in every setup (default 1000000, so that no exporter"
        " drops spans and every setup exports them all; 0: the SDK default, 2048, with which"
        " the OTLP exporters drop part of a tight loop's spans)",
    )
    ap.add_argument("--quick", action="store_true", help="small run (about a minute)")
    args = ap.parse_args(argv)
    if args.spans is None:
        args.spans = 5_000 if args.quick else 20_000
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.agent_spans is None:
        args.agent_spans = 300 if args.quick else 1_000
    if args.agent_rounds is None:
        args.agent_rounds = 3 if args.quick else 5
    wanted = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SETUPS]
    if unknown:
        ap.error(f"unknown setups {unknown}; known: {', '.join(SETUPS)}")
    if "bare" not in wanted:
        wanted.insert(0, "bare")  # the baseline of every ratio
    names = [s for s in wanted if installed(s)]

    m = machine()
    print(
        "# spangraph beside other tracing SDKs\n\n"
        f"{m['cpus']} CPUs, {m['cpu']}, Python {m['python']}, {m['platform']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(
        f"OTEL_BSP_MAX_QUEUE_SIZE={args.bsp_queue}" if args.bsp_queue else "BSP queues: SDK default"
    )
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    code = 0
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as home:
        server = EmbeddedServer(home)
        info = server.ensure_running()
        sink_conn, sink_child_conn = ctx.Pipe()
        sink_proc = ctx.Process(target=sink_main, args=(sink_child_conn,), daemon=True)
        sink_proc.start()
        sink_port = sink_conn.recv()
        sink = f"http://127.0.0.1:{sink_port}"
        print(
            f"embedded server pid {info.pid} port {info.port}; OTLP sink pid {sink_proc.pid}"
            f" at {sink}; load average {loadavg()}"
        )
        children: dict[str, Any] = {}
        procs: dict[str, Any] = {}
        try:
            for name in names:
                parent_conn, child_conn = ctx.Pipe()
                proc = ctx.Process(
                    target=worker_main,
                    args=(
                        name,
                        child_conn,
                        info.port,
                        info.pid,
                        sink,
                        sink_proc.pid,
                        args.bsp_queue,
                    ),
                    name=f"bench-{name}",
                )
                proc.start()
                reply = parent_conn.recv()
                if not reply["ok"]:
                    print(f"skipped {name}: its set-up failed: {reply['error']}")
                    proc.join(10)
                    continue
                children[name], procs[name] = parent_conn, proc
            names = [n for n in names if n in children]
            if "bare" not in children:
                raise RuntimeError("the bare setup failed")
            tight = run_part(
                "1. Tight loop of empty spans (worst case)",
                "tight",
                names,
                children,
                args.spans,
                args.rounds,
            )
            agent = None
            if args.agent_spans > 0:
                agent = run_part(
                    "3. Agent-like workload (~1 ms I/O wait, 3 events a step)",
                    "agent",
                    names,
                    children,
                    args.agent_spans,
                    args.agent_rounds,
                )
        finally:
            for name, conn in children.items():
                try:
                    conn.send(None)
                    conn.recv()
                except (EOFError, OSError):
                    pass
                procs[name].join(30)
            sink_conn.send("stop")
            sink_proc.join(10)
            server.stop()

    print("\n## What the figures mean\n")
    print(
        "loop us       wall time of the create+end loop / spans, median of rounds (headline)\n"
        "main CPU      CPU time of the calling thread alone over the loop\n"
        "main GC       of which: in Python's cyclic garbage collector\n"
        "loop+drain    wall time from the first span to force_flush() done\n"
        "proc CPU      CPU time of every thread of the setup's process over loop+drain\n"
        "other CPU     CPU time of the other process doing the setup's work over loop+drain:\n"
        "              embedded redis-server + FalkorDB (and the agent for offload) for\n"
        "              spangraph, the OTLP sink's (receiving only) for the others\n"
        "sink spans    spans received by the sink a round (N + 1 = every span exported)\n"
        "ratio         divided by bare's figure of the same run"
    )
    print("\n## Results\n")
    print(f"1. tight loop, {args.rounds} rounds x {args.spans} spans")
    table(tight, md=False)
    if agent is not None:
        print(f"3. agent-like, {args.agent_rounds} rounds x {args.agent_spans} steps")
        table(agent, md=False)
    print("\n## Markdown\n")
    print(
        f"Machine: {m['cpus']} CPUs, {m['cpu']}, Python {m['python']}"
        f" (load average {loadavg()} at the end)."
    )
    print()
    table(tight, md=True)
    if agent is not None:
        print()
        table(agent, md=True)
    lost = {
        name: sum(r["dropped"] for part in (tight, agent or {}) for r in part.get(name, []))
        for name in names
        if name in ("spangraph", "offload")
    }
    print(f"\nspangraph dropped spans per setup: {lost} (must be 0 for valid figures)")
    if any(lost.values()):
        code = 1
    print(f"\n(total {time.perf_counter() - started:.0f} s; load average at the end {loadavg()})")
    return code


if __name__ == "__main__":
    sys.exit(main())
