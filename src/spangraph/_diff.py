"""Structural diff of two runs or two branches (used by :func:`spangraph.queries.diff`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .mapping import option_text, read_json


@dataclass(frozen=True, slots=True)
class Entry:
    """One span of a run, by its path of names from the run's root.

    ``path`` is for reading: the names of the last :data:`PATH_NAMES` levels (and at most
    about :data:`PATH_CHARS` characters of them), after ``…(N more)/`` when there are more.
    Spans are compared by ``key``, which stands for the whole path, name by name (a name
    holding a ``/`` is one level)."""

    path: str
    kind: str | None
    state: str | None
    duration_ms: float | None
    chosen: str | None
    span_id: str
    key: int = field(default=-1, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "state": self.state,
            "duration_ms": self.duration_ms,
            "chosen": self.chosen,
            "span_id": self.span_id,
        }


PATH_NAMES = 32
"""The most names an entry's ``path`` shows: a deeper span shows its last ones."""
PATH_CHARS = 1000
"""About the most characters of names a ``path`` shows (its last name always)."""


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
    states: list[dict[str, Any]] = field(default_factory=list)
    """Spans found in both that ended differently (or one still runs): ``path``,
    ``occurrence``, ``a`` and ``b`` (their states)."""

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
    """A decision's choice: ``chosen`` when the caller found it (its chosen_option link),
    else its ``spangraph.decision.chosen`` attribute, as text (:func:`option_text`)."""
    if span.get("chosen") is not None:
        return str(span["chosen"])
    attrs = span.get("attributes")
    if isinstance(attrs, str):
        try:
            attrs = read_json(attrs)
        except ValueError:
            attrs = {}
    value = (attrs or {}).get("spangraph.decision.chosen") if isinstance(attrs, dict) else None
    return option_text(value) if value is not None else None


def _start(span: dict[str, Any]) -> float:
    start = span.get("start_ns")
    return start if isinstance(start, int | float) and not isinstance(start, bool) else 0


def _key(span: dict[str, Any]) -> tuple[float, str]:
    """Where a parent cycle is cut: the span that started first, then by span id (as
    :func:`spangraph.queries.tree` does)."""
    return (_start(span), str(span["span_id"]))


def _sibling_key(span: dict[str, Any]) -> tuple[float, str, str]:
    """Siblings by start time, then by name (so equal runs whose spans started at the
    same time compare equal whatever their random span ids), then by span id."""
    return (_start(span), str(span.get("name")), str(span["span_id"]))


def _tail(names: tuple[str, ...]) -> tuple[str, ...]:
    """The last names of a path that its ``path`` text shows."""
    names = names[-PATH_NAMES:]
    size = 0
    for i in range(len(names) - 1, -1, -1):
        size += len(names[i]) + 1
        if size > PATH_CHARS and i < len(names) - 1:
            return names[i + 1 :]
    return names


def entries(
    spans: list[dict[str, Any]], paths: dict[tuple[int, str], int] | None = None
) -> list[Entry]:
    """The spans (options never explored left out) in depth-first order, siblings by
    start time (then name), each named by its path of names below its root (the root is
    ``(root)``), so runs whose roots have different names still compare.

    ``paths`` numbers the paths met (an entry's ``key``): give the same dict for both runs
    of a diff so that equal paths have equal keys.

    A span whose parent is not among ``spans`` is a root. Spans whose parents lead round
    in a cycle (A's parent is B and B's parent is A, or a span its own parent: only spans
    from other programs can say so) are cut where :func:`spangraph.queries.tree` cuts
    them, at the span of the cycle that started first (then the smaller span id), which
    becomes a root. The walk keeps its own stack, so no depth of nesting is too deep."""
    paths = {} if paths is None else paths
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
    roots.sort(key=_sibling_key)
    for group in children.values():
        group.sort(key=_sibling_key)
    out: list[Entry] = []
    done: set[str] = set()
    # (span, its parent's path: key, depth below the root and last names; None for a root)
    stack: list[tuple[dict[str, Any], tuple[int, int, tuple[str, ...]] | None]] = [
        (root, None) for root in reversed(roots)
    ]
    root_key = paths.setdefault((-1, "(root)"), len(paths))
    while stack:
        span, parent = stack.pop()
        span_id = span["span_id"]
        if span_id in done:  # the same span twice in the input
            continue
        done.add(span_id)
        name = str(span.get("name"))
        here: tuple[int, int, tuple[str, ...]]
        if parent is None:  # a root: "(root)", and its children start from nothing
            here = (root_key, 0, ())
            label = "(root)"
        else:
            parent_key, depth, names = parent
            tail = _tail((*names, name))
            here = (paths.setdefault((parent_key, name), len(paths)), depth + 1, tail)
            hidden = depth + 1 - len(tail)
            label = (f"…({hidden} more)/" if hidden else "") + "/".join(tail)
        out.append(
            Entry(
                label,
                span.get("kind"),
                span.get("state"),
                span.get("duration_ms"),
                _chosen(span),
                span_id,
                here[0],
            )
        )
        stack.extend((child, here) for child in reversed(children.get(span_id, ())))
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
    paths: dict[tuple[int, str], int] = {}
    ea, eb = entries(a, paths), entries(b, paths)
    first: dict[str, Any] | None = None
    for i, (x, y) in enumerate(zip(ea, eb, strict=False)):
        if x.key != y.key:
            first = {"index": i, "reason": "different step", "a": x.to_dict(), "b": y.to_dict()}
            break
        if x.kind == "decision" and x.chosen != y.chosen:
            first = {"index": i, "reason": "different choice", "a": x.to_dict(), "b": y.to_dict()}
            break
    if first is None and len(ea) != len(eb):
        i = min(len(ea), len(eb))
        first = {
            "index": i,
            "reason": "one run has more steps",
            "a": ea[i].to_dict() if i < len(ea) else None,
            "b": eb[i].to_dict() if i < len(eb) else None,
        }
    text = {e.key: e.path for e in (*ea, *eb)}
    ca, cb = Counter(e.key for e in ea), Counter(e.key for e in eb)
    only_a = sorted(text[k] for k in (ca - cb).elements())
    only_b = sorted(text[k] for k in (cb - ca).elements())
    seen_b: dict[int, list[Entry]] = {}
    for e in eb:
        seen_b.setdefault(e.key, []).append(e)
    durations = []
    states = []
    met: dict[int, int] = {}
    for x in ea:
        n = met[x.key] = met.get(x.key, 0) + 1
        ys = seen_b.get(x.key, ())
        if n > len(ys):
            continue
        y = ys[n - 1]
        if x.state != y.state:
            states.append({"path": x.path, "occurrence": n, "a": x.state, "b": y.state})
        if x.duration_ms is None or y.duration_ms is None:
            continue
        durations.append(
            {
                "path": x.path,
                "occurrence": n,
                "a_ms": x.duration_ms,
                "b_ms": y.duration_ms,
                "delta_ms": round(y.duration_ms - x.duration_ms, 3),
            }
        )
    return RunDiff(a_id, b_id, first, only_a, only_b, durations, missing, states)
