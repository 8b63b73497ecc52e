#!/usr/bin/env python
"""Live streams under load: delivery latency, loss and order for many WebSocket clients.

Run from the repository root, in the project's virtual environment::

    python bench/live.py              # 500 workflow + 100 project clients, 2 000 events/s, 10 s
    python bench/live.py --quick      # 50 + 10 clients, 3 s
    python bench/live.py --rate 500 --workflow-clients 200 --project-clients 0 --seconds 5

It starts its own embedded server (redis-server + FalkorDB module) in a temporary
directory and stops it at the end. Each part runs in its own process (spawned), so they
share the machine's cores as the operating system sees fit:

* the service: ``create_app`` in uvicorn with the defaults of ``spangraph serve`` (uvloop,
  httptools, the websockets sans-I/O protocol) except permessage-deflate, which is off
  (the clients here do not offer it; browsers do, and it costs CPU per client and frame);
* the clients: ``--client-procs`` processes (uvloop), each connection a minimal RFC 6455
  client of a few µs a frame (with the ``websockets`` library, tried first, the clients
  were the bottleneck and the figures measured them rather than the service). The
  workflow clients are on ``WS /api/stream/workflows/{id}``, the project clients on
  ``WS /api/stream/projects/{id}`` of the same run; each waits for ``subscribed`` before
  the producer starts;
* the floor: a minimal Redis Pub/Sub subscriber on the run's channel, in a process of its
  own: what the SDK and Redis alone cost;
* the producer: the SDK (``spangraph.configure(graph=False)``) emitting
  ``spangraph.event("tick", sent_ns=time.time_ns(), i=i)`` inside one workflow at
  ``--rate`` events/s for ``--seconds`` s, paced in 1 ms steps.

Latency is a client's ``time.time_ns()`` when a frame arrives minus an event's
``sent_ns`` (one clock: one machine): the SDK's queue, Redis, the hub, the WebSocket and
the client's own wait for a core. One client in ``--full-every`` (10) parses every message:
every ``seq`` in order, and the latency of every event (p50, p99). The others check each
frame by its message count and first and last ``seq`` (a frame that does not follow on is
parsed message by message) and time the frame's oldest event (max). Lost (never received)
and out of order (received after a later one, or twice) must be 0 for every client; clients
cut off as too slow (close code 4008) are counted. The service also reports its own lag:
from a batch's arrival from Redis to its write to each client's connection. Nothing here
asserts: the figures are printed with the CPU time of each process and of the machine
(``/proc``, Linux), the service's CPU time per write, and the ratio to the floor.
``--batch-window`` overrides the hub's ``batch_window`` for experiments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import multiprocessing as mp
import os
import platform
import re
import resource
import signal
import socket
import sys
import tempfile
import time
import uuid
from array import array
from typing import Any

SEQ = re.compile(rb'"seq":(\d+),"workflow_id"')
SENT = re.compile(rb'"sent_ns":(\d+)')
DIGITS = re.compile(rb"\d+")
SKETCH = 20  # every 20th sorted latency goes to the report (5% of the values, exact ends)


# -- helpers ------------------------------------------------------------------------------


def cpu_s(pid: int | None = None) -> float:
    """utime + stime of a process (this one by default), in seconds (Linux)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"


def int_at(data: bytes, i: int) -> int:
    """The whole number written at ``data[i:]``."""
    return int(DIGITS.match(data, i).group())  # type: ignore[union-attr]


def cpu_times() -> list[int]:
    """The machine's CPU time so far (``/proc/stat``): user, nice, system, idle, iowait,
    irq, softirq, steal, in clock ticks."""
    with open("/proc/stat") as fh:
        return [int(v) for v in fh.readline().split()[1:9]]


def busy(before: list[int], after: list[int]) -> str:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    user, system, idle, softirq, steal = d[0] + d[1], d[2] + d[5], d[3] + d[4], d[6], d[7]
    return (
        f"user {user / total:.0%}, system {system / total:.0%}, softirq {softirq / total:.0%}, "
        f"steal {steal / total:.0%}, idle {idle / total:.0%}"
    )


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return "?"


