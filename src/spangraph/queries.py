"""The query library: questions about runs, answered from the graph store.

Every function takes a :class:`~spangraph.stores.GraphStore` and runs one Cypher
statement that both FalkorDB and Neo4j 5 accept (its text is in the docstring), with
values passed as parameters only. Unknown ids give an empty answer, never an error.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from . import semconv as sc
from ._utf8 import as_stored
from .mapping import event_type, iso_time, option_text, read_json
from .stores._base import GraphStore

_SPAN_FIELDS: Final = (
    "span_id, s.trace_id AS trace_id, s.parent_span_id AS parent_span_id, "
    "s.workflow_id AS workflow_id, s.execution_id AS execution_id, s.branch_id AS branch_id, "
    "s.project_id AS project_id, s.kind AS kind, s.name AS name, s.state AS state, "
    "s.status AS status, s.status_message AS status_message, s.start_ns AS start_ns, "
    "s.end_ns AS end_ns, s.duration_ms AS duration_ms, s.service AS service, s.env AS env, "
    "s.attributes AS attributes"
)

WORKFLOW_SPANS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})\n"
    "WHERE s.span_id IS NOT NULL\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns, s.span_id"
)

CHILD_RUNS: Final = (
    "MATCH (p:Span {workflow_id: $workflow_id})-[:PARENT_OF]->(s:Workflow)\n"
    "WHERE s.span_id IS NOT NULL AND s.workflow_id <> $workflow_id\n"
    "  AND p.start_ns IS NOT NULL\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns, s.span_id"
)
"""The workflow spans of other runs started inside a run (a workflow called in a step);
not those under a parent never written (an id-only placeholder, which takes the id of the
first run written under it: two runs a remote caller started would be each other's)."""

RUN_FILTERS: Final = (
    "MATCH (s:Workflow)\n"
    "WHERE s.span_id IS NOT NULL\n"
    "  AND ($project_id IS NULL OR s.project_id = $project_id)\n"
    "  AND ($state IS NULL OR s.state = $state)\n"
    "  AND ($name IS NULL OR s.name = $name)\n"
    "  AND ($name_contains IS NULL OR toLower(s.name) CONTAINS toLower($name_contains))\n"
    "  AND ($since_ns IS NULL OR s.start_ns >= $since_ns)\n"
    "  AND ($execution_id IS NULL OR s.execution_id = $execution_id)\n"
)
"""The workflow spans :data:`LIST_WORKFLOWS` reads (``bench/run_list.py``'s baseline too)."""

# The newest $scan first (a top-k: cheaper than the whole list sorted at the end), then
# a run's top workflow spans only: one inside its run (another instrumentation's workflow
# span, which takes the run's ids) is no run of its own. A parent never written (a remote
# caller's span, one a sampler left out) is a placeholder with the run's id and no start.
LIST_WORKFLOWS: Final = (
    RUN_FILTERS + "WITH s ORDER BY s.start_ns DESC LIMIT $scan\n"
    "OPTIONAL MATCH (p:Span {span_id: s.parent_span_id})\n"
    "WITH s, p\n"
    "WHERE p IS NULL OR p.start_ns IS NULL OR p.workflow_id IS NULL\n"
    "   OR p.workflow_id <> s.workflow_id\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns DESC\n"
    "LIMIT $limit"
)

ROOT_AGENTS: Final = (
    RUN_FILTERS.replace("MATCH (s:Workflow)\n", "MATCH (s:Agent)\n", 1)
    + "  AND s.parent_span_id IS NULL\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns DESC\n"
    "LIMIT $limit"
)
"""Agent spans at the root of their trace: the runs of an agent framework that records
its own spans (``invoke_agent``, OpenInference's ``AGENT``) started without a spangraph
``workflow`` around them. They are runs too (their id: the trace id)."""


def _of_execution(statement: str, label: str) -> str:
    """``statement`` (a run list's) reading the spans of one execution by an index on
    ``execution_id`` (the workflow spans' own, else every span's) rather than every span
    of its label."""
    found = f"MATCH (s:{label})\nWHERE "
    if found not in statement:
        raise AssertionError(f"no {found!r} in the statement")
    if label == "Workflow":
        by_index = "MATCH (s:Workflow {execution_id: $execution_id})\nWHERE "
    else:
        by_index = f"MATCH (s:Span {{execution_id: $execution_id}})\nWHERE s:{label} AND "
    return statement.replace(found, by_index, 1)


EXECUTION_WORKFLOWS: Final = _of_execution(LIST_WORKFLOWS, "Workflow")
EXECUTION_ROOT_AGENTS: Final = _of_execution(ROOT_AGENTS, "Agent")
"""The run list of one execution (``workflows(execution_id=...)``)."""

PATH_HOPS: Final = 16
"""Ancestors one ``path_to_root`` statement reads (more are read by further statements)."""

PATH_TO_ROOT: Final = (
    "MATCH (s0:Span {span_id: $span_id})\n"
    + "".join(
        f"OPTIONAL MATCH (s{i}:Span {{span_id: s{i - 1}.parent_span_id}})\n"
        f"WITH {', '.join(f's{j}' for j in range(i + 1))}\n"
        for i in range(1, PATH_HOPS)
    )
    + "RETURN [s IN ["
    + ", ".join(f"s{i}" for i in range(PATH_HOPS))
    + "] WHERE s IS NOT NULL |\n"
    "        [s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.trace_id, s.state]]"
    " AS chain"
)

WORKFLOW_EVENTS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})-[:HAS_EVENT]->(e:Event)\n"
    "WHERE s.span_id IS NOT NULL\n"
    "RETURN s.span_id AS span_id, s.name AS span_name, s.kind AS kind, e.seq AS seq,\n"
    "       e.name AS name, e.time_ns AS time_ns, e.attributes AS attributes\n"
    "ORDER BY e.time_ns, s.span_id, e.seq"
)


def statements() -> dict[str, str]:
    """Every query statement, by name (linted with Neo4j's linter in the test suite)."""
    return {
        "workflow_spans": WORKFLOW_SPANS,
        "child_runs": CHILD_RUNS,
        "list_workflows": LIST_WORKFLOWS,
        "root_agents": ROOT_AGENTS,
        "execution_workflows": EXECUTION_WORKFLOWS,
        "execution_root_agents": EXECUTION_ROOT_AGENTS,
        "path_to_root": PATH_TO_ROOT,
        "workflow_events": WORKFLOW_EVENTS,
        **_MORE_STATEMENTS,
    }


