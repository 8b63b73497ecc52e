"""Structural diff of two runs or two branches (used by :func:`spangraph.queries.diff`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .mapping import read_json


@dataclass(frozen=True, slots=True)
class Entry:
    """One span of a run, by its path of names from the run's root."""

    path: str
    kind: str | None
    state: str | None
    duration_ms: float | None
    chosen: str | None
    span_id: str


@dataclass(slots=True)
class RunDiff:
    """How run (or branch) ``b`` differs from ``a``."""

    a: str
    b: str
    first_divergence: dict[str, Any] | None
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    durations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chosen(span: dict[str, Any]) -> str | None:
    attrs = span.get("attributes")
    if isinstance(attrs, str):
        try:
            attrs = read_json(attrs)
        except ValueError:
            attrs = {}
    value = (attrs or {}).get("spangraph.decision.chosen") if isinstance(attrs, dict) else None
    return str(value) if value is not None else None


def entries(spans: list[dict[str, Any]]) -> list[Entry]:
    """The spans (options never explored left out) in depth-first order, siblings by
    start time, each named by its path of names below its root (the root is ``(root)``),
    so runs whose roots have different names still compare."""
    spans = [s for s in spans if s.get("state") != "unexplored"]
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in by_id else None, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.get("start_ns") or 0, s["span_id"]))
    out: list[Entry] = []

    def walk(span: dict[str, Any], names: tuple[str, ...]) -> None:
        path = (*names, str(span.get("name")))
        # the root itself is "(root)"; below it, names from the root down (without it)
        label = "/".join(path[1:]) or "(root)"
        out.append(
            Entry(
                label,
                span.get("kind"),
                span.get("state"),
                span.get("duration_ms"),
                _chosen(span),
                span["span_id"],
            )
        )
        for child in children.get(span["span_id"], []):
            walk(child, path)

    for root in children.get(None, []):
        walk(root, ())
    return out


def diff(a_id: str, a: list[dict[str, Any]], b_id: str, b: list[dict[str, Any]]) -> RunDiff:
    ea, eb = entries(a), entries(b)
    first: dict[str, Any] | None = None
    for i, (x, y) in enumerate(zip(ea, eb, strict=False)):
        if x.path != y.path:
            first = {"index": i, "reason": "different step", "a": asdict(x), "b": asdict(y)}
            break
        if x.kind == "decision" and x.chosen != y.chosen:
            first = {"index": i, "reason": "different choice", "a": asdict(x), "b": asdict(y)}
            break
    if first is None and len(ea) != len(eb):
        i = min(len(ea), len(eb))
        first = {
            "index": i,
            "reason": "one run has more steps",
            "a": asdict(ea[i]) if i < len(ea) else None,
            "b": asdict(eb[i]) if i < len(eb) else None,
        }
    ca, cb = Counter(e.path for e in ea), Counter(e.path for e in eb)
    only_a = sorted((ca - cb).elements())
    only_b = sorted((cb - ca).elements())
    seen_a: dict[str, list[Entry]] = {}
    for e in ea:
        seen_a.setdefault(e.path, []).append(e)
    seen_b: dict[str, list[Entry]] = {}
    for e in eb:
        seen_b.setdefault(e.path, []).append(e)
    durations = []
    for path, xs in seen_a.items():
        for n, (x, y) in enumerate(zip(xs, seen_b.get(path, []), strict=False)):
            if x.duration_ms is None or y.duration_ms is None:
                continue
            durations.append(
                {
                    "path": path,
                    "occurrence": n + 1,
                    "a_ms": x.duration_ms,
                    "b_ms": y.duration_ms,
                    "delta_ms": round(y.duration_ms - x.duration_ms, 3),
                }
            )
    return RunDiff(a_id, b_id, first, only_a, only_b, durations)