class Tally:
    """One subscriber's view of the run: seqs in order, lost, repeated, latencies.

    A *full* tally parses every message of every frame: its ``seq`` (in order, none
    missing, none twice) and its latency. The others check each frame by its message
    count and its first and last ``seq`` (any loss, repeat or reordering across frames
    shows; a frame that fails is then parsed message by message) and sample the latency
    of the frame's oldest event, which is the largest in the frame: Python clients that
    parse all of 1.2 million messages a second would need more cores than the service.
    """

    __slots__ = ("close", "expected", "frames", "full", "lat_us", "late", "missing", "received")

    def __init__(self, full: bool = True) -> None:
        self.full = full
        self.expected = 1  # the next seq in order
        self.received = 0
        self.frames = 0
        self.late = 0  # out of order or repeated
        self.missing: set[int] = set()
        self.lat_us = array("q")
        self.close: int | None = None

    def frame(self, data: bytes, start: int, end: int, now_ns: int) -> None:
        """Take the text frame ``data[start:end]``, received at ``now_ns``."""
        self.frames += 1
        if self.full:
            seqs = list(map(int, SEQ.findall(data, start, end)))
            if seqs:
                self.received += len(seqs)
                expected = self.expected
                if seqs[0] == expected and seqs == list(range(expected, expected + len(seqs))):
                    self.expected += len(seqs)  # the common case: the next seqs, in order
                else:
                    self._slow(seqs)
            self.lat_us.extend([(now_ns - int(s)) // 1000 for s in SENT.findall(data, start, end)])
            return
        n = data.count(b',"seq":', start, end)
        if n:
            self.received += n
            first = int_at(data, data.find(b',"seq":', start, end) + 7)
            last = int_at(data, data.rfind(b',"seq":', start, end) + 7)
            if first == self.expected and last == first + n - 1:
                self.expected = last + 1
            else:
                self._slow(list(map(int, SEQ.findall(data, start, end))))
        oldest = data.find(b'"sent_ns":', start, end)
        if oldest >= 0:
            self.lat_us.append((now_ns - int_at(data, oldest + 10)) // 1000)

    def _slow(self, seqs: list[int]) -> None:
        for seq in seqs:
            if seq == self.expected:
                self.expected += 1
            elif seq > self.expected:
                self.missing.update(range(self.expected, seq))
                self.expected = seq + 1
            else:
                self.late += 1
                self.missing.discard(seq)

    def summary(self, final_seq: int) -> dict[str, Any]:
        lost = len(self.missing) + max(0, final_seq - self.expected + 1)
        return {
            "received": self.received,
            "frames": self.frames,
            "lost": lost,
            "late": self.late,
            "close": self.close,
        }


def sketch(values: array) -> list[int]:
    ordered = sorted(values)
    if not ordered:
        return []
    return [*ordered[::SKETCH], ordered[-1]]


def bucket(histogram: dict[str, int], q: float) -> str:
    """The bucket of a ``{"<=N": count}`` histogram that holds quantile ``q``."""
    total, seen = sum(histogram.values()), 0
    for label, count in histogram.items():
        seen += count
        if seen >= q * total:
            return label
    return "?"


def percentile(sketches: list[list[int]], q: float) -> float:
    merged = sorted(v for s in sketches for v in s[:-1])
    if not merged:
        return float("nan")
    if q >= 1:
        return max(s[-1] for s in sketches if s) / 1000
    return merged[min(len(merged) - 1, int(q * len(merged)))] / 1000


# -- processes ----------------------------------------------------------------------------


def run_service(port: int, graph_url: str, redis_url: str, home: str, hub: dict, out) -> None:
    import functools

    import uvicorn

    from spangraph.config import Settings
    from spangraph.server import streams
    from spangraph.server.app import create_app

    if hub:  # hub options other than the defaults, for experiments (read at startup)
        streams.StreamHub = functools.partial(streams.StreamHub, **hub)

    settings = Settings.from_env({}, graph_url=graph_url, redis_url=redis_url, home=home)
    app = create_app(settings, start_embedded=False)
    config = uvicorn.Config(
        app,
        port=port,
        log_level="warning",
        ws_per_message_deflate=False,  # see the module docstring
        timeout_graceful_shutdown=2,
    )
    # uvicorn raises the signal it stopped for again once it is done: let it pass.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()  # until SIGTERM
    out.put(app.state.hub.stats())


class WSClient(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455, no extensions): a few µs a frame, so that
    600 clients fit on the cores the service also needs. Answers pings, records the close
    code, hands every text frame after the first (``subscribed``) to its :class:`Tally`."""

    def __init__(self, host: str, path: str, tally: Tally, subscribed: asyncio.Event) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.tally = tally
        self.subscribed = subscribed
        self.buf = bytearray()
        self.upgraded = False
        self.frames = 0
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.buf:  # the rest of a frame cut short by the last read
            self.buf += data
            data = bytes(self.buf)
            self.buf.clear()
        pos, size = 0, len(data)
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf += data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(data[:end].decode(errors="replace"))
            pos, self.upgraded = end + 4, True
        while size - pos >= 2:  # frames are read in place: no copies
            opcode, n, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
            if n == 126:
                n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            start = pos + head
            end = start + n
            if size - pos < head or end > size:
                break
            pos = end
            if opcode in (0x1, 0x0):  # text (the service sends no fragments)
                self.frames += 1
                if self.frames == 1:
                    self.subscribed.set()
                else:
                    self.tally.frame(data, start, end, now)
            elif opcode == 0x9:  # ping: pong, masked with a zero key
                payload = data[start:end]
                self.transport.write(bytes([0x8A, 0x80 | len(payload), 0, 0, 0, 0]) + payload)
            elif opcode == 0x8:
                code = data[start : start + 2]
                self.tally.close = int.from_bytes(code, "big") if n >= 2 else 1005
                self.transport.close()
        if pos < size:
            self.buf += memoryview(data)[pos:]


def run_clients(host: str, port: int, paths: list[tuple[str, bool]], ready, done, final, out):
    import uvloop

    raise_fd_limit()
    out.put(uvloop.run(_clients(host, port, paths, ready, done, final)))


async def _clients(host, port, paths, ready, done, final) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tallies = [Tally(full) for _, full in paths]
    events = [asyncio.Event() for _ in paths]
    for i in range(0, len(paths), 50):  # connect in waves (the accept backlog)
        await asyncio.gather(
            *(
                loop.create_connection(
                    lambda p=p, t=t, e=e: WSClient(f"{host}:{port}", p, t, e), host, port
                )
                for (p, _), t, e in zip(
                    paths[i : i + 50], tallies[i : i + 50], events[i : i + 50], strict=True
                )
            )
        )
    for event in events:
        await asyncio.wait_for(event.wait(), 120)
    ready.put(len(paths))
    cpu0 = cpu_s()
    while not done.is_set():
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 30  # the producer is done: give the stragglers 30 s
    while time.monotonic() < deadline and any(
        t.expected <= final.value and t.close is None for t in tallies
    ):
        await asyncio.sleep(0.05)
    cpu = cpu_s() - cpu0
    pending = [t for t in tallies if t.expected <= final.value and t.close is None]
    return {
        "paths": paths,
        "tallies": [t.summary(final.value) for t in tallies],
        "sketches": [sketch(t.lat_us) for t in tallies],
        "full": [t.full for t in tallies],
        "cpu_s": cpu,
        "unfinished": len(pending),
    }


class PubSubClient(asyncio.Protocol):
    """A minimal Redis Pub/Sub subscriber (RESP2): the floor, as cheap as the clients."""

    def __init__(self, channel: str, tally: Tally, subscribed: asyncio.Event) -> None:
        self.channel = channel.encode()
        self.tally = tally
        self.subscribed = subscribed
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        name = self.channel
        transport.write(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        pos = 0
        while (found := resp_array(buf, pos)) is not None:
            parts, pos = found
            kind = buf[parts[0][0] : parts[0][1]]
            if kind == b"message":
                self.tally.frame(buf, parts[2][0], parts[2][1], now)
            elif kind == b"subscribe":
                self.subscribed.set()
        self.buf = buf[pos:]


def resp_array(buf: bytes, pos: int) -> tuple[list[tuple[int, int]], int] | None:
    """The ``(start, end)`` of each item of the RESP2 array at ``buf[pos:]`` (bulk strings
    and integers) and where it ends; ``None`` if it is not all there yet."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    i, parts = end + 2, []
    for _ in range(int(buf[pos + 1 : end])):
        end = buf.find(b"\r\n", i)
        if end < 0:
            return None
        if buf[i] == 0x24:  # $: a bulk string of that many bytes
            start = end + 2
            stop = start + int(buf[i + 1 : end])
            if len(buf) < stop + 2:
                return None
            parts.append((start, stop))
            i = stop + 2
        else:  # :, an integer
            parts.append((i + 1, end))
            i = end + 2
    return parts, i


def run_floor(redis_url: str, channel: str, ready, done, final, out) -> None:
    import uvloop

    out.put(uvloop.run(_floor(redis_url, channel, ready, done, final)))


async def _floor(redis_url: str, channel: str, ready, done, final) -> dict[str, Any]:
    from urllib.parse import urlsplit

    url = urlsplit(redis_url)
    tally, subscribed = Tally(), asyncio.Event()
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: PubSubClient(channel, tally, subscribed), url.hostname, url.port or 6379
    )
    await asyncio.wait_for(subscribed.wait(), 30)
    ready.put(1)
    cpu0 = cpu_s()
    while not done.is_set():
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 30
    while tally.expected <= final.value and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    cpu = cpu_s() - cpu0
    transport.close()
    return {
        "tallies": [tally.summary(final.value)],
        "sketches": [sketch(tally.lat_us)],
        "cpu_s": cpu,
    }


def run_producer(info: dict[str, str], project: str, wid: str, rate: int, seconds: float, out):
    import redis
    from opentelemetry.sdk.trace import TracerProvider

    import spangraph
    from spangraph.processors.live import seq_key

    sg = spangraph.configure(
        tracer_provider=TracerProvider(),
        graph_url=info["graph_url"],
        redis_url=info["redis_url"],
        project=project,
        home=info["home"],
        graph=False,
    )
    total = int(rate * seconds)
    cpu0 = cpu_s()
    start = time.perf_counter()
    with spangraph.workflow("bench", workflow_id=wid):
        n = 0
        while n < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while n < due:
                spangraph.event("tick", sent_ns=time.time_ns(), i=n)
                n += 1
            time.sleep(0.001)
    elapsed = time.perf_counter() - start
    spangraph.flush(30)
    stats = sg.stats()
    cpu = cpu_s() - cpu0
    spangraph.shutdown()
    final = int(redis.Redis.from_url(info["redis_url"]).get(seq_key(wid)) or 0)
    out.put({"final": final, "events": total, "elapsed": elapsed, "cpu_s": cpu, "stats": stats})


# -- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 + 10 clients, 3 s")
    parser.add_argument("--workflow-clients", type=int)
    parser.add_argument("--project-clients", type=int)
    parser.add_argument("--rate", type=int, default=2000, help="events per second")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--full-every", type=int, default=10, help="1 client in N parses every message"
    )
    parser.add_argument(
        "--batch-window", type=float, help="the hub's batch_window, in ms (default: the hub's)"
    )
    args = parser.parse_args(argv)
    n_wf = (
        args.workflow_clients if args.workflow_clients is not None else (50 if args.quick else 500)
    )
    n_pj = args.project_clients if args.project_clients is not None else (10 if args.quick else 100)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    raise_fd_limit()
    hub_options = {} if args.batch_window is None else {"batch_window": args.batch_window / 1000}

    from spangraph.embedded import EmbeddedServer
    from spangraph.processors.live import workflow_channel

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="spangraph-bench-") as tmp:
        server = EmbeddedServer(os.path.join(tmp, "home"))
        info = server.ensure_running()
        urls = {"graph_url": info.graph_url, "redis_url": info.redis_url, "home": tmp}
        hub_q = ctx.Queue()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        service = ctx.Process(
            target=run_service,
            args=(port, info.graph_url, info.redis_url, tmp, hub_options, hub_q),
            daemon=True,
        )
        procs: list[Any] = [service]
        try:
            service.start()
            wait_for_port(port)
            project, wid = f"bench-{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:12]}"
            paths = [f"/api/stream/workflows/{wid}"] * n_wf
            paths += [f"/api/stream/projects/{project}"] * n_pj
            paths = [(path, i % args.full_every == 0) for i, path in enumerate(paths)]
            ready, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
            final = ctx.Value("q", 0)
            groups = [paths[i :: args.client_procs] for i in range(args.client_procs)]
            groups = [g for g in groups if g]
            for group in groups:
                procs.append(
                    ctx.Process(
                        target=run_clients,
                        args=("127.0.0.1", port, group, ready, done, final, out),
                        daemon=True,
                    )
                )
            procs.append(
                ctx.Process(
                    target=run_floor,
                    args=(info.redis_url, workflow_channel(wid), ready, done, final, out),
                    daemon=True,
                )
            )
            t0 = time.monotonic()
            for p in procs[1:]:
                p.start()
            for _ in range(len(procs) - 1):
                ready.get(timeout=300)
            connect_s = time.monotonic() - t0
            service_cpu0, redis_cpu0 = cpu_s(service.pid), cpu_s(info.pid)
            load_before, times_before = loadavg(), cpu_times()
            produced_q = ctx.Queue()
            producer = ctx.Process(
                target=run_producer, args=(urls, project, wid, args.rate, seconds, produced_q)
            )
            producer.start()
            produced = produced_q.get(timeout=seconds + 120)
            producer.join(30)
            times = busy(times_before, cpu_times())
            final.value = produced["final"]
            done.set()
            results = [out.get(timeout=120) for _ in range(len(procs) - 1)]
            service_cpu = cpu_s(service.pid) - service_cpu0
            redis_cpu = cpu_s(info.pid) - redis_cpu0
            for p in procs[1:]:
                p.join(30)
            service.terminate()  # uvicorn shuts down, then hands over the hub's stats
            hub_stats = hub_q.get(timeout=60)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(10)
            server.stop()
    load = (load_before, loadavg(), times)
    report(args, n_wf, n_pj, connect_s, produced, results, service_cpu, redis_cpu, load)
    lags = hub_stats["lag_ms"]
    writes = sum(lags.values())
    print(
        "lag inside the service (a batch's arrival from Redis to its write to a client "
        f"connection), over {writes:,} writes: p50 {bucket(lags, 0.5)} ms, "
        f"p99 {bucket(lags, 0.99)} ms, p99.9 {bucket(lags, 0.999)} ms; "
        f"clients cut off {hub_stats['too_slow']}"
    )
    # While the service is saturated it writes as often as it can: CPU saved per write
    # goes into more, smaller frames (lower latency), so the cost per delivered message
    # hides it; the cost per write shows it.
    per_write = service_cpu / max(writes, 1) * 1e6
    print(f"service CPU per write (all its work over the run / writes): {per_write:.1f} µs")
    return 0


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            time.sleep(0.5)  # the lifespan (graph store, hub) runs before requests are served
            return
        time.sleep(0.1)
    raise SystemExit("the service did not start")


