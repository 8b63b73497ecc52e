"""From OpenTelemetry spans to graph rows and live messages: pure functions.

Nothing here does I/O. The processors call these on their worker threads, never on the
thread that starts or ends a span.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from . import semconv as sc
from ._attrs import MAX_VALUE_CHARS, cut_json, safe_str, truncate, truncate_text
from ._ids import MAX_ID_CHARS
from ._utf8 import utf8

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Event

    from .processors._records import RecordEvent, RecordSpan

_log = logging.getLogger("spangraph")

PROMOTED: Final = frozenset(
    {sc.KIND, sc.WORKFLOW_ID, sc.EXECUTION_ID, sc.BRANCH_ID, sc.PROJECT_ID, sc.STATE}
)
"""Attributes stored as node properties of their own, not inside ``attributes``."""

GEN_AI_KINDS: Final = {
    "invoke_workflow": sc.KIND_WORKFLOW,
    "invoke_agent": sc.KIND_AGENT,
    # Strands Agents' multi-agent systems at work (a Swarm, a Graph of agents): agents
    # of agents, listed as runs at the root of their trace as an agent is (a Swarm in a
    # Graph's node is no run of its own)
    "invoke_swarm": sc.KIND_AGENT,
    "invoke_graph": sc.KIND_AGENT,
    # (``create_agent``, an agent being made, e.g. when AutoGen builds one: no run of its
    # own, nor an agent at work in one; a plain span)
    "execute_tool": sc.KIND_TOOL,
    "execute_event_loop_cycle": sc.KIND_STEP,  # Strands Agents: one model turn and its tools
    # Mastra's own names: the model's work for an agent (its turns, each a `chat`), one
    # turn, a workflow's step (a streamed chunk, `model_chunk`: a plain span)
    "model_generation": sc.KIND_STEP,
    "agent_step": sc.KIND_STEP,
    "workflow_step": sc.KIND_STEP,
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


_AI_CALLS: Final = (
    ("generateText", "doGenerate"),
    ("streamText", "doStream"),
    ("generateObject", "doGenerate"),
    ("streamObject", "doStream"),
    ("embed", "doEmbed"),
    ("embedMany", "doEmbed"),
)
VERCEL_AI_KINDS: Final = {
    **{f"ai.{call}.{provider}": sc.KIND_LLM for call, provider in _AI_CALLS},
    **{f"ai.{call}": sc.KIND_STEP for call, _ in _AI_CALLS},
    "ai.toolCall": sc.KIND_TOOL,
}
"""Kind of a span by the Vercel AI SDK's ``ai.operationId``: the call to the provider's
model is the model call (``llm``), the SDK's call around it (which may make several, with
tool calls between) a ``step``."""


LANGFUSE_KINDS: Final = {
    "generation": sc.KIND_LLM,
    "embedding": sc.KIND_LLM,
    "agent": sc.KIND_AGENT,
    "tool": sc.KIND_TOOL,
    "chain": sc.KIND_STEP,
    "retriever": sc.KIND_STEP,
    "evaluator": sc.KIND_STEP,
    "guardrail": sc.KIND_STEP,
    "span": sc.KIND_STEP,
}
"""Kind of a span by Langfuse's ``langfuse.observation.type`` (``event``: none)."""


def _any_case(table: Mapping[str, str]) -> dict[str, str]:
    return {**{k.lower(): v for k, v in table.items()}, **{k.upper(): v for k, v in table.items()}}


_FOREIGN_KINDS: Final = (
    (sc.GEN_AI_OPERATION_NAME, GEN_AI_KINDS),
    (sc.OPENINFERENCE_SPAN_KIND, _any_case(OPENINFERENCE_KINDS)),
    (sc.TRACELOOP_SPAN_KIND, _any_case(TRACELOOP_KINDS)),
    (sc.LLM_REQUEST_TYPE, _any_case(LLM_REQUEST_KINDS)),
    (sc.AI_OPERATION_ID, VERCEL_AI_KINDS),
    (sc.LANGFUSE_OBSERVATION_TYPE, LANGFUSE_KINDS),
)
"""(attribute key, value -> kind) in the order :func:`kind_of` consults them."""

LIVE_ONLY_EVENTS: Final = frozenset({sc.TOKEN, "gen_ai.content.completion.chunk"})
"""Events streamed live but never written to the graph: spangraph's ``token`` and what
OpenLLMetry's instrumentations record of each streamed chunk (an event without
attributes: a thousand on the span of a long answer)."""

_STATUS_NAMES: Final = {StatusCode.UNSET: "UNSET", StatusCode.OK: "OK", StatusCode.ERROR: "ERROR"}


def hex_span_id(span_id: int) -> str:
    return format(span_id, "016x")


def hex_trace_id(trace_id: int) -> str:
    return format(trace_id, "032x")


