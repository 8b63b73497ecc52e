#!/usr/bin/env python
"""OTLP/protobuf decoding of ``spangraph serve``: a request with text that is not UTF-8,
against the same request with valid text, in the same run.

Run from the repository root, in the project's virtual environment::

    python bench/otlp_decode.py                  # 512 spans, 10 attributes each
    python bench/otlp_decode.py --spans 2048 --reps 30

Each figure is the time of ``decode_protobuf`` + ``to_spans`` (what the receiver does
with a request body before it queues the spans), the best of ``--reps``; the ratio is
against the valid request. "one bad span": one span name holds an invalid byte
sequence; "every span bad": each span's name does. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from spangraph.server import ingest


def request(spans: int) -> bytes:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = scope.spans.add()
        span.trace_id, span.span_id = os.urandom(16), os.urandom(8)
        span.name = f"span-{i:06d}"
        span.start_time_unix_nano, span.end_time_unix_nano = 1_000, 2_000
        for j in range(10):
            kv = span.attributes.add()
            kv.key, kv.value.string_value = f"key.{j}", "value " * 8
        span.events.add(name="event", time_unix_nano=1_500)
    return req.SerializeToString()


def best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    valid = request(args.spans)
    one_bad = valid.replace(b"span-000007", b"span-\xff00007", 1)
    all_bad = valid.replace(b"span-", b"span\xff")
    cases = {"valid": valid, "one bad span": one_bad, "every span bad": all_bad}
    base = None
    print(f"{args.spans} spans, {len(valid):,} bytes; best of {args.reps}\n")
    print("| request | ms | ratio |\n|---|---|---|")
    for name, body in cases.items():
        seconds = best(lambda b=body: ingest.to_spans(ingest.decode_protobuf(b)), args.reps)
        base = base or seconds
        print(f"| {name} | {seconds * 1000:.2f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