def report(args, n_wf, n_pj, connect_s, produced, results, service_cpu, redis_cpu, load):
    floor = next(r for r in results if "paths" not in r)
    rows: dict[str, dict[str, list[Any]]] = {
        "redis pub/sub (floor)": {"tallies": floor["tallies"], "full": floor["sketches"], "all": []}
    }
    for result in results:
        if "paths" not in result:
            continue
        for (path, _), tally, sk, full in zip(
            result["paths"], result["tallies"], result["sketches"], result["full"], strict=True
        ):
            for kind in ("ws workflow" if "/workflows/" in path else "ws project", "ws all"):
                row = rows.setdefault(kind, {"tallies": [], "full": [], "all": []})
                row["tallies"].append(tally)
                row["full" if full else "all"].append(sk)
    order = ["redis pub/sub (floor)", "ws workflow", "ws project", "ws all"]
    rows = {name: rows[name] for name in order if name in rows}
    if len(rows) == 3:  # one kind of client only
        del rows["ws all"]
    final = produced["final"]
    window = "default" if args.batch_window is None else f"{args.batch_window:g} ms"
    print(f"\nspangraph live streams -- {datetime.date.today()} -- {machine()}")
    print(f"command: python bench/live.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"clients: {n_wf} on the run's channel + {n_pj} on its project's channel, in "
        f"{args.client_procs} process(es), 1 in {args.full_every} parsing every message; "
        f"subscribed in {connect_s:.1f} s; hub batch_window {window}; "
        f"load average before/after {load[0]} / {load[1]}"
    )
    print(
        f"producer: {produced['events']} events in {produced['elapsed']:.2f} s "
        f"({produced['events'] / produced['elapsed']:.0f}/s), {final} messages in the run "
        f"(events + span starts/ends); SDK live stats {produced['stats'].get('live')}"
    )
    print(
        f"\n{'':23}{'clients':>8}{'received':>12}{'a frame':>8}{'lost':>6}{'order':>6}"
        f"{'cut':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    figures = {}
    for name, row in rows.items():
        tallies = row["tallies"]
        received = sum(t["received"] for t in tallies)
        p50, p99 = percentile(row["full"], 0.5), percentile(row["full"], 0.99)
        figures[name] = (p50, p99)
        print(
            f"{name:23}{len(tallies):>8}{received:>12,}"
            f"{received / max(1, sum(t['frames'] for t in tallies)):>8.1f}"
            f"{sum(t['lost'] for t in tallies):>6}{sum(t['late'] for t in tallies):>6}"
            f"{sum(1 for t in tallies if t['close'] == 4008):>5}"
            f"{p50:>9.1f}{p99:>9.1f}{percentile(row['full'] + row['all'], 1):>9.1f}"
        )
    print(
        "(p50/p99: every event of the clients that parse every message; max: all clients; "
        "a frame: messages per WebSocket frame)"
    )
    p50_floor, p99_floor = figures["redis pub/sub (floor)"]
    name = "ws all" if "ws all" in figures else next(n for n in figures if n.startswith("ws"))
    p50, p99 = figures[name]
    print(
        f"\n{name} vs floor: p50 x{p50 / p50_floor:.1f} (+{p50 - p50_floor:.1f} ms), "
        f"p99 x{p99 / p99_floor:.1f} (+{p99 - p99_floor:.1f} ms); "
        f"target p99 < 50 ms: {'met' if p99 < 50 else 'MISSED'}, "
        f"bar p99 < 100 ms: {'met' if p99 < 100 else 'MISSED'}"
    )
    deliveries = sum(t["received"] for r in results if "paths" in r for t in r["tallies"])
    clients_cpu = sum(r["cpu_s"] for r in results if "paths" in r)
    span = produced["elapsed"]
    print(
        f"CPU seconds over the {span:.1f} s run: service {service_cpu:.1f} "
        f"({service_cpu / span:.0%} of a core; {service_cpu / max(deliveries, 1) * 1e6:.2f} µs "
        f"a delivered message), clients {clients_cpu:.1f}, producer {produced['cpu_s']:.1f}, "
        f"redis-server {redis_cpu:.1f}, floor subscriber {floor['cpu_s']:.1f}"
    )
    print(f"the machine's CPUs while the producer ran (all processes): {load[2]}")
    for result in results:
        for (path, _), tally in zip(result.get("paths", ()), result["tallies"], strict=False):
            if tally["lost"] or tally["late"] or tally["close"]:
                print("  client", path, tally)
    unfinished = sum(r.get("unfinished", 0) for r in results)
    if unfinished:
        print(f"{unfinished} client(s) had not seen the last message 30 s after the producer")


if __name__ == "__main__":
    sys.exit(main())