def _iso_time_datetime(time_ns: int) -> str:
    return (
        datetime.fromtimestamp(time_ns / 1e9, tz=UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MAX_SECONDS: Final = 253_402_300_800  # 10000-01-01T00:00:00Z
_iso_second: tuple[int, str] = (-1, "")
"""The last whole second :func:`iso_time` formatted, and its text up to the seconds."""


def iso_time(time_ns: int) -> str:
    """ISO-8601 UTC with microseconds, e.g. ``2026-11-21T23:16:48.006123Z``.

    Exactly the text of ``datetime.fromtimestamp(time_ns / 1e9, tz=UTC).isoformat(
    timespec="microseconds")`` with ``Z`` for ``+00:00``, without building the datetime:
    the microseconds are rounded as CPython rounds them (half to even, on the same
    float), and the text up to the seconds is kept for the next call in the same second.
    """
    global _iso_second
    t = time_ns / 1e9
    if not 0.0 <= t < _MAX_SECONDS:
        return _iso_time_datetime(time_ns)
    seconds = int(t)
    micros = round((t - seconds) * 1e6)  # t - seconds is exact: modf's fraction
    if micros == 1_000_000:
        micros = 0
        seconds += 1
    last = _iso_second
    if last[0] != seconds:
        if seconds >= _MAX_SECONDS:
            return _iso_time_datetime(time_ns)
        days, rest = divmod(seconds, 86_400)
        hours, rest = divmod(rest, 3_600)
        minutes, secs = divmod(rest, 60)
        text = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
        last = _iso_second = (seconds, f"{text}T{hours:02d}:{minutes:02d}:{secs:02d}.")
    return f"{last[1]}{micros:06d}Z"


_encoder: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
)
"""The encoder ``json.dumps`` builds on every call with these arguments, built once."""

_NON_FINITE: Final = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}
"""What JSON cannot hold, as the strings of protobuf's JSON mapping (OTLP/JSON's too)."""


def _finite(value: Any) -> Any:
    """``value`` with each float NaN, Infinity and -Infinity in it (in dicts, lists and
    tuples too) as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``: strict JSON
    parsers (a browser's ``JSON.parse``) reject the bare words Python writes for them."""
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# CPython's C encoder, what _encoder runs (private to json.encoder: not in its stubs)
if json.encoder.c_make_encoder is not None:  # type: ignore[attr-defined]
    # Built once too (JSONEncoder.encode builds it on every call), without the check for
    # a value that contains itself (which needs state per call): such a value, which no
    # span attribute can be, raises RecursionError rather than ValueError.
    _c_encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, str, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def _py_encode(value: Any) -> str:
        try:
            return "".join(_c_encoder(value, 0))
        except ValueError:  # NaN or an infinity somewhere in it (allow_nan is off)
            return "".join(_c_encoder(_finite(value), 0))

else:  # pragma: no cover - Python without the C accelerator

    def _py_encode(value: Any) -> str:
        try:
            return _encoder.encode(value)
        except ValueError:
            return _encoder.encode(_finite(value))


try:
    from ._speedups import json_text as _json_text
except ImportError:  # the optional C extension was not built
    _encode = _py_encode
else:

    def _encode(value: Any) -> str:
        """The same JSON text as ``_py_encode``: written in one C call for plain values
        (spangraph._speedups.json_text), by the json module for anything else."""
        text = _json_text(value)
        return _py_encode(value) if text is None else text


def read_json(text: str) -> Any:
    """JSON text that spangraph wrote. A bare ``NaN``, ``Infinity`` or ``-Infinity`` in
    it (which data written before :func:`to_json` wrote strict JSON may hold, and which
    Python's parser accepts) is read as the string :func:`to_json` writes now, so what
    is read back can always be sent on as strict JSON."""
    return json.loads(text, parse_constant=_NON_FINITE.__getitem__)


def to_json(value: Any) -> str:
    """Compact, strict JSON; tuples become lists, NaN and the infinities the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, and anything else its ``str``. A
    string in it longer than ``MAX_VALUE_CHARS`` (spans made with the plain OpenTelemetry
    API, which does not cut them) is cut, with a marker, as spangraph's own API cuts
    attribute values: JSON no longer than that limit cannot hold one, so the usual
    case costs one length check."""
    text = _encode(value)
    if len(text) > MAX_VALUE_CHARS:
        bounded = _bounded(value)
        if bounded is not value:
            text = _encode(bounded)
        if len(text) > MAX_JSON_CHARS and isinstance(bounded, dict):
            # many cut strings (a list of 2 000 long prompts: 16 MB, which made Redis
            # drop every subscriber): the longest lists and maps as their JSON text, cut
            text = _encode(_fewer_long_values(bounded, len(text)))
    return text


MAX_JSON_CHARS: Final = 32 * MAX_VALUE_CHARS
"""Attributes (of a span, of an event) whose JSON is longer than this many characters
(262 144) have their longest list or map values (not spangraph's own) stored as their
JSON, cut to ``MAX_VALUE_CHARS`` with a marker, as strings, until they are not."""


def _fewer_long_values(attributes: dict[str, Any], length: int) -> dict[str, Any]:
    """``attributes`` (``length`` characters of JSON) with its longest list and map
    values, longest first, as their cut JSON text until its JSON is at most
    ``MAX_JSON_CHARS`` long (or none is left: many long strings stay as they are). The
    values of ``spangraph.*`` keys (a decision's options) stay lists."""
    sizes = []
    for key, value in attributes.items():
        if isinstance(value, dict | list | tuple) and not str(key).startswith("spangraph."):
            size = len(_encode(value))
            if size > MAX_VALUE_CHARS:
                sizes.append((size, key))
    out = dict(attributes)
    for size, key in sorted(sizes, key=lambda pair: pair[0], reverse=True):
        if length <= MAX_JSON_CHARS:
            break
        cut = cut_json(out[key]) or truncate(_encode(out[key]))
        out[key] = cut
        length -= size - len(_encode(cut))
    return out