@dataclass(slots=True)
class TreeNode:
    """One span in a run's tree, with its children in start order."""

    span: dict[str, Any]
    children: list[TreeNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.span.get("name"))

    def walk(self, depth: int = 0) -> Iterator[tuple[int, TreeNode]]:
        """Yield ``(depth, node)`` depth-first, parents before children (no recursion:
        a run may be nested thousands of levels deep)."""
        stack = [(depth, self)]
        while stack:
            level, node = stack.pop()
            yield level, node
            stack.extend((level + 1, child) for child in reversed(node.children))


_TEXT_FIELDS: Final = (
    "span_id", "trace_id", "parent_span_id", "workflow_id", "execution_id", "branch_id",
    "project_id", "kind", "name", "state", "status", "status_message", "service", "env",
    "span_name",
)  # fmt: skip
_WHOLE_FIELDS: Final = ("start_ns", "end_ns", "time_ns", "seq")


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A span or event row as the library gives it, whatever other programs wrote into
    the graph: ``attributes`` an object (``{}`` for JSON of another shape), the text
    fields text (other values as their JSON text), times and counters whole numbers or
    ``None``, ``duration_ms`` a number or ``None``."""
    raw = row.get("attributes")
    if isinstance(raw, str):
        try:
            raw = read_json(raw)
        except ValueError:
            raw = None
    if "attributes" in row:
        row["attributes"] = raw if isinstance(raw, dict) else {}
    for key in _TEXT_FIELDS:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            row[key] = option_text(value)
    for key in _WHOLE_FIELDS:
        value = row.get(key)
        if value is not None and (type(value) is not int):
            row[key] = _whole(value)
    duration = row.get("duration_ms")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float)
    ):
        row["duration_ms"] = None
    return row


def workflow_spans(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """All spans of one run, in start order.

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id})
        RETURN s.span_id AS span_id, s.trace_id AS trace_id, ... ORDER BY s.start_ns
    """
    return [_decode(r) for r in store.query(WORKFLOW_SPANS, {"workflow_id": workflow_id})]


def tree(store: GraphStore, workflow_id: str) -> list[TreeNode]:
    """A run as a forest of :class:`TreeNode` (normally one root, the workflow span).

    Built from :func:`workflow_spans`; a span whose parent is outside the run (or not
    written yet) becomes a root. A workflow started inside the run (a workflow function
    called in a step) is a run of its own, with its own ``workflow_id``: its workflow
    span is in the tree, under the span that started it, as a leaf (its ``workflow_id``
    says which run to read for the rest). Spans whose parents lead round in a cycle
    (A's parent is B and B's parent is A: only spans from outside can say so) are cut at
    the span of the cycle that started first (then the smaller span id): it becomes a
    root.
    """
    # A parent that was never written (e.g. a caller in another service) is only a
    # placeholder node with ids: leave it out, so its children become roots.
    spans = [s for s in workflow_spans(store, workflow_id) if s.get("name") is not None]
    if spans:
        rows = store.query(CHILD_RUNS, {"workflow_id": workflow_id})
        runs = [_decode(r) for r in rows if r.get("name") is not None]
        # in start order among the rest, as the statements order them; options never
        # explored (they carry their decision's start) after the explored ones, as the
        # web UI shows them
        if runs or any(s.get("state") == sc.STATE_UNEXPLORED for s in spans):
            spans = sorted(spans + runs, key=_start_order)
    nodes = {s["span_id"]: TreeNode(s) for s in spans}
    roots: list[TreeNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.get("parent_span_id") or "")
        (parent.children if parent else roots).append(node)
    reached = {id(n) for root in roots for _, n in root.walk()}
    if len(reached) < len(nodes):
        order = {span_id: i for i, span_id in enumerate(nodes)}
        for node in nodes.values():
            if id(node) not in reached:
                head = _cycle_head(nodes, node)
                parent = nodes[head.span["parent_span_id"]]
                parent.children = [c for c in parent.children if c is not head]
                roots.append(head)
                reached.update(id(n) for _, n in head.walk())
        roots.sort(key=lambda n: order[n.span["span_id"]])
    return roots


def _start_order(span: dict[str, Any]) -> tuple[bool, int, str]:
    start = span.get("start_ns")
    if span.get("state") == sc.STATE_UNEXPLORED:
        start = None
    return (start is None, start or 0, str(span.get("span_id")))


def _cycle_key(span: dict[str, Any]) -> tuple[int, str]:
    start = span.get("start_ns")
    return (start if isinstance(start, int) else 0, str(span.get("span_id")))


def _cycle_head(nodes: dict[str, TreeNode], node: TreeNode) -> TreeNode:
    """The span where the parent cycle above ``node`` is cut (``node``'s parents, in
    ``nodes``, lead round in a cycle): the one that started first, then by span id."""
    seen: dict[str, int] = {}
    chain: list[TreeNode] = []
    while node.span["span_id"] not in seen:
        seen[node.span["span_id"]] = len(chain)
        chain.append(node)
        node = nodes[node.span["parent_span_id"]]
    return min(chain[seen[node.span["span_id"]] :], key=lambda n: _cycle_key(n.span))


MAX_LIMIT: Final = 1_000_000
"""The most rows ``limit=`` may ask for (a larger LIMIT wraps around in FalkorDB)."""
MAX_AGE_S: Final = 100 * 365 * 86_400
"""The largest ``older_than_s`` (100 years)."""
_INT64_MAX = 2**63 - 1


def _check_limit(limit: object, name: str = "limit") -> None:
    """ValueError unless ``limit`` is a whole number from 1 to ``MAX_LIMIT``."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"{name} must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}")


def _check_age(older_than_s: object) -> None:
    """ValueError unless ``older_than_s`` is a number of seconds from 0 to ``MAX_AGE_S``."""
    if (
        not isinstance(older_than_s, int | float)
        or isinstance(older_than_s, bool)
        or not 0 <= older_than_s <= MAX_AGE_S  # NaN fails too
    ):
        raise ValueError(
            f"older_than_s must be a number of seconds from 0 to {MAX_AGE_S}, got {older_than_s!r}"
        )


