"""From OpenTelemetry spans to graph rows and live messages: pure functions.

Nothing here does I/O. The processors call these on their worker threads, never on the
thread that starts or ends a span.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from . import semconv as sc

PROMOTED: Final = frozenset(
    {sc.KIND, sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.BRANCH_ID, sc.PROJECT_ID, sc.STATE}
)
"""Attributes stored as node properties of their own, not inside ``attributes``."""

GEN_AI_KINDS: Final = {
    "invoke_workflow": sc.KIND_WORKFLOW,
    "invoke_agent": sc.KIND_AGENT,
    "create_agent": sc.KIND_AGENT,
    "execute_tool": sc.KIND_TOOL,
    "chat": sc.KIND_LLM,
    "text_completion": sc.KIND_LLM,
    "generate_content": sc.KIND_LLM,
    "embeddings": sc.KIND_LLM,
}
"""Kind of a span that has no ``spangraph.kind`` but a GenAI operation name."""

OPENINFERENCE_KINDS: Final = {
    "LLM": sc.KIND_LLM,
    "EMBEDDING": sc.KIND_LLM,
    "TOOL": sc.KIND_TOOL,
    "AGENT": sc.KIND_AGENT,
    "CHAIN": sc.KIND_STEP,
    "RETRIEVER": sc.KIND_STEP,
    "RERANKER": sc.KIND_STEP,
    "GUARDRAIL": sc.KIND_STEP,
    "EVALUATOR": sc.KIND_STEP,
    "PROMPT": sc.KIND_STEP,
}
"""Kind of a span by OpenInference's ``openinference.span.kind`` (``UNKNOWN``: none)."""

TRACELOOP_KINDS: Final = {
    "workflow": sc.KIND_WORKFLOW,
    "task": sc.KIND_STEP,
    "agent": sc.KIND_AGENT,
    "tool": sc.KIND_TOOL,
}
"""Kind of a span by OpenLLMetry's ``traceloop.span.kind`` (``unknown``: none)."""

LLM_REQUEST_KINDS: Final = {
    "chat": sc.KIND_LLM,
    "completion": sc.KIND_LLM,
    "embedding": sc.KIND_LLM,
    "rerank": sc.KIND_STEP,
}
"""Kind of a span by OpenLLMetry's ``llm.request.type`` on model calls."""


def _any_case(table: Mapping[str, str]) -> dict[str, str]:
    return {**{k.lower(): v for k, v in table.items()}, **{k.upper(): v for k, v in table.items()}}


_FOREIGN_KINDS: Final = (
    (sc.GEN_AI_OPERATION_NAME, GEN_AI_KINDS),
    (sc.OPENINFERENCE_SPAN_KIND, _any_case(OPENINFERENCE_KINDS)),
    (sc.TRACELOOP_SPAN_KIND, _any_case(TRACELOOP_KINDS)),
    (sc.LLM_REQUEST_TYPE, _any_case(LLM_REQUEST_KINDS)),
)
"""(attribute key, value -> kind) in the order :func:`kind_of` consults them."""

LIVE_ONLY_EVENTS: Final = frozenset({sc.TOKEN})
"""Events streamed live but never written to the graph."""

_STATUS_NAMES: Final = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}


def hex_span_id(span_id: int) -> str:
    return format(span_id, "016x")


def hex_trace_id(trace_id: int) -> str:
    return format(trace_id, "032x")