def _bounded(value: Any) -> Any:
    """``value`` with each string in it (and the text of each value JSON would write as
    its ``str``) cut to ``MAX_VALUE_CHARS``; ``value`` itself when nothing needed it. A
    value spangraph's API already cut is not longer than that, so it is not cut again."""
    t = type(value)
    if t is str:
        return truncate_text(value) if len(value) > MAX_VALUE_CHARS else value
    if value is None or t is int or t is float or t is bool:
        return value
    if isinstance(value, dict):
        out = {k: _bounded(v) for k, v in value.items()}
        return out if any(out[k] is not v for k, v in value.items()) else value
    if isinstance(value, list | tuple):
        items = [_bounded(v) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, str | int | float):  # subclasses: JSON writes them as such
        return value
    text = str(value)  # what the encoder writes for anything else
    return truncate(text) if len(text) > MAX_VALUE_CHARS else value


_MAX_TIME_NS: Final = 2**63 - 1


def _time_ns(value: Any) -> Any:
    """A time in ns as every store takes it: a whole number within 0 .. 2**63-1 (the OTel
    SDK takes any int, and a float; Neo4j's driver cannot send an int past 64 bits, and
    refused the whole batch). ``None`` (a span not ended) stays ``None``."""
    if type(value) is int:
        if not 0 <= value <= _MAX_TIME_NS:
            return _MAX_TIME_NS if value > 0 else 0
        return value
    if isinstance(value, float):  # (NaN: 0)
        return _MAX_TIME_NS if value >= _MAX_TIME_NS else int(value) if value > 0 else 0
    if isinstance(value, int) and not isinstance(value, bool):  # numpy.int64, an IntEnum
        return _time_ns(int(value))
    return value


_SPAN_MESSAGE_TYPES: Final = frozenset({sc.SPAN_STARTED, sc.SPAN_ENDED})


def event_type(name: Any) -> Any:
    """The live message type of a span event named ``name``: its name (cut as stored),
    except that an event another instrumentation named ``span.started`` or ``span.ended``
    (spangraph's API refuses those names) goes out as ``event.span.started`` /
    ``event.span.ended``, never taken for its span's own start or end."""
    text = bounded_text(name)
    return f"event.{text}" if text in _SPAN_MESSAGE_TYPES else text


def bounded_text(text: Any) -> Any:
    """A span or event name or a status message, cut to ``MAX_VALUE_CHARS`` with a
    marker; a value that is not text (the OTel API does not check: bytes, a number) as
    its text, which the stores take (bytes made them reject the whole batch)."""
    if type(text) is not str:
        if text is None:
            return None
        # a str subclass (a StrEnum's member, ``class Op(str, Enum)``) as its string, as
        # OTLP exporters send it and the JSON of attributes holds it
        text = str.__str__(text) if isinstance(text, str) else safe_str(text)
    if len(text) > MAX_VALUE_CHARS:
        return truncate(text)
    return text


def kind_of(attributes: Mapping[str, Any]) -> str:
    """The spangraph kind of a span: its ``spangraph.kind``; else the first of
    ``gen_ai.operation.name``, ``openinference.span.kind``, ``traceloop.span.kind``,
    ``llm.request.type``, ``ai.operationId`` and ``langfuse.observation.type`` whose value
    names a kind (but for a Logfire log record, ``logfire.span_type`` ``log``: a moment,
    no call); else the kind
    Haystack's own attributes say (:data:`_HAYSTACK_KINDS`); else ``span`` (no label).

    Runs on the worker for every span: a handful of dict look-ups, no string work."""
    kind = attributes.get(sc.KIND)
    if kind is not None and (kind in sc.KIND_LABELS or kind == sc.KIND_SPAN):
        return str(kind)  # (``span`` too: a plain span, whatever else it says)
    if type(attributes) is dict and attributes.keys().isdisjoint(_KIND_KEYS):
        return sc.KIND_SPAN  # (most spans of other code: one look-up of each key, in C)
    get = attributes.get
    for key, table in _FOREIGN_KINDS:
        value = get(key)
        if value is not None and type(value) is str:
            found = table.get(value)
            if found is not None:
                if get(LOGFIRE_SPAN_TYPE) == "log":
                    # a Logfire log record (a moment, no length): the one its LLM
                    # integrations write when a stream ends repeats its request span's
                    # gen_ai.* keys (see processors/_streams.py): no second model call
                    return sc.KIND_SPAN
                return found
    for key, found in _HAYSTACK_KINDS:
        if key in attributes:
            return found
    component = get(HAYSTACK_COMPONENT_TYPE)
    if component is not None and type(component) is str:
        return sc.KIND_LLM if component.endswith("Generator") else sc.KIND_STEP
    return sc.KIND_SPAN


LOGFIRE_SPAN_TYPE: Final = "logfire.span_type"
"""What a Logfire record is: ``span``, or ``log`` (a span of no length: a log line)."""

_NAMED_KINDS: Final = {"haystack.agent.step.llm": sc.KIND_LLM}
"""Kinds of spans whose attributes say none (Haystack's agent's model call carries only
its messages, and those only with content tracing on), by their name."""