def workflows(
    store: GraphStore,
    *,
    project_id: str | None = None,
    state: str | None = None,
    name: str | None = None,
    since_ns: int | None = None,
    limit: int = 50,
    name_contains: str | None = None,
    execution_id: str | None = None,
) -> list[dict[str, Any]]:
    """Runs (workflow spans, and agent spans at the root of their trace: an agent
    framework's run without a spangraph ``workflow`` around it), newest first, filtered
    by project, state, name (whole, or ``name_contains``: a part of it, in any case),
    start and execution (``execution_id``: the runs of one logical execution, such as a
    run resumed after a crash or a LangGraph thread's turns).

    .. code-block:: cypher

        MATCH (s:Workflow)
        WHERE ($project_id IS NULL OR s.project_id = $project_id)
          AND ($state IS NULL OR s.state = $state) AND ($name IS NULL OR s.name = $name)
          AND ($name_contains IS NULL OR toLower(s.name) CONTAINS toLower($name_contains))
          AND ($since_ns IS NULL OR s.start_ns >= $since_ns)
          AND ($execution_id IS NULL OR s.execution_id = $execution_id)
        WITH s ORDER BY s.start_ns DESC LIMIT $scan
        OPTIONAL MATCH (p:Span {span_id: s.parent_span_id})
        WITH s, p WHERE p IS NULL OR p.start_ns IS NULL OR p.workflow_id IS NULL
                     OR p.workflow_id <> s.workflow_id
        RETURN s.span_id AS span_id, ... ORDER BY s.start_ns DESC LIMIT $limit
    """
    _check_limit(limit)
    if since_ns is not None and (
        not isinstance(since_ns, int)
        or isinstance(since_ns, bool)
        or not -_INT64_MAX - 1 <= since_ns <= _INT64_MAX
    ):
        raise ValueError(f"since_ns must be a whole number of nanoseconds, got {since_ns!r}")
    if since_ns is not None and since_ns <= 0:
        since_ns = None  # every run started after 1970 (and FalkorDB's comparison overflows)
    params = {
        "project_id": project_id,
        "state": state,
        "name": name,
        "name_contains": name_contains or None,
        "since_ns": since_ns,
        "execution_id": execution_id or None,
        "limit": limit,
        "scan": _SCAN_PER_RUN * limit,
    }
    listed, agents_of = LIST_WORKFLOWS, ROOT_AGENTS
    if execution_id:  # by the index on execution_id
        listed, agents_of = EXECUTION_WORKFLOWS, EXECUTION_ROOT_AGENTS
    rows = store.query(listed, params)
    if len(rows) < limit:  # too few: fewer runs, or the newest were mostly nested ones
        rows = store.query(listed, {**params, "scan": _SCAN_ALL})
    kept = _one_row_per_trace_run(rows)
    read = limit
    while len(kept) < limit and len(rows) == read:  # repeats took places: read on
        read *= _SCAN_PER_RUN
        rows = store.query(listed, {**params, "scan": _SCAN_ALL, "limit": read})
        kept = _one_row_per_trace_run(rows)
    rows = kept[:limit]
    agents = store.query(agents_of, params)
    if agents:  # newest first, both lists already so: the first `limit` of them merged
        rows = sorted([*rows, *agents], key=lambda r: _whole(r.get("start_ns")) or 0, reverse=True)[
            :limit
        ]
    return [_decode(r) for r in rows]


