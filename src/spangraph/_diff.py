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
    """How run (or branch) ``b`` differs from ``a``. ``missing``: which of ``a`` and
    ``b`` have no spans at all, i.e. do not exist (unknown ids compare as empty runs, so
    the rest of the answer is then empty or one-sided; :func:`missing_message` says so)."""

    a: str
    b: str
    first_divergence: dict[str, Any] | None
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    durations: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_message(missing: list[str], what: str = "run") -> str | None:
    """What to tell about a diff's ``missing`` ids (``what``: ``"run"`` or ``"branch"``):
    ``"run 'x' does not exist: no spans have that id, nothing to compare"``, or ``None``
    when there are none."""
    if not missing:
        return None
    names = " and ".join(repr(m) for m in missing)
    if len(missing) == 1:
        return f"{what} {names} does not exist: no spans have that id, nothing to compare"
    whats = f"{what}es" if what.endswith("h") else f"{what}s"
    return f"{whats} {names} do not exist: no spans have those ids, nothing to compare"


def _chosen(span: dict[str, Any]) -> str | None:
    attrs = span.get("attributes")
    if isinstance(attrs, str):
        try:
            attrs = read_json(attrs)
        except ValueError:
            attrs = {}
    value = (attrs or {}).get("spangraph.decision.chosen") if isinstance(attrs, dict) else None
    return str(value) if value is not None else None


def _key(span: dict[str, Any]) -> tuple[float, str]:
    start = span.get("start_ns")
    ok = isinstance(start, int | float) and not isinstance(start, bool)
    return (start if ok else 0, str(span["span_id"]))


def entries(spans: list[dict[str, Any]]) -> list[Entry]:
    """The spans (options never explored left out) in depth-first order, siblings by
    start time, each named by its path of names below its root (the root is ``(root)``),
    so runs whose roots have different names still compare.

    A span whose parent is not among ``spans`` is a root. Spans whose parents lead round
    in a cycle (A's parent is B and B's parent is A, or a span its own parent: only spans
    from other programs can say so) are cut where :func:`spangraph.queries.tree` cuts
    them, at the span of the cycle that started first (then the smaller span id), which
    becomes a root. The walk keeps its own stack, so no depth of nesting is too deep."""
    # left out: options never explored, and the stand-in for a parent that was never
    # written (a caller in another service), as tree() leaves it out
    spans = [s for s in spans if s.get("state") != "unexplored" and s.get("name") is not None]
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in by_id else None, []).append(span)
    roots = children.pop(None, [])
    reached: set[str] = set()
    _reach(roots, children, reached)
    if len(reached) < len(by_id):
        for span in spans:
            if span["span_id"] not in reached:
                head = _cycle_head(by_id, span)
                siblings = children[head["parent_span_id"]]
                siblings[:] = [c for c in siblings if c is not head]
                roots.append(head)
                _reach([head], children, reached)
    roots.sort(key=_key)
    for group in children.values():
        group.sort(key=_key)
    out: list[Entry] = []
    done: set[str] = set()
    # (span, the path of names from its root down to its parent; None below no parent)
    stack: list[tuple[dict[str, Any], str | None]] = [(root, None) for root in reversed(roots)]
    while stack:
        span, prefix = stack.pop()
        span_id = span["span_id"]
        if span_id in done:  # the same span twice in the input
            continue
        done.add(span_id)
        name = str(span.get("name"))
        if prefix is None:  # a root: "(root)", and its children start from nothing
            label, below = "(root)", ""
        else:
            below = f"{prefix}/{name}" if prefix else name
            label = below or "(root)"
        out.append(
            Entry(
                label,
                span.get("kind"),
                span.get("state"),
                span.get("duration_ms"),
                _chosen(span),
                span_id,
            )
        )
        stack.extend((child, below) for child in reversed(children.get(span_id, ())))
    return out


def _reach(
    starts: list[dict[str, Any]], children: dict[str | None, list[dict[str, Any]]], seen: set[str]
) -> None:
    """Add the span ids of ``starts`` and of everything below them to ``seen``."""
    stack = list(starts)
    while stack:
        span = stack.pop()
        if span["span_id"] not in seen:
            seen.add(span["span_id"])
            stack.extend(children.get(span["span_id"], ()))


def _cycle_head(by_id: dict[str, dict[str, Any]], span: dict[str, Any]) -> dict[str, Any]:
    """Where the parent cycle above ``span`` is cut (its parents, all in ``by_id``, lead
    round in a cycle): the span of the cycle that started first, then by span id."""
    seen: dict[str, int] = {}
    chain: list[dict[str, Any]] = []
    while span["span_id"] not in seen:
        seen[span["span_id"]] = len(chain)
        chain.append(span)
        span = by_id[span["parent_span_id"]]
    return min(chain[seen[span["span_id"]] :], key=_key)


def diff(a_id: str, a: list[dict[str, Any]], b_id: str, b: list[dict[str, Any]]) -> RunDiff:
    """``b`` against ``a`` (the spans of each, as :func:`spangraph.queries.workflow_spans`
    gives them). An id without spans is listed in ``missing``."""
    missing = [a_id] if not a else []
    if not b and b_id not in missing:
        missing.append(b_id)
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
    return RunDiff(a_id, b_id, first, only_a, only_b, durations, missing)