HAYSTACK_COMPONENT_TYPE: Final = "haystack.component.type"
_HAYSTACK_KINDS: Final = (
    ("haystack.agent.max_steps", sc.KIND_AGENT),  # haystack.agent.run
    ("haystack.agent.step", sc.KIND_STEP),  # one turn: its model call and tool calls
    ("haystack.tool.name", sc.KIND_TOOL),  # haystack.agent.step.tool
    (_HAYSTACK_PIPELINE := "haystack.pipeline.max_runs_per_component", sc.KIND_STEP),
)
"""Kinds of Haystack's own spans (its OpenTelemetry tracer, ``opentelemetry-haystack``),
by an attribute each kind of span has (their names say it too, but kinds are read from
attributes alone); a component (``haystack.component.type``) is a model call when it is
a generator (``OpenAIChatGenerator``), else a step."""

_KIND_KEYS: Final = frozenset(
    (
        *(key for key, _ in _FOREIGN_KINDS),
        *(key for key, _ in _HAYSTACK_KINDS),
        HAYSTACK_COMPONENT_TYPE,
    )
)
"""Every key :func:`kind_of` reads past ``spangraph.kind``: a span with none of them is a
plain span."""


_RUNS_AT_ROOT: Final = (
    (sc.OPENINFERENCE_SPAN_KIND, frozenset({"CHAIN", "chain"})),
    (sc.TRACELOOP_SPAN_KIND, frozenset({"task", "TASK"})),
    (sc.AI_OPERATION_ID, frozenset(f"ai.{call}" for call, _ in _AI_CALLS[:4])),
    # Langfuse's `@observe` function (a `span`) or chain: the trace Langfuse shows
    (sc.LANGFUSE_OBSERVATION_TYPE, frozenset({"span", "chain"})),
)
"""The step kinds of other instrumentations that head a run at the root of a trace:
chains of work (a chain, a task, a text or object generated with tool calls between),
not a lone retrieval, rerank, evaluation, prompt or embedding."""


def _heads_a_run(attributes: Mapping[str, Any]) -> bool:
    """Whether a span at the root of its trace that :func:`kind_of` makes a ``step`` from
    another instrumentation's attributes heads its run (see :data:`_RUNS_AT_ROOT`);
    spangraph's own step (its kind given) never does."""
    if attributes.get(sc.KIND) is not None:
        return False
    if _HAYSTACK_PIPELINE in attributes:  # a Haystack pipeline (haystack.pipeline.run)
        return True
    return any(attributes.get(key) in values for key, values in _RUNS_AT_ROOT)


def label_of(kind: str) -> str | None:
    return sc.KIND_LABELS.get(kind)


def state_of(span: ReadableSpan | RecordSpan, attributes: Mapping[str, Any]) -> str:
    state = attributes.get(sc.STATE)
    if state in (sc.STATE_COMPLETED, sc.STATE_FAILED, sc.STATE_CANCELLED):
        return str(state)
    if attributes.get("haystack.tool.error") is True:
        return sc.STATE_FAILED  # Haystack's tool call that raised (its status stays OK)
    if span.status.status_code is not StatusCode.ERROR or _interrupted(span):
        return sc.STATE_COMPLETED
    return sc.STATE_FAILED


_INTERRUPTS: Final = frozenset(
    {"GraphInterrupt", "NodeInterrupt", "langgraph.errors.GraphInterrupt",
     "langgraph.errors.NodeInterrupt"}
)  # fmt: skip
"""LangGraph's interrupts: how a graph stops to wait for an answer, no failure."""


def _interrupted(span: ReadableSpan | RecordSpan) -> bool:
    """Whether a span another instrumentation ended with an error status did so for a
    LangGraph interrupt (its ``exception`` event's type), as OpenInference's
    LangChain.js does: the node stopped to wait for an answer, it did not fail."""
    for event in reversed(span.events):  # the last exception recorded is what ended it
        if event.name == "exception":
            return (event.attributes or {}).get("exception.type") in _INTERRUPTS
    return False