def _one_row_per_trace_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (workflow spans, newest first) with one row for a run named after its
    trace (spans without run ids of their own): its earliest workflow span, in its place.
    While the trace's top span has not arrived (or never will: an exporter that did not
    end it), each workflow span under it reads as a top one, and the run was listed once
    for each."""

    def by_trace(row: dict[str, Any]) -> Any:
        trace_id = row.get("trace_id")
        return trace_id if trace_id is not None and row.get("workflow_id") == trace_id else None

    earliest: dict[Any, dict[str, Any]] = {}
    repeated = False
    for row in rows:
        trace_id = by_trace(row)
        if trace_id is None:
            continue
        known = earliest.get(trace_id)
        if known is not None:
            repeated = True
            if (_whole(row.get("start_ns")) or 0) > (_whole(known.get("start_ns")) or 0):
                continue
        earliest[trace_id] = row
    if not repeated:
        return rows
    return [row for row in rows if (t := by_trace(row)) is None or earliest[t] is row]


_SCAN_PER_RUN: Final = 4
"""Workflow spans ``workflows()`` reads first per run asked for (a run's top workflow
span and up to three of other instrumentations inside it); read them all when that
leaves too few."""
_SCAN_ALL: Final = 2**31 - 1
"""``$scan`` for all of them (FalkorDB takes a LIMIT above 2**32 as 0)."""


def path_to_root(store: GraphStore, span_id: str) -> list[dict[str, Any]]:
    """The chain of spans from the root of ``span_id``'s tree down to it, following
    each span's ``parent_span_id`` up through its ancestors in the graph.

    When the parents lead round in a cycle, the chain starts at the span where
    :func:`tree` cuts that cycle (the one of the cycle that started first, then the
    smaller span id), so a path is never longer than the graph and matches the tree.
    The walk reads :data:`PATH_HOPS` ancestors a statement, one index lookup each (not
    ``PARENT_OF`` edges: a span id met in several traces gives a node several parents).

    .. code-block:: cypher

        MATCH (s0:Span {span_id: $span_id})
        OPTIONAL MATCH (s1:Span {span_id: s0.parent_span_id})
        ...
        OPTIONAL MATCH (s15:Span {span_id: s14.parent_span_id})
        RETURN [s IN [s0, s1, ..., s15] WHERE s IS NOT NULL |
                [s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.trace_id,
                 s.state]] AS chain
    """
    chain: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    cycle_at: str | None = None
    ask: str | None = span_id
    while ask is not None:
        rows = store.query(PATH_TO_ROOT, {"span_id": ask})
        ask = None
        for sid, parent, name, kind, start_ns, trace_id, state in rows[0]["chain"] if rows else ():
            # the stand-in for a parent never written (a caller elsewhere) is not in the
            # path, as tree() leaves it out: the chain starts at the first span written
            if name is None:
                break
            # text fields as text, whatever other programs wrote (a name 5 reads "5")
            row = _decode(
                {"span_id": sid, "parent_span_id": parent, "name": name, "kind": kind,
                 "start_ns": start_ns, "trace_id": trace_id, "state": state}
            )  # fmt: skip
            if row["span_id"] in seen:
                cycle_at = row["span_id"]
                break
            seen[row["span_id"]] = len(chain)
            chain.append(row)
        else:
            if len(chain) % PATH_HOPS == 0 and chain and chain[-1]["parent_span_id"]:
                ask = chain[-1]["parent_span_id"]
    if cycle_at is not None:  # a cycle: cut it where tree() does
        cycle = chain[seen[cycle_at] :]
        head = min(cycle, key=_cycle_key)
        chain = chain[: seen[head["span_id"]] + 1]
    return [
        {"span_id": r["span_id"], "name": r.get("name"), "kind": r.get("kind"),
         "state": r.get("state"), "trace_id": r.get("trace_id")}
        for r in reversed(chain)
    ]  # fmt: skip


def workflow_events(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """Every event of a run in time order (for replaying a run).

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id})-[:HAS_EVENT]->(e:Event)
        RETURN s.span_id AS span_id, ..., e.name AS name, e.time_ns AS time_ns
        ORDER BY e.time_ns, s.span_id, e.seq
    """
    return [_decode(r) for r in store.query(WORKFLOW_EVENTS, {"workflow_id": workflow_id})]


# -- decisions, branches, monitors ------------------------------------------------------

DECISIONS: Final = (
    "MATCH (d:Span:Decision {workflow_id: $workflow_id})\n"
    "WHERE d.span_id IS NOT NULL\n"
    # OPTION_OF edges are written when the decision ends: while it is open (or when its
    # process died), the options explored so far are its Option children
    "OPTIONAL MATCH (d)-[r:OPTION_OF|PARENT_OF]->(o:Option)\n"
    "WITH d, collect(DISTINCT [o.name, o.state, o.span_id, o.start_ns, type(r)]) AS options\n"
    "OPTIONAL MATCH (d)-[:CHOSEN_OPTION]->(c:Span)\n"
    "WITH d, options, collect(DISTINCT c.name) AS chosen\n"
    "RETURN d.span_id AS span_id, d.name AS name, d.state AS state, d.start_ns AS start_ns,\n"
    "       d.branch_id AS branch_id, d.attributes AS attributes, options, chosen\n"
    "ORDER BY d.start_ns"
)

BRANCHES: Final = (
    "MATCH (b:Span:Branch {workflow_id: $workflow_id})\n"
    "WHERE b.span_id IS NOT NULL\n"
    "OPTIONAL MATCH (s:Span {branch_id: b.branch_id, workflow_id: b.workflow_id})\n"
    "WHERE s.state <> 'unexplored'\n"
    "RETURN b.span_id AS span_id, b.name AS name, b.branch_id AS branch_id,\n"
    "       b.state AS state, b.start_ns AS start_ns, b.duration_ms AS duration_ms,\n"
    "       count(s) AS nodes,\n"
    "       sum(CASE WHEN s.state = 'failed' THEN 1 ELSE 0 END) AS failed\n"
    "ORDER BY b.start_ns"
)

BRANCH_SUBTREE: Final = (
    "UNWIND $span_ids AS id\n"
    "MATCH (b:Span {span_id: id})\n"
    "OPTIONAL MATCH p = (b)-[:PARENT_OF*0..]->(s:Span)\n"
    "WHERE s.state <> 'unexplored'\n"
    "  AND all(n IN nodes(p) WHERE n.branch_id = b.branch_id)\n"
    "WITH DISTINCT b, s\n"
    "RETURN b.span_id AS span_id, count(s) AS nodes,\n"
    "       sum(CASE WHEN s.state = 'failed' THEN 1 ELSE 0 END) AS failed"
)

BRANCH_SPANS: Final = (
    "MATCH (s:Span {branch_id: $branch_id})\n"
    "WHERE s.state <> 'unexplored' AND s.span_id IS NOT NULL\n"
    "  AND ($workflow_id IS NULL OR s.workflow_id = $workflow_id)\n"
    "OPTIONAL MATCH (s)-[:HAS_EVENT]->(e:Event)\n"
    "WITH s, e ORDER BY e.seq\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS},\n"
    "       collect(e.name) AS events\n"
    "ORDER BY start_ns, span_id"
)

MONITORS: Final = (
    "MATCH (m:Span {workflow_id: $workflow_id})-[:MONITORS]->(t:Span)\n"
    "WHERE m.span_id IS NOT NULL AND t.span_id IS NOT NULL\n"
    "RETURN m.span_id AS monitor_span_id, m.name AS monitor, m.branch_id AS monitor_branch_id,\n"
    "       t.span_id AS target_span_id, t.name AS target, t.kind AS target_kind,\n"
    "       t.branch_id AS target_branch_id, m.trace_id AS monitor_trace_id,\n"
    "       t.trace_id AS target_trace_id\n"
    "ORDER BY m.start_ns, t.span_id"
)

DECISION_ANALYTICS: Final = (
    "MATCH (d:Decision {name: $name})-[:CHOSEN_OPTION]->(o:Span)\n"
    "WHERE $project_id IS NULL OR d.project_id = $project_id\n"
    # a decision counts once for an option however many edges lead to nodes of that name
    "WITH DISTINCT d, o.name AS option\n"
    # a decision made outside any workflow counts as chosen, in no run
    "OPTIONAL MATCH (w:Workflow)\n"
    "WHERE w.workflow_id = d.workflow_id\n"
    # a run id used again (another run of the same id) counts a decision once: for the
    # run of its own trace, else for one of them
    # (and of a run's workflow spans, the first: its top one, not another
    # instrumentation's workflow span inside it)
    "WITH d, option, w ORDER BY CASE WHEN w.trace_id = d.trace_id THEN 0 ELSE 1 END,\n"
    "     w.start_ns\n"
    "WITH d, option, collect(w)[0] AS w\n"
    "RETURN option, count(d) AS chosen, count(w) AS runs,\n"
    "       count(CASE WHEN w.state = 'completed' THEN 1 END) AS succeeded,\n"
    "       count(CASE WHEN w.state = 'running' THEN 1 END) AS running,\n"
    "       avg(w.duration_ms) AS mean_duration_ms\n"
    "ORDER BY chosen DESC, option"
)

ABANDONED: Final = (
    "MATCH (s:Span {state: 'running'})\n"
    "WHERE s.start_ns < $started_before_ns AND s.span_id IS NOT NULL\n"
    "  AND ($project_id IS NULL OR s.project_id = $project_id)\n"
    f"RETURN s.span_id AS {_SPAN_FIELDS}\n"
    "ORDER BY s.start_ns\n"
    "LIMIT $limit"
)

_MORE_STATEMENTS: Final = {
    "decisions": DECISIONS,
    "branches": BRANCHES,
    "branch_spans": BRANCH_SPANS,
    "branch_subtree": BRANCH_SUBTREE,
    "monitors": MONITORS,
    "decision_analytics": DECISION_ANALYTICS,
    "abandoned": ABANDONED,
}


def _attrs_of(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("attributes")
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            value = read_json(raw)
            return value if isinstance(value, dict) else {}
    return {}


def _text(value: Any) -> str | None:
    """An attribute value as text (:func:`~spangraph.mapping.option_text`), ``None`` as
    ``None``."""
    return None if value is None else option_text(value)


def _options_of(value: Any) -> list[str]:
    """The offered option names: each item of a list as :func:`_text`, a single value
    as a one-option list, as the stores keep names (:func:`~spangraph._utf8.as_stored`:
    the names a decision offers, its attributes' JSON keeps them, match its option
    nodes); each name once, in order."""
    items = value if isinstance(value, list | tuple) else [value]
    names = (_text(v) for v in items if v is not None)
    return list(dict.fromkeys(as_stored(n) for n in names if n is not None))


def _score(value: Any) -> float | None:
    """A decision's score as a finite number, or ``None`` when it is not one (a string
    such as ``"high"``, a bool, a list, NaN, an infinity). Text of a number counts."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _decision_options(
    rows: list[list[Any]], offered: list[str], listed: Any
) -> list[dict[str, Any]]:
    """A decision's options from its ``[name, state, span_id, start_ns, edge]`` rows.

    ``OPTION_OF`` edges (written when the decision ends) name its options. Its Option
    children (``PARENT_OF``) count too while it has none (it is open, or its process
    died) or when it names no option spans (plain OTel: the explored options are only
    its children); a child whose name it does not offer is another decision's (an outer
    decision's option explored inside this one). Of several nodes for one name the one
    the decision names wins (its last exploration), then an explored one, then the last
    to start.
    """
    named = set(listed) if isinstance(listed, list | tuple) else set()
    rows = [r for r in rows if r[0] is not None]
    use_children = not named or not any(r[4] == "OPTION_OF" for r in rows)
    found: dict[str, tuple[tuple[int, int, str], dict[str, Any]]] = {}
    for name, state, span_id, start_ns, edge in rows:
        name = as_stored(option_text(name))
        if edge != "OPTION_OF" and (not use_children or (offered and name not in offered)):
            continue
        explored = state != "unexplored"
        rank = (
            0 if span_id in named else 1 if explored else 2,
            -start_ns if isinstance(start_ns, int) else 0,
            str(span_id),
        )
        if name not in found or rank < found[name][0]:
            option = {"name": name, "state": state, "span_id": span_id, "explored": explored}
            found[name] = (rank, option)
    order = offered + sorted(n for n in found if n not in offered)
    return [
        found[n][1]
        if n in found
        else {"name": n, "state": None, "span_id": None, "explored": False}
        for n in order
    ]