def iso_time(time_ns: int) -> str:
    """ISO-8601 UTC with microseconds, e.g. ``2026-11-21T23:16:48.006123Z``."""
    return (
        datetime.fromtimestamp(time_ns / 1e9, tz=UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def to_json(value: Any) -> str:
    """Compact JSON; tuples become lists and anything else its ``str``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def kind_of(attributes: Mapping[str, Any]) -> str:
    """The spangraph kind of a span: its ``spangraph.kind``; else the first of
    ``gen_ai.operation.name``, ``openinference.span.kind``, ``traceloop.span.kind`` and
    ``llm.request.type`` whose value names a kind; else ``span`` (no label).

    Runs on the worker for every span: a handful of dict look-ups, no string work."""
    kind = attributes.get(sc.KIND)
    if kind is not None and kind in sc.KIND_LABELS:
        return str(kind)
    get = attributes.get
    for key, table in _FOREIGN_KINDS:
        value = get(key)
        if value is not None and type(value) is str:
            found = table.get(value)
            if found is not None:
                return found
    return sc.KIND_SPAN


def label_of(kind: str) -> str | None:
    return sc.KIND_LABELS.get(kind)


def state_of(span: ReadableSpan, attributes: Mapping[str, Any]) -> str:
    state = attributes.get(sc.STATE)
    if state in (sc.STATE_COMPLETED, sc.STATE_FAILED, sc.STATE_CANCELLED):
        return str(state)
    return sc.STATE_FAILED if span.status.status_code is StatusCode.ERROR else sc.STATE_COMPLETED


class Resources:
    """``service`` and ``env`` of each Resource, computed once per Resource object."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Any, str | None, str | None]] = {}

    def service_env(self, span: ReadableSpan) -> tuple[str | None, str | None]:
        resource = span.resource
        hit = self._cache.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1], hit[2]
        attrs = resource.attributes if resource is not None else {}
        service = attrs.get(sc.SERVICE_NAME)
        env = attrs.get(sc.DEPLOYMENT_ENVIRONMENT) or attrs.get("deployment.environment")
        out = (str(service) if service is not None else None, str(env) if env is not None else None)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[id(resource)] = (resource, *out)
        return out


class Lineage:
    """Remembers the run ids of recent spans so that spans from other instrumentations
    (which carry no ``spangraph.*`` attributes) inherit them from their parent.

    Bounded: the oldest entries go first once ``max_entries`` is reached.
    """

    __slots__ = ("_ids", "max_entries")

    def __init__(self, max_entries: int = 65_536) -> None:
        self._ids: dict[str, tuple[str | None, str | None, str | None]] = {}
        self.max_entries = max_entries

    def resolve(
        self, span_id: str, parent_id: str | None, trace_id: str, attributes: Mapping[str, Any]
    ) -> tuple[str, str | None, str | None]:
        """(workflow_id, execution_id, branch_id) for a span, remembering the answer."""
        workflow_id = attributes.get(sc.WORKFLOW_ID)
        execution_id = attributes.get(sc.EXECUTION_ID)
        branch_id = attributes.get(sc.BRANCH_ID)
        if parent_id is not None and (workflow_id is None or branch_id is None):
            inherited = self._ids.get(parent_id)
            if inherited is not None:
                if workflow_id is None:
                    workflow_id, execution_id = inherited[0], execution_id or inherited[1]
                if branch_id is None:
                    branch_id = inherited[2]
        ids = self._ids
        if span_id not in ids:
            if len(ids) >= self.max_entries:
                del ids[next(iter(ids))]
            ids[span_id] = (workflow_id, execution_id, branch_id)
        return (str(workflow_id) if workflow_id else trace_id), execution_id, branch_id


class SpanMapper:
    """Maps spans to graph rows and live messages, with the state the mapping needs
    (run-id inheritance, per-Resource cache). One per worker thread."""

    __slots__ = ("default_project", "lineage", "resources")

    def __init__(self, default_project: str) -> None:
        self.default_project = default_project
        self.lineage = Lineage()
        self.resources = Resources()

    def common(self, span: ReadableSpan, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Properties a node and a live message share."""
        ctx = span.context
        span_id = hex_span_id(ctx.span_id)
        trace_id = hex_trace_id(ctx.trace_id)
        parent = span.parent
        parent_id = hex_span_id(parent.span_id) if parent is not None else None
        workflow_id, execution_id, branch_id = self.lineage.resolve(
            span_id, parent_id, trace_id, attributes
        )
        service, env = self.resources.service_env(span)
        return {
            "span_id": span_id,
            "trace_id": trace_id,
            "parent_span_id": parent_id,
            "workflow_id": workflow_id,
            "execution_id": execution_id,
            "branch_id": branch_id,
            "project_id": str(attributes.get(sc.PROJECT_ID) or self.default_project),
            "kind": kind_of(attributes),
            "name": span.name,
            "service": service,
            "env": env,
        }

    def node_props(self, span: ReadableSpan, *, ended: bool) -> tuple[str | None, dict[str, Any]]:
        """(label, properties) of a span's node, at its start or its end.

        ``None`` values are left out, so a later write never erases what an earlier one set.
        """
        attributes = dict(span.attributes or {})
        props = self.common(span, attributes)
        props["start_ns"] = span.start_time
        rest = {k: v for k, v in attributes.items() if k not in PROMOTED}
        props["attributes"] = to_json(rest)
        if ended and span.end_time is not None:
            status = span.status
            props["state"] = state_of(span, attributes)
            props["status"] = _STATUS_NAMES.get(status.status_code, "UNSET")
            props["status_message"] = status.description
            props["end_ns"] = span.end_time
            props["duration_ms"] = round((span.end_time - (span.start_time or 0)) / 1e6, 3)
        label = label_of(props["kind"])
        return label, {k: v for k, v in props.items() if v is not None}

    @staticmethod
    def event_rows(span: ReadableSpan, span_id: str) -> list[dict[str, Any]]:
        """``HAS_EVENT`` rows for the span's events (live-only events left out)."""
        return [
            {
                "span_id": span_id,
                "seq": seq,
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": to_json(dict(event.attributes or {})),
            }
            for seq, event in enumerate(span.events)
            if event.name not in LIVE_ONLY_EVENTS
        ]

    @staticmethod
    def option_rows(
        span: ReadableSpan, props: Mapping[str, Any], span_id: str
    ) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """For an ended decision: (rows of option nodes that were never explored, edges).

        Edges are ``option_of`` to every option node and ``chosen_option`` to the chosen
        one. An unexplored option gets a node of its own whose id is derived from the
        decision's id and the option's name, so replays write the same node.
        """
        attributes = span.attributes or {}
        options = attributes.get(sc.DECISION_OPTIONS) or ()
        explored = attributes.get(sc.DECISION_OPTION_SPAN_IDS) or ()
        chosen = attributes.get(sc.DECISION_CHOSEN)
        nodes: list[dict[str, Any]] = []
        edges: list[tuple[str, dict[str, Any]]] = []
        for i, name in enumerate(options):
            option_id = explored[i] if i < len(explored) and explored[i] else None
            if option_id is None:
                option_id = unexplored_option_id(span_id, str(name))
                node = {k: props[k] for k in _OPTION_INHERITS if props.get(k) is not None}
                node.update(
                    kind=sc.KIND_OPTION,
                    name=str(name),
                    state=sc.STATE_UNEXPLORED,
                    parent_span_id=span_id,
                    attributes="{}",
                )
                nodes.append({"span_id": option_id, "props": node})
            row = {"span_id": span_id, "target_span_id": option_id}
            edges.append(("option_of", row))
            if name == chosen:
                edges.append((sc.LINK_CHOSEN_OPTION, row))
        return nodes, edges

    @staticmethod
    def link_rows(span: ReadableSpan, span_id: str) -> list[tuple[str, dict[str, Any]]]:
        """(link type, row) for each span link that carries a ``spangraph.link.type``."""
        out = []
        for link in span.links:
            link_type = (link.attributes or {}).get(sc.LINK_TYPE)
            if link_type in sc.LINK_TYPES:
                target = hex_span_id(link.context.span_id)
                out.append((str(link_type), {"span_id": span_id, "target_span_id": target}))
        return out


_OPTION_INHERITS: Final = (
    "trace_id",
    "workflow_id",
    "execution_id",
    "branch_id",
    "project_id",
    "service",
    "env",
    "start_ns",
)


def unexplored_option_id(decision_span_id: str, option: str) -> str:
    """Node id of an option that was offered but not explored: 16 hex chars derived from
    the decision's span id and the option's name."""
    digest = hashlib.blake2b(f"{decision_span_id}\0{option}".encode(), digest_size=8)
    return digest.hexdigest()


def live_message(
    message_type: str,
    common: Mapping[str, Any],
    time_ns: int,
    attributes: Mapping[str, Any] | Sequence[Any] | None,
) -> tuple[str, str]:
    """The wire message as two JSON fragments around ``seq``, which Redis fills in.

    ``head + str(seq) + tail`` is one JSON object with the keys of DESIGN.md in order.
    """
    head = '{"type":' + to_json(message_type) + ',"seq":'
    body = {
        "workflow_id": common["workflow_id"],
        "project_id": common["project_id"],
        "trace_id": common["trace_id"],
        "span_id": common["span_id"],
        "parent_span_id": common["parent_span_id"],
        "kind": common["kind"],
        "name": common["name"],
        "timestamp": iso_time(time_ns),
        "time_unix_nano": time_ns,
        "attributes": dict(attributes) if isinstance(attributes, Mapping) else {},
        "service": common["service"],
        "env": common["env"],
    }
    tail = "," + to_json(body)[1:]
    return head, tail