class Resources:
    """``service`` and ``env`` of each Resource, computed once per Resource object."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: OrderedDict[int, tuple[Any, str | None, str | None]] = OrderedDict()

    def service_env(self, span: ReadableSpan | RecordSpan) -> tuple[str | None, str | None]:
        resource = span.resource
        hit = self._cache.get(id(resource))
        if hit is not None and hit[0] is resource:
            self._cache.move_to_end(id(resource))
            return hit[1], hit[2]
        attrs = resource.attributes if resource is not None else {}
        service = attrs.get(sc.SERVICE_NAME)
        env = attrs.get(sc.DEPLOYMENT_ENVIRONMENT) or attrs.get("deployment.environment")
        out = (
            bounded_text(str(service)) if service is not None else None,
            bounded_text(str(env)) if env is not None else None,
        )
        self._cache.pop(id(resource), None)  # another Resource that had this id
        if len(self._cache) >= 64:  # the least recently used goes (clearing all of them
            self._cache.popitem(last=False)  # made 65 Resources in turn miss every time)
        self._cache[id(resource)] = (resource, *out)
        return out


_long_id_warned = False


def _id_text(value: Any) -> str | None:
    """A run id as text; ``None`` (as if unset) for one longer than ``MAX_ID_CHARS``,
    which the SDK and the OTLP receiver refuse: set on a span through the plain OTel
    API, it was copied to every span of its run (and Neo4j refuses a key that long in
    its indexes, failing the whole batch)."""
    global _long_id_warned
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    if len(text) <= MAX_ID_CHARS:
        return text
    if not _long_id_warned:
        _long_id_warned = True
        _log.warning(
            "spangraph: a span's run id has %d characters, over %d: left out (the span "
            "takes its parent's run, else its trace's); said once",
            len(text),
            MAX_ID_CHARS,
        )
    return None


_Entry = tuple[str | None, str | None, str | None, Any]
"""What :class:`Lineage` remembers of a span: (workflow id, execution id, branch id,
project id)."""


class Lineage:
    """Remembers the run ids of recent spans so that spans from other instrumentations
    (which carry no ``spangraph.*`` attributes) inherit them from their parent.

    Bounded: the oldest entries go first once ``max_entries`` is reached.

    A span without a workflow id whose parent has not been seen is stored under its
    trace id as its run. With ``adoptions``, such a span waits for its parent (and so do
    its own children while it waits): when a span resolves to a workflow id and spans
    were waiting on it, their entries (and those of spans waiting on them, and so on)
    take its ids, and :attr:`adopted` gets a row ``{span_id, trace_id, workflow_id,
    execution_id, branch_id}`` for each, so that the graph writer can correct the nodes
    it wrote with the trace id. Spans reach the graph writer out of order when an
    exporter sends them as they end, in batches: a model call under a long step goes out
    before the step. At most ``max_entries`` spans wait (the oldest stop waiting first);
    a span under a parent seen without a run that waits on nothing (a root without a
    run) does not wait, and the spans waiting on such a root stop waiting when it comes:
    nothing could give them a run.
    """

    __slots__ = ("_adoptions", "_ids", "_waiting", "_waiting_on", "adopted", "max_entries")

    def __init__(self, max_entries: int = 65_536, *, adoptions: bool = False) -> None:
        # an OrderedDict: it drops its oldest entry in constant time, where a dict's
        # first key is found by walking past every entry deleted before it (once full,
        # each span cost a walk of thousands of entries)
        self._ids: OrderedDict[str, _Entry] = OrderedDict()
        self.max_entries: int = max_entries
        # waiting span id -> the parent it waits on (the oldest first), and the index the
        # other way round: parent span id -> the spans waiting on it
        self._adoptions = adoptions
        self._waiting_on: OrderedDict[str, str] = OrderedDict()
        self._waiting: dict[str, dict[str, None]] = {}
        self.adopted: list[dict[str, Any]] = []
        """Rows of spans whose ids were corrected since the caller last cleared it."""

    def resolve(
        self, span_id: str, parent_id: str | None, trace_id: str, attributes: Mapping[str, Any]
    ) -> tuple[str, str | None, str | None]:
        """(workflow_id, execution_id, branch_id) for a span, remembering the answer. Ids
        that are not text (another program's number, NaN) become their text: as numbers
        NaN failed the batch's write and large ones were clamped into one."""
        workflow_id = _id_text(attributes.get(sc.WORKFLOW_ID))
        execution_id = _id_text(attributes.get(sc.EXECUTION_ID))
        branch_id = _id_text(attributes.get(sc.BRANCH_ID))
        project = attributes.get(sc.PROJECT_ID)
        project = str(project) if project else None
        inherited = None
        if parent_id is not None and (not workflow_id or branch_id is None or not project):
            inherited = self._ids.get(parent_id)
            if inherited is not None:
                if not workflow_id:
                    workflow_id, execution_id = inherited[0], execution_id or inherited[1]
                # a branch is part of one run: a workflow started inside a branch of
                # another run is a run of its own, in no branch
                if branch_id is None and workflow_id == inherited[0]:
                    branch_id = inherited[2]
                if not project:
                    project = inherited[3]
        ids = self._ids
        if span_id not in ids:
            if len(ids) >= self.max_entries:
                ids.popitem(last=False)
            entry = ids[span_id] = (workflow_id, execution_id, branch_id, project)
            if self._adoptions:
                if not workflow_id:
                    # a parent not seen yet may come with a run; one seen without a run
                    # may get one only while it waits itself
                    if parent_id is not None and (
                        inherited is None or parent_id in self._waiting_on
                    ):
                        self._wait(span_id, parent_id)
                    elif span_id in self._waiting:  # a root without a run, come last:
                        self._release(span_id)  # nothing can give its spans one now
                elif span_id in self._waiting:
                    self._adopt(span_id, entry, trace_id)
        return (str(workflow_id) if workflow_id else trace_id), execution_id, branch_id

    def _wait(self, span_id: str, parent_id: str) -> None:
        waiting_on, waiting = self._waiting_on, self._waiting
        if len(waiting_on) >= self.max_entries:  # the oldest stops waiting
            oldest, its_parent = waiting_on.popitem(last=False)
            kids = waiting.get(its_parent)
            if kids is not None:
                kids.pop(oldest, None)
                if not kids:
                    del waiting[its_parent]
        waiting_on[span_id] = parent_id
        kids = waiting.get(parent_id)
        if kids is None:
            kids = waiting[parent_id] = {}
        kids[span_id] = None

    def _release(self, span_id: str) -> None:
        """The spans waiting on ``span_id`` (and on them, ...) stop waiting."""
        waiting_on, waiting = self._waiting_on, self._waiting
        stack = [waiting.pop(span_id)]
        while stack:
            for kid in stack.pop():
                waiting_on.pop(kid, None)
                grandkids = waiting.pop(kid, None)
                if grandkids:
                    stack.append(grandkids)

    def _adopt(self, span_id: str, entry: _Entry, trace_id: str) -> None:
        """Give the spans waiting on ``span_id`` (and on them, ...) the ids of ``entry``."""
        waiting_on, waiting, ids, adopted = self._waiting_on, self._waiting, self._ids, self.adopted
        stack = [(waiting.pop(span_id), entry)]
        while stack:
            kids, parent = stack.pop()
            for kid in kids:
                waiting_on.pop(kid, None)
                old = ids.get(kid)
                if old is None or old[0]:  # forgotten, or ids of its own since
                    continue
                new = ids[kid] = (
                    parent[0], old[1] or parent[1], old[2] or parent[2], old[3] or parent[3]
                )  # fmt: skip
                adopted.append(
                    {
                        "span_id": kid,
                        "trace_id": trace_id,
                        "workflow_id": str(new[0]),
                        "execution_id": new[1],
                        "branch_id": new[2],
                        # its project, when it had none of its own (it took the default)
                        "project_id": None if old[3] else new[3],
                    }
                )
                grandkids = waiting.pop(kid, None)
                if grandkids:
                    stack.append((grandkids, new))

    def project(self, span_id: str) -> Any:
        """The project :meth:`resolve` found for ``span_id``: its own, else its nearest
        ancestor's (``spangraph.project.id``); ``None`` when none had one."""
        entry = self._ids.get(span_id)
        return entry[3] if entry is not None else None

    def entry(self, span_id: str | None) -> _Entry | None:
        """What :meth:`resolve` remembered for ``span_id`` (the same object until it is
        forgotten), or ``None``."""
        return self._ids.get(span_id) if span_id is not None else None


COMMON_ATTRIBUTES: Final = (
    sc.WORKFLOW_ID,
    sc.EXECUTION_ID,
    sc.BRANCH_ID,
    sc.PROJECT_ID,
    sc.KIND,
    *(key for key, _ in _FOREIGN_KINDS),
    *(key for key, _ in _HAYSTACK_KINDS),
    HAYSTACK_COMPONENT_TYPE,
    LOGFIRE_SPAN_TYPE,
)
"""Every attribute :meth:`SpanMapper.common` reads (:func:`kind_of` included): what it
returns for a span changes only with these, the span's name and the lineage entries of
the span and its parent (``tests/test_perf_paths.py`` checks the list)."""


def _items(value: object) -> Sequence[Any]:
    """An attribute's items: a list's or tuple's, a single value as one, none for None."""
    if isinstance(value, list | tuple):
        return value
    return () if value is None else (value,)


class SpanMapper:
    """Maps spans to graph rows and live messages, with the state the mapping needs
    (run-id inheritance, per-Resource cache). One per worker thread."""

    __slots__ = ("default_project", "lineage", "resources")

    def __init__(self, default_project: str, *, adoptions: bool = False) -> None:
        self.default_project: str = default_project
        self.lineage: Lineage = Lineage(adoptions=adoptions)
        self.resources: Resources = Resources()

    def common(
        self, span: ReadableSpan | RecordSpan, attributes: Mapping[str, Any]
    ) -> dict[str, Any]:
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
        kind = kind_of(attributes)
        if kind == sc.KIND_SPAN:
            kind = _NAMED_KINDS.get(span.name, kind)
        if kind == sc.KIND_STEP and parent is None and _heads_a_run(attributes):
            # the top span of another instrumentation's trace that it marks as a chain of
            # work (a LangChain or LlamaIndex chain, OpenLLMetry's task, the Vercel AI
            # SDK's generateText): the run's workflow span, so that the run is listed
            kind = sc.KIND_WORKFLOW
        return {
            "span_id": span_id,
            "trace_id": trace_id,
            "parent_span_id": parent_id,
            "workflow_id": workflow_id,
            "execution_id": execution_id,
            "branch_id": branch_id,
            # its own project, else its parent's (a span of another instrumentation under
            # a spangraph span, received over OTLP by a service whose default differs)
            "project_id": str(
                attributes.get(sc.PROJECT_ID)
                or self.lineage.project(span_id)
                or self.default_project
            ),
            "kind": kind,
            "name": bounded_text(span.name),
            "service": service,
            "env": env,
        }

    def node_props(
        self, span: ReadableSpan | RecordSpan, *, ended: bool
    ) -> tuple[str | None, dict[str, Any]]:
        """(label, properties) of a span's node, at its start or its end.

        ``None`` values are left out, so a later write never erases what an earlier one set.
        """
        attributes = attributes_of(span)
        props = self.common(span, attributes)
        start = props["start_ns"] = _time_ns(span.start_time)
        rest = {k: v for k, v in attributes.items() if k not in PROMOTED}
        props["attributes"] = to_json(rest)
        if ended and span.end_time is not None:
            status = span.status
            props["state"] = state_of(span, attributes)
            props["status"] = _STATUS_NAMES.get(status.status_code, "UNSET")
            props["status_message"] = bounded_text(status.description)
            # an end before the start (a clock stepped back, an end_time given by hand)
            # is taken as the start, as the OTLP receiver does: no negative durations
            end = max(_time_ns(span.end_time), start or 0)
            props["end_ns"] = end
            props["duration_ms"] = round((end - (start or 0)) / 1e6, 3)
        label = label_of(props["kind"])
        return label, {k: v for k, v in props.items() if v is not None}

    @staticmethod
    def event_rows(span: ReadableSpan | RecordSpan, span_id: str) -> list[dict[str, Any]]:
        """``HAS_EVENT`` rows for the span's events (live-only events left out)."""
        events: Sequence[Event | RecordEvent] = span.events
        return [
            {
                "span_id": span_id,
                "seq": seq,
                "name": bounded_text(event.name),
                "time_ns": _time_ns(event.timestamp),
                "attributes": to_json(dict(event.attributes or {})),
            }
            for seq, event in enumerate(events)
            if event.name not in LIVE_ONLY_EVENTS
        ]

    @staticmethod
    def option_rows(
        span: ReadableSpan | RecordSpan, props: Mapping[str, Any], span_id: str
    ) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
        """For an ended decision: (rows of option nodes that were never explored, edges).

        Edges are ``option_of`` to every option node and ``chosen_option`` to the chosen
        one. An unexplored option gets a node of its own whose id is derived from the
        decision's id and the option's name, so replays write the same node.
        """
        attributes = span.attributes or {}
        # the SDK sets lists, OTLP tuples; a single value (plain OpenTelemetry code that
        # offers one option) is one option, as the queries read it
        options = _items(attributes.get(sc.DECISION_OPTIONS))
        explored = _items(attributes.get(sc.DECISION_OPTION_SPAN_IDS))
        raw_chosen = attributes.get(sc.DECISION_CHOSEN)
        chosen = None if raw_chosen is None else option_text(raw_chosen)
        # a chosen_option link (the SDK's, or an OTLP client's) names the chosen option's
        # span and becomes the CHOSEN_OPTION edge (see link_rows): a decision without
        # option span ids (plain OTel) then gets no unexplored node for its chosen option
        linked = next(
            (
                hex_span_id(link.context.span_id)
                for link in span.links
                if (link.attributes or {}).get(sc.LINK_TYPE) == sc.LINK_CHOSEN_OPTION
            ),
            None,
        )
        indexes: Sequence[int] = range(len(options))
        if len(options) > MAX_OPTIONS:  # from elsewhere (OTLP): the SDK refuses more
            _log.warning(
                "spangraph: decision %r offers %d options; the graph gets %d of them "
                "(the chosen one, those explored, then the first)",
                str(span.name)[:200],
                len(options),
                MAX_OPTIONS,
            )
            indexes = _kept_options(options, explored, chosen)
        nodes: list[dict[str, Any]] = []
        edges: list[tuple[str, dict[str, Any]]] = []
        for i in indexes:
            name = option_text(options[i])
            is_chosen = chosen is not None and name == chosen
            option_id = span_id_text(explored[i]) if i < len(explored) else None
            if option_id is None and is_chosen:
                option_id = linked
            if option_id is None:
                option_id = unexplored_option_id(span_id, name)
                node = {k: props[k] for k in _OPTION_INHERITS if props.get(k) is not None}
                node.update(
                    kind=sc.KIND_OPTION,
                    name=name,
                    state=sc.STATE_UNEXPLORED,
                    parent_span_id=span_id,
                    attributes="{}",
                )
                nodes.append({"span_id": option_id, "props": node})
            row = {"span_id": span_id, "target_span_id": option_id}
            edges.append(("option_of", row))
            if is_chosen and linked is None:
                edges.append((sc.LINK_CHOSEN_OPTION, row))
        return nodes, edges

    @staticmethod
    def pause_rows(
        span: ReadableSpan | RecordSpan, props: Mapping[str, Any], span_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """For an ended workflow span: (a row to link it to the run before it in its
        execution, when it recorded ``workflow.resumed`` without a ``resumed_from`` link,
        as a LangGraph thread resumed in another process than the one it paused in does;
        a row to link the run after it to it, when it recorded ``workflow.paused``)."""
        execution_id = props.get("execution_id")
        start = props.get("start_ns")
        if props.get("kind") != sc.KIND_WORKFLOW or not execution_id or start is None:
            return None, None
        names = {event.name for event in span.events}
        row = {
            "span_id": span_id,
            "execution_id": execution_id,
            "start_ns": start,
            "workflow_id": props.get("workflow_id"),
            "project_id": props.get("project_id"),
        }
        paused = row if sc.WORKFLOW_PAUSED in names else None
        if sc.WORKFLOW_RESUMED not in names:
            return None, paused
        for link in span.links:
            if (link.attributes or {}).get(sc.LINK_TYPE) == sc.LINK_RESUMED_FROM:
                return None, paused
        return row, paused

    @staticmethod
    def link_rows(
        span: ReadableSpan | RecordSpan, span_id: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """(link type, row) for each span link that carries a ``spangraph.link.type``."""
        out = []
        for link in span.links:
            link_type = (link.attributes or {}).get(sc.LINK_TYPE)
            # (a link to no span, INVALID_SPAN_CONTEXT, as the OTel API takes one: all of
            # them were joined to one node 0000000000000000, across runs)
            if link_type in sc.LINK_TYPES and link.context.span_id:
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


def _kept_options(options: Sequence[Any], explored: Sequence[Any], chosen: str | None) -> list[int]:
    """The indexes of the MAX_OPTIONS options of a decision offering more that the graph
    gets, in their order: the chosen one and those explored first, then the first."""
    wanted = [
        i
        for i, name in enumerate(options)
        if (chosen is not None and option_text(name) == chosen)
        or (i < len(explored) and explored[i])
    ][:MAX_OPTIONS]
    kept = set(wanted)
    for i in range(len(options)):
        if len(kept) >= MAX_OPTIONS:
            break
        kept.add(i)
    return sorted(kept)


MAX_OPTIONS: Final = 1024
"""The options of one decision that become graph nodes and edges: each is a node and
an edge written in the decision's end, and a million of them (one 11 MB OTLP request)
made a write the store could not finish within its timeout, retried for ever."""


def span_id_text(value: Any) -> str | None:
    """``value`` as a span id of the graph (16 lower-case hex digits, not all zero), or
    ``None`` when it is not one. Ids in attributes (``option_span_ids``, set by other
    programs over OTLP) become node keys only through it: FalkorDB's unique index
    crashed the server on a key holding a control character."""
    if not isinstance(value, str) or len(value) != 16:
        return None
    value = value.lower()
    return value if _SPAN_ID.fullmatch(value) and value != "0" * 16 else None


_SPAN_ID: Final = re.compile("[0-9a-f]{16}")


def option_text(value: Any) -> str:
    """An option's name as the graph and the queries give it: a string as it is, any
    other value (a number, a bool from another language's SDK) as its JSON text."""
    return value if isinstance(value, str) else to_json(value)


def unexplored_option_id(decision_span_id: str, option: str) -> str:
    """Node id of an option that was offered but not explored: 16 hex chars derived from
    the decision's span id and the option's name."""
    # (utf8(): an option name may hold a lone surrogate, e.g. from os.fsdecode)
    digest = hashlib.blake2b(utf8(f"{decision_span_id}\0{option}"), digest_size=8)
    return digest.hexdigest()


_heads: dict[str, str] = {}
"""``head`` of :func:`live_message` by message type (span starts, ends, event names)."""


def live_message_parts(common: Mapping[str, Any]) -> tuple[str, str]:
    """The JSON of the keys of a live message that come from ``common`` (the same for
    every message of a span): those before the message's own keys and those after them,
    without braces. Pass it to :func:`live_message` to encode it once a span."""
    before = {
        "workflow_id": common["workflow_id"],
        "project_id": common["project_id"],
        "trace_id": common["trace_id"],
        "span_id": common["span_id"],
        "parent_span_id": common["parent_span_id"],
        "kind": common["kind"],
        "name": common["name"],
    }
    return _encode(before)[1:-1], _encode({"service": common["service"], "env": common["env"]})[1:]


def _py_live_message(
    message_type: str,
    common: Mapping[str, Any],
    time_ns: int,
    attributes: Mapping[str, Any] | Sequence[Any] | None,
    parts: tuple[str, str] | None = None,
) -> tuple[str, str]:
    """The wire message as two JSON fragments around ``seq``, which Redis fills in.

    ``head + str(seq) + tail`` is one JSON object with the keys of DESIGN.md in order:
    ``type``, ``seq``, the keys of ``common`` up to ``name``, ``timestamp``,
    ``time_unix_nano``, ``attributes``, ``service``, ``env``. ``parts``:
    :func:`live_message_parts` of ``common``, if the caller keeps it.
    """
    # (the C version takes the usual times: whole numbers from 1970 to 9999)
    time_ns = _time_ns(time_ns)  # as stored: a time out of range or a float is no error
    head = _heads.get(message_type) if type(message_type) is str else None
    if head is None:
        head = '{"type":' + _encode(message_type) + ',"seq":'
        if type(message_type) is str:
            if len(_heads) >= 1024:  # names with ids in them: start again (the C path needs
                _heads.clear()  # the head here; a full table kept every later name off it)
            _heads[message_type] = head
    before, after = parts if parts is not None else live_message_parts(common)
    if type(attributes) is not dict:
        attributes = dict(attributes) if isinstance(attributes, Mapping) else {}
    # the JSON of the whole object, key by key: what one encode of it would write
    tail = (
        f',{before},"timestamp":"{iso_time(time_ns)}","time_unix_nano":'
        f'{time_ns if type(time_ns) is int else _encode(time_ns)},"attributes":'
        f"{to_json(attributes)},{after}"
    )
    return head, tail


live_message: Callable[..., tuple[str, str]]
try:
    from ._speedups import live_message as _c_live_message
    from ._speedups import live_setup as _live_setup
except ImportError:  # the optional C extension was not built
    live_message = _py_live_message
else:
    # the same text, in C for the usual case (see _speedups_live.c); the rest goes to
    # the Python version
    _live_setup(_py_live_message, to_json, _heads)
    live_message = _c_live_message


def attributes_of(span: Any) -> dict[str, Any]:
    """A plain-dict copy of the span's attributes.

    ``span.attributes`` is a read-only proxy of the SDK's ``BoundedAttributes``, whose
    every read goes through Python-level ``Mapping`` methods (``dict()`` of it costs about
    1 µs for five attributes). The SDK's own dict behind it is copied in one C call, which
    is also atomic with respect to a user thread still setting attributes on a running
    span. Falls back to the public API if the SDK's internals ever change."""
    attributes = getattr(span, "_attributes", None)
    if type(attributes) is dict:  # a span rebuilt from its record: the dict itself
        return attributes.copy()
    inner = getattr(attributes, "_dict", None)
    if type(inner) is dict:
        return inner.copy()
    return dict(span.attributes or {})