def _routed(attrs: dict[str, Any]) -> set[str]:
    """The nodes a LangGraph route sent the run on to all at once (``langgraph.destinations``
    of a route that chose several: each of them is chosen, and no one ``chosen``)."""
    routed = attrs.get("langgraph.destinations")
    if not isinstance(routed, list | tuple):
        return set()
    return {as_stored(option_text(name)) for name in routed if name is not None}


def decisions(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """Every decision of a run with all its options (explored or not), the chosen one,
    the reason and the score, in time order. A LangGraph route that sent the run on to
    several nodes at once has no one ``chosen``: each of those options is marked chosen.

    Values other programs set are made to fit: ``chosen`` and option names that are not
    text are given as their JSON text (``7`` -> ``"7"``, ``["a"]`` -> ``'["a"]'``), and
    a ``score`` that is not a finite number (``"high"``, ``true``, ``NaN``) is ``None``.

    .. code-block:: cypher

        MATCH (d:Span:Decision {workflow_id: $workflow_id})
        OPTIONAL MATCH (d)-[r:OPTION_OF|PARENT_OF]->(o:Option)
        WITH d, collect(DISTINCT [o.name, o.state, o.span_id, o.start_ns, type(r)]) AS options
        OPTIONAL MATCH (d)-[:CHOSEN_OPTION]->(c:Span)
        WITH d, options, collect(DISTINCT c.name) AS chosen
        RETURN d.span_id AS span_id, d.name AS name, ..., options, chosen
    """
    out = []
    for row in store.query(DECISIONS, {"workflow_id": workflow_id}):
        attrs = _attrs_of(row)
        offered = _options_of(attrs.get("spangraph.decision.options"))
        listed = attrs.get("spangraph.decision.option_span_ids")
        options = _decision_options(row["options"], offered, listed)
        names = [as_stored(option_text(n)) for n in row.get("chosen") or () if n is not None]
        chosen = min(names) if names else _text(attrs.get("spangraph.decision.chosen"))
        if chosen is not None:
            chosen = as_stored(chosen)
        routed = set() if chosen is not None else _routed(attrs)
        for option in options:
            option["chosen"] = option["name"] == chosen or option["name"] in routed
        out.append(
            {
                "span_id": _text(row["span_id"]),
                "name": _text(row["name"]),
                "state": _text(row["state"]),
                "branch_id": _text(row.get("branch_id")),
                "start_ns": _whole(row["start_ns"]),
                "options": options,
                "chosen": chosen,
                "reason": attrs.get("spangraph.decision.reason"),
                "score": _score(attrs.get("spangraph.decision.score")),
            }
        )
    return out


def branches(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """The branches of a run: name, id, state, duration, how many nodes ran in each and
    how many failed.

    .. code-block:: cypher

        MATCH (b:Span:Branch {workflow_id: $workflow_id})
        OPTIONAL MATCH (s:Span {branch_id: b.branch_id, workflow_id: b.workflow_id})
        WHERE s.state <> 'unexplored'
        RETURN b.span_id AS span_id, b.name AS name, ..., count(s) AS nodes,
               sum(CASE WHEN s.state = 'failed' THEN 1 ELSE 0 END) AS failed
    """
    rows = [_decode(r) for r in store.query(BRANCHES, {"workflow_id": workflow_id})]
    uses = Counter(row.get("branch_id") for row in rows)
    # one branch id on several branch spans of the run (a loop giving each pass the same
    # id): each counts the spans below it, not all of that id (one statement for all)
    shared = [row["span_id"] for row in rows if uses[row.get("branch_id")] > 1]
    below = {}
    if shared:
        below = {r["span_id"]: r for r in store.query(BRANCH_SUBTREE, {"span_ids": shared})}
    for row in rows:
        own = below.get(row["span_id"])
        if own is not None:
            row["nodes"], row["failed"] = own["nodes"], own["failed"]
        row["nodes"], row["failed"] = int(row["nodes"] or 0), int(row["failed"] or 0)
    return rows


def branch_summary(
    store: GraphStore, branch_id: str, *, workflow_id: str | None = None
) -> dict[str, Any] | None:
    """One branch: its nodes in time order, each with its events' names, and totals.
    ``None`` for an unknown branch. Options never explored are left out (as
    :func:`branches` counts), :func:`decisions` lists them.

    A branch id given by hand (``branch(..., branch_id="retry-path")``) may be used in
    several runs: ``workflow_id`` keeps the branch's nodes in that run only, and
    ``workflow_ids`` lists the runs the nodes found belong to.

    .. code-block:: cypher

        MATCH (s:Span {branch_id: $branch_id})
        WHERE s.state <> 'unexplored' AND ($workflow_id IS NULL OR s.workflow_id = $workflow_id)
        OPTIONAL MATCH (s)-[:HAS_EVENT]->(e:Event)
        WITH s, e ORDER BY e.seq
        RETURN s.span_id AS span_id, ..., collect(e.name) AS events ORDER BY start_ns
    """
    params = {"branch_id": branch_id, "workflow_id": workflow_id}
    nodes = [_decode(r) for r in store.query(BRANCH_SPANS, params)]
    if not nodes:
        return None
    head = next((n for n in nodes if n.get("kind") == "branch"), nodes[0])
    states: dict[str, int] = {}
    for node in nodes:
        states[str(node.get("state"))] = states.get(str(node.get("state")), 0) + 1
    runs = {n.get("workflow_id") for n in nodes}
    return {
        "branch_id": branch_id,
        "name": head.get("name"),
        "workflow_id": head.get("workflow_id"),
        "workflow_ids": sorted(r for r in runs if r is not None),
        "state": head.get("state"),
        "duration_ms": head.get("duration_ms"),
        "states": states,
        "nodes": nodes,
    }


def monitors(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """Cross-branch monitors of a run: each monitor span, what it watches, and the
    branches of both.

    .. code-block:: cypher

        MATCH (m:Span {workflow_id: $workflow_id})-[:MONITORS]->(t:Span)
        RETURN m.span_id AS monitor_span_id, m.name AS monitor, m.branch_id AS ...,
               t.span_id AS target_span_id, t.name AS target, t.branch_id AS ...,
               m.trace_id AS monitor_trace_id, t.trace_id AS target_trace_id
    """
    return [
        {k: _text(v) for k, v in row.items()}  # all text (another program may write other)
        for row in store.query(MONITORS, {"workflow_id": workflow_id})
    ]


_PROMOTED_PROPERTIES: Final = (
    (sc.KIND, "kind"),
    (sc.WORKFLOW_ID, "workflow_id"),
    (sc.EXECUTION_ID, "execution_id"),
    (sc.BRANCH_ID, "branch_id"),
    (sc.PROJECT_ID, "project_id"),
)


def _promoted(span: dict[str, Any]) -> dict[str, Any]:
    """The run's ids a spangraph span's live messages carry in ``attributes``, which the
    graph keeps as node properties of their own (``mapping.PROMOTED``). None for a plain
    OTel span (kind ``span``): it carried none, though the graph files it in a run."""
    if span.get("kind") in (None, sc.KIND_SPAN):
        return {}
    return {key: span[prop] for key, prop in _PROMOTED_PROPERTIES if span.get(prop) is not None}


def replay(store: GraphStore, workflow_id: str) -> list[dict[str, Any]]:
    """A run as the ordered list of messages a live subscriber would have seen
    (``span.started``, every event, ``span.ended``), numbered by ``seq`` — ready to
    re-render the run. Built from :func:`workflow_spans` and :func:`workflow_events`."""
    spans = {s["span_id"]: s for s in workflow_spans(store, workflow_id)}
    messages: list[tuple[int, int, dict[str, Any]]] = []

    def message(kind: str, span: dict[str, Any], time_ns: int, attributes: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "workflow_id": workflow_id,
            "project_id": span.get("project_id"),
            "trace_id": span.get("trace_id"),
            "span_id": span["span_id"],
            "parent_span_id": span.get("parent_span_id"),
            "kind": span.get("kind"),
            "name": span.get("name"),
            "time_unix_nano": time_ns,
            "timestamp": iso_time(time_ns) if 0 <= time_ns <= _INT64_MAX else None,
            "attributes": attributes if isinstance(attributes, dict) else {},
            "service": span.get("service"),
            "env": span.get("env"),
        }

    for span in spans.values():
        if span.get("state") == "unexplored" or span.get("start_ns") is None:
            continue
        stored = span.get("attributes")
        promoted = _promoted(span)
        attributes = {**(stored if isinstance(stored, dict) else {}), **promoted}
        messages.append(
            (
                span["start_ns"],
                replay_rank(sc.SPAN_STARTED),
                message(sc.SPAN_STARTED, span, span["start_ns"], attributes),
            )
        )
        if span.get("end_ns") is not None:
            attrs = {
                **attributes,
                **({sc.STATE: span["state"]} if promoted and span.get("state") else {}),
                "state": span.get("state"),
                "duration_ms": span.get("duration_ms"),
            }
            messages.append(
                (
                    span["end_ns"],
                    replay_rank(sc.SPAN_ENDED),
                    message(sc.SPAN_ENDED, span, span["end_ns"], attrs),
                )
            )
    for event in workflow_events(store, workflow_id):
        event_span = spans.get(event["span_id"])
        if (
            event_span is not None
            and event.get("time_ns") is not None  # (none: another program's)
            and event.get("name") is not None  # (the message's type)
        ):
            messages.append(
                (
                    event["time_ns"],
                    replay_rank(event_type(event["name"])),
                    message(
                        event_type(event["name"]),
                        event_span,
                        event["time_ns"],
                        event.get("attributes"),
                    ),
                )
            )
    messages.sort(key=lambda m: (m[0], m[1]))
    out = []
    for seq, (_, _, msg) in enumerate(messages, start=1):
        msg["seq"] = seq
        out.append(msg)
    return out


REPLAYED_SPANS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})\n"
    "WHERE s.span_id IS NOT NULL AND s.start_ns IS NOT NULL\n"
    "  AND coalesce(s.state, '') <> 'unexplored'\n"
    "RETURN s.span_id AS span_id, s.end_ns IS NOT NULL AS ended"
)

