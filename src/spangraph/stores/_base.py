"""The GraphStore protocol and the batch it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Row = dict[str, Any]


@dataclass(slots=True)
class WriteBatch:
    """Rows for one round trip to the store, grouped by the statement that writes them.

    ``starts`` and ``ends`` are keyed by graph label (``None`` for spans without a kind
    label); ``links`` by relationship type. Labels and relationship types come only from
    the fixed maps in :mod:`spangraph.semconv` and :mod:`spangraph.stores.cypher`.
    """

    starts: dict[str | None, list[Row]] = field(default_factory=dict)
    ends: dict[str | None, list[Row]] = field(default_factory=dict)
    parents: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)
    links: dict[str, list[Row]] = field(default_factory=dict)
    adopted: list[Row] = field(default_factory=list)
    """Spans written earlier under their trace id as run, now given their parent's run
    ids (``mapping.Lineage``): ``{span_id, trace_id, workflow_id, execution_id,
    branch_id, project_id}`` (``project_id``: the parent's, for a span that had none of
    its own, else None)."""
    resumes: list[Row] = field(default_factory=list)
    """Workflow spans that resumed without saying which run (``{span_id, execution_id,
    start_ns}``): linked to the run before them in their execution, when it paused."""
    relabels: dict[str, list[Row]] = field(default_factory=dict)
    """Spans (``{span_id}``) whose start was written with the kind label of the key and
    whose end, in this batch, names another: that label goes after the end rows."""
    pauses: list[Row] = field(default_factory=list)
    """Workflow spans that paused (``{span_id, execution_id, start_ns}``): the run after
    them in their execution, when it resumed without saying which run, is linked to
    them (it may have been written first)."""

    def __len__(self) -> int:
        return sum(len(r) for r in self.starts.values()) + sum(len(r) for r in self.ends.values())

    def statements(self) -> list[tuple[str, dict[str, Any]]]:
        """The (cypher, params) pairs that write this batch, in a safe order."""
        from . import cypher

        out: list[tuple[str, dict[str, Any]]] = []
        for label, rows in self.starts.items():
            out.append((cypher.upsert_started(label), {"rows": rows}))
        for label, rows in self.ends.items():
            out.append((cypher.upsert_ended(label), {"rows": rows}))
        if self.parents:
            out.append((cypher.MERGE_PARENT_EDGES, {"rows": self.parents}))
        out += self.event_and_link_statements()
        return out

    def split(self) -> tuple[WriteBatch, WriteBatch] | None:
        """This batch as two, each with every row of its spans (the first half of the
        spans, in the order their rows come, and the rest); ``None`` when it has rows of
        fewer than two spans. Written one after the other, the two write what this one
        does: every statement merges the nodes it refers to, in any order."""
        owners = dict.fromkeys(  # span ids in the order their rows come
            row["span_id"]
            for group in (*self.starts.values(), *self.ends.values())
            for row in group
        )
        # a decision's options (Option nodes in ``ends``) go with their decision
        option_of = {
            row["target_span_id"]: row["span_id"] for row in self.links.get("option_of", ())
        }
        spans = [sid for sid in owners if sid not in option_of]
        if len(spans) < 2:
            return None
        first = set(spans[: len(spans) // 2])

        def in_first(row: Row) -> bool:
            span_id = row["span_id"]
            return option_of.get(span_id, span_id) in first

        halves = (WriteBatch(), WriteBatch())
        for name in ("starts", "ends", "links", "relabels"):
            for key, rows in getattr(self, name).items():
                for row in rows:
                    half = getattr(halves[0 if in_first(row) else 1], name)
                    half.setdefault(key, []).append(row)
        for name in ("parents", "events", "resumes", "pauses"):
            for row in getattr(self, name):
                getattr(halves[0 if in_first(row) else 1], name).append(row)
        for i, row in enumerate(self.adopted):
            # with its span's rows; one whose span was written before goes to either
            # half, so that a batch split for its size gets smaller statements
            first_half = in_first(row) if row["span_id"] in owners else i % 2 == 0
            halves[0 if first_half else 1].adopted.append(row)
        return halves

    def event_and_link_statements(self) -> list[tuple[str, dict[str, Any]]]:
        """The statements of :meth:`statements` that remove a start's kind label the end
        replaced, write events and links, and correct adopted spans' run ids (the last:
        after the rows of those spans)."""
        from . import cypher

        out: list[tuple[str, dict[str, Any]]] = [
            (cypher.remove_label(label), {"rows": rows}) for label, rows in self.relabels.items()
        ]  # (after the span rows, which set the end's label)
        if self.events:
            out.append((cypher.MERGE_EVENTS, {"rows": self.events}))
        for rel, rows in self.links.items():
            out.append((cypher.merge_links(rel), {"rows": rows}))
        if self.adopted:
            out.append((cypher.ADOPT_SPANS, {"rows": self.adopted}))
        if self.resumes:  # after the events: a run resumed in this batch may be the one
            out.append((cypher.LINK_RESUMES, {"rows": self.resumes}))
        if self.pauses:
            out.append((cypher.LINK_PAUSES, {"rows": self.pauses}))
        return out


@runtime_checkable
class GraphStore(Protocol):
    """Where spans are kept. Implementations: FalkorDB (embedded default) and Neo4j.

    ``write`` raises :class:`~spangraph.exceptions.StoreUnavailableError` when the store
    cannot be reached (the caller retries) and :class:`~spangraph.exceptions.StoreError`
    when it rejects a statement (the caller drops the batch and counts it).

    Optional, for faster writes (``FalkorDBStore`` has both): ``encode(batch)`` returns
    what ``write`` also accepts, with the client-side work done (``GraphSpanProcessor``
    calls it on its mapping thread), and ``submit(encoded)`` sends it without waiting
    and returns a function that waits for the reply, raising as ``write`` does
    (``GraphSpanProcessor`` keeps two batches in flight with it). ``submit`` is called
    from one thread, and its replies are waited for in the order of the submits.
    """

    name: str

    def ensure_schema(self) -> None:
        """Create indexes and constraints if missing (idempotent)."""

    def write(self, batch: WriteBatch) -> None:
        """Write one batch in one round trip where the store allows it."""

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read statement; rows as dicts keyed by the RETURN names."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the store answers."""

    def close(self) -> None:
        """Release connections."""