_MORE_STATEMENTS["replayed_spans"] = REPLAYED_SPANS


def replay_rank(message_type: str) -> int:
    """Where a replay puts a message among those of the same time: a span's start, its
    events, its end."""
    return 0 if message_type == sc.SPAN_STARTED else 2 if message_type == sc.SPAN_ENDED else 1


def replayed_spans(store: GraphStore, workflow_id: str) -> tuple[set[str], set[str]]:
    """The ids of the spans of a run that a replay shows with a ``span.started`` (as
    :func:`replay`: neither options never explored nor placeholders of parents never
    written), and of those that ended (with a ``span.ended``). One look-up over the
    ``workflow_id`` index.

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id})
        WHERE s.span_id IS NOT NULL AND s.start_ns IS NOT NULL
          AND coalesce(s.state, '') <> 'unexplored'
        RETURN s.span_id AS span_id, s.end_ns IS NOT NULL AS ended
    """
    started: set[str] = set()
    ended: set[str] = set()
    for row in store.query(REPLAYED_SPANS, {"workflow_id": workflow_id}):
        span_id = row.get("span_id")
        if isinstance(span_id, str):
            started.add(span_id)
            if row.get("ended") is True:
                ended.add(span_id)
    return started, ended


def decision_analytics(
    store: GraphStore, name: str, *, project_id: str | None = None
) -> list[dict[str, Any]]:
    """For the decision named ``name``, across runs: how often each option was chosen
    (``chosen``), in how many workflow runs (``runs``: a decision made outside any
    ``workflow`` is in none), how many of them completed (``succeeded``) and still run
    (``running``: or their process died), and the success rate and mean duration of
    those that ended (``success_rate`` = succeeded / (runs - running)).

    .. code-block:: cypher

        MATCH (d:Decision {name: $name})-[:CHOSEN_OPTION]->(o:Span)
        WHERE $project_id IS NULL OR d.project_id = $project_id
        WITH DISTINCT d, o.name AS option
        OPTIONAL MATCH (w:Workflow) WHERE w.workflow_id = d.workflow_id
        WITH d, option, w ORDER BY CASE WHEN w.trace_id = d.trace_id THEN 0 ELSE 1 END
        WITH d, option, collect(w)[0] AS w
        RETURN option, count(d) AS chosen, count(w) AS runs,
               count(CASE WHEN w.state = 'completed' THEN 1 END) AS succeeded,
               count(CASE WHEN w.state = 'running' THEN 1 END) AS running,
               avg(w.duration_ms) AS mean_duration_ms
        ORDER BY chosen DESC, option
    """
    rows = store.query(DECISION_ANALYTICS, {"name": name, "project_id": project_id})
    for row in rows:
        row["chosen"], row["runs"] = int(row["chosen"]), int(row["runs"] or 0)
        row["succeeded"], row["running"] = int(row["succeeded"] or 0), int(row["running"] or 0)
        ended = row["runs"] - row["running"]
        row["success_rate"] = round(row["succeeded"] / ended, 4) if ended else None
        if row.get("mean_duration_ms") is not None:
            row["mean_duration_ms"] = round(float(row["mean_duration_ms"]), 3)
    return rows


def abandoned(
    store: GraphStore,
    *,
    older_than_s: float = 3600.0,
    project_id: str | None = None,
    limit: int = 100,
    now_ns: int | None = None,
) -> list[dict[str, Any]]:
    """Spans still ``running`` that started more than ``older_than_s`` seconds ago: their
    process most likely died (a killed process leaves its partial tree running).

    .. code-block:: cypher

        MATCH (s:Span {state: 'running'})
        WHERE s.start_ns < $started_before_ns
          AND ($project_id IS NULL OR s.project_id = $project_id)
        RETURN s.span_id AS span_id, ... ORDER BY s.start_ns LIMIT $limit
    """
    _check_age(older_than_s)
    _check_limit(limit)
    now = time.time_ns() if now_ns is None else now_ns
    params = {
        "started_before_ns": now - int(older_than_s * 1e9),
        "project_id": project_id,
        "limit": limit,
    }
    return [_decode(r) for r in store.query(ABANDONED, params)]


def diff(
    store: GraphStore,
    a: str,
    b: str,
    *,
    branches: bool = False,
    workflow_a: str | None = None,
    workflow_b: str | None = None,
) -> dict[str, Any]:
    """Structural diff of two runs (workflow ids), or of two branches (branch ids with
    ``branches=True``; ``workflow_a`` / ``workflow_b``: the branch of that run only, as
    :func:`branch_summary` reads it, for a branch id given in several runs): the first
    point where they diverge (a different step, or a different chosen option at the
    same decision), the steps found in only one of them, the duration difference of
    every step found in both (``delta_ms`` = b - a), and those of them that ended
    differently (``states``: failed in one, completed in the other, or still running).

    Spans are compared by their path of names from the run's (or branch's) root, in
    depth-first order with siblings by start time. Built from :func:`workflow_spans`
    (or the spans of :func:`branch_summary`).
    """
    from ._diff import diff as structural_diff

    if not branches and (workflow_a is not None or workflow_b is not None):
        raise ValueError("workflow_a and workflow_b choose the runs of branches: branches=True")

    def spans_of(key: str, workflow_id: str | None) -> list[dict[str, Any]]:
        if branches:
            summary = branch_summary(store, key, workflow_id=workflow_id)
            spans = summary["nodes"] if summary else []
        else:
            spans = workflow_spans(store, key)
        # a decision's choice as decisions() gives it: its chosen_option link first
        # (another program's decision may name its choice only so), then its attribute
        ids = [s["span_id"] for s in spans if s.get("kind") == "decision"]
        if ids:
            linked = {
                row["span_id"]: [as_stored(option_text(n)) for n in row["chosen"] if n is not None]
                for row in store.query(CHOSEN_BY_LINK, {"span_ids": ids})
            }
            for span in spans:
                names = linked.get(span["span_id"])
                if names:
                    span["chosen"] = min(names)
                elif span.get("kind") == "decision":
                    chosen = _text(_attrs_of(span).get("spangraph.decision.chosen"))
                    if chosen is not None:  # named as the stores name option nodes
                        span["chosen"] = as_stored(chosen)
        return spans

    return structural_diff(a, spans_of(a, workflow_a), b, spans_of(b, workflow_b)).to_dict()


CHOSEN_BY_LINK: Final = (
    "MATCH (d:Span:Decision)-[:CHOSEN_OPTION]->(c:Span)\n"
    "WHERE d.span_id IN $span_ids\n"
    "RETURN d.span_id AS span_id, collect(DISTINCT c.name) AS chosen"
)

_MORE_STATEMENTS["chosen_by_link"] = CHOSEN_BY_LINK


NODE: Final = f"MATCH (s:Span {{span_id: $span_id}})\nRETURN s.span_id AS {_SPAN_FIELDS}"

NODE_EVENTS: Final = (
    "MATCH (s:Span {span_id: $span_id})-[:HAS_EVENT]->(e:Event)\n"
    "RETURN e.seq AS seq, e.name AS name, e.time_ns AS time_ns, e.attributes AS attributes\n"
    "ORDER BY e.seq"
)

_MORE_STATEMENTS.update({"node": NODE, "node_events": NODE_EVENTS})


def node(store: GraphStore, span_id: str) -> dict[str, Any] | None:
    """One span with its events (in order), or ``None`` when unknown.

    .. code-block:: cypher

        MATCH (s:Span {span_id: $span_id}) RETURN s.span_id AS span_id, ...
        MATCH (s:Span {span_id: $span_id})-[:HAS_EVENT]->(e:Event)
        RETURN e.seq AS seq, e.name AS name, ... ORDER BY e.seq
    """
    rows = store.query(NODE, {"span_id": span_id})
    if not rows:
        return None
    found = _decode(rows[0])
    found["events"] = [_decode(e) for e in store.query(NODE_EVENTS, {"span_id": span_id})]
    return found


# -- what an id names -------------------------------------------------------------------

RUN_EXISTS: Final = (
    "MATCH (s:Span {workflow_id: $workflow_id})\n"
    "WHERE s.span_id IS NOT NULL\n"
    "RETURN s.span_id AS span_id\n"
    "LIMIT 1"
)

RUN_OF: Final = {
    kind: (
        f"MATCH (s:Span {{{key}: $id}})\n"
        "WHERE s.workflow_id IS NOT NULL AND s.name IS NOT NULL\n"
        "RETURN s.workflow_id AS workflow_id, s.name AS name, s.kind AS kind,\n"
        "       s.parent_span_id AS parent_span_id\n"
        "ORDER BY s.start_ns\n"
        "LIMIT 1"
    )
    for kind, key in (("span", "span_id"), ("trace", "trace_id"), ("branch", "branch_id"))
}
"""By the kind of id (``span``, ``trace``, ``branch``): the first span it names, with
its run's ``workflow_id`` (of a trace, the span that started first: its top run's)."""

DECISION_NAMES: Final = (
    "MATCH (d:Decision)\n"
    "WHERE d.name IS NOT NULL AND toLower(toString(d.name)) = toLower($name)\n"
    "RETURN DISTINCT d.name AS name\n"
    "ORDER BY name\n"
    "LIMIT 5"
)

_MORE_STATEMENTS.update(
    {
        "run_exists": RUN_EXISTS,
        **{f"run_of_{kind}": text for kind, text in RUN_OF.items()},
        "decision_names": DECISION_NAMES,
    }
)


def run_exists(store: GraphStore, workflow_id: str) -> bool:
    """Whether any span has the run id ``workflow_id`` (one index look-up).

    .. code-block:: cypher

        MATCH (s:Span {workflow_id: $workflow_id}) WHERE s.span_id IS NOT NULL
        RETURN s.span_id AS span_id LIMIT 1
    """
    return bool(store.query(RUN_EXISTS, {"workflow_id": workflow_id}))


def run_of(store: GraphStore, some_id: str) -> tuple[str, dict[str, Any]] | None:
    """What ``some_id`` names when it is not a run's id but the id of a span, a trace or
    a branch: ``("span" | "trace" | "branch", {workflow_id, name, kind,
    parent_span_id})`` of the first span it names (tried in that order, one index
    look-up each), or ``None``.

    .. code-block:: cypher

        MATCH (s:Span {span_id: $id})  // then {trace_id: $id}, then {branch_id: $id}
        WHERE s.workflow_id IS NOT NULL AND s.name IS NOT NULL
        RETURN s.workflow_id AS workflow_id, s.name AS name, s.kind AS kind,
               s.parent_span_id AS parent_span_id
        ORDER BY s.start_ns LIMIT 1
    """
    for kind, statement in RUN_OF.items():
        rows = store.query(statement, {"id": some_id})
        if rows:
            return kind, _decode(rows[0])
    return None


RESUMED_RUNS: Final = (
    "MATCH (s:Span {span_id: $span_id})-[:RESUMED_FROM]->(p:Span)\n"
    "WHERE p.workflow_id IS NOT NULL\n"
    "RETURN DISTINCT p.workflow_id AS workflow_id"
)
_MORE_STATEMENTS["resumed_runs"] = RESUMED_RUNS


def resumed_runs(store: GraphStore, span_id: str) -> list[str]:
    """The runs (workflow ids) the span resumed: the targets of its ``RESUMED_FROM``
    edges, the program's or inferred by the graph writer (a LangGraph thread resumed in
    another process).

    .. code-block:: cypher

        MATCH (s:Span {span_id: $span_id})-[:RESUMED_FROM]->(p:Span)
        WHERE p.workflow_id IS NOT NULL
        RETURN DISTINCT p.workflow_id AS workflow_id
    """
    rows = store.query(RESUMED_RUNS, {"span_id": span_id})
    return sorted(text for row in rows if (text := _text(row.get("workflow_id"))) is not None)


EXCEPTIONS: Final = (
    "UNWIND $span_ids AS id\n"
    "MATCH (s:Span {span_id: id})-[:HAS_EVENT]->(e:Event)\n"
    "WHERE e.name = 'exception'\n"
    "RETURN s.span_id AS span_id, e.seq AS seq, e.attributes AS attributes\n"
    "ORDER BY span_id, seq"
)
_MORE_STATEMENTS["exceptions"] = EXCEPTIONS


def exception_texts(store: GraphStore, span_ids: Sequence[str]) -> dict[str, str]:
    """Each span's last recorded exception as ``Type: message`` (the ``exception`` event
    OpenTelemetry's ``record_exception`` writes), by span id; spans without one are left
    out. What the tree says of a span that failed without a status message (several
    instrumentations record the error only so), as the web UI does.

    .. code-block:: cypher

        UNWIND $span_ids AS id
        MATCH (s:Span {span_id: id})-[:HAS_EVENT]->(e:Event)
        WHERE e.name = 'exception'
        RETURN s.span_id AS span_id, e.seq AS seq, e.attributes AS attributes
        ORDER BY span_id, seq
    """
    if not span_ids:
        return {}
    found: dict[str, str] = {}
    for row in store.query(EXCEPTIONS, {"span_ids": list(span_ids)}):
        row = _decode(row)
        attributes, span_id = row["attributes"], row.get("span_id")
        said = [attributes.get(k) for k in ("exception.type", "exception.message")]
        text = ": ".join(t for t in said if isinstance(t, str) and t.strip())
        if text and isinstance(span_id, str):
            found[span_id] = text  # the last one of the span's, in order
    return found


def decision_names(store: GraphStore, name: str) -> list[str]:
    """The names of decisions that are ``name`` but for upper and lower case (``name``
    itself among them when a decision has it), at most five, in order.

    .. code-block:: cypher

        MATCH (d:Decision)
        WHERE d.name IS NOT NULL AND toLower(toString(d.name)) = toLower($name)
        RETURN DISTINCT d.name AS name ORDER BY name LIMIT 5
    """
    rows = store.query(DECISION_NAMES, {"name": name})
    return [text for row in rows if (text := _text(row.get("name"))) is not None]
