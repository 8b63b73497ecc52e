"""The faster paths of the mapping and of the live worker write exactly what the plain
ones did: each is checked against the plain code it replaced (kept here as reference),
on awkward and random inputs. See docs/performance.md for why they exist."""

from __future__ import annotations

import enum
import json
import math
import random
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from spangraph import mapping
from spangraph import semconv as sc
from spangraph.mapping import (
    COMMON_ATTRIBUTES,
    SpanMapper,
    iso_time,
    live_message,
    live_message_parts,
    to_json,
)
from spangraph.processors import live as live_module

try:
    from spangraph import _speedups
except ImportError:  # the optional C extension was not built
    _speedups = None  # type: ignore[assignment]
from spangraph.processors.live import _END, _EVENT, _START, LiveEventProcessor

# -- the plain code, as it was -------------------------------------------------------------


def iso_time_reference(time_ns: int) -> str:
    return (
        datetime.fromtimestamp(time_ns / 1e9, tz=UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def to_json_reference(value: Any) -> str:
    """json.dumps, strict: NaN and the infinities as the strings protobuf's JSON uses."""

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v

    return json.dumps(
        finite(value), separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
    )


def live_message_reference(
    message_type: str,
    common: Mapping[str, Any],
    time_ns: int,
    attributes: Mapping[str, Any] | Sequence[Any] | None,
) -> tuple[str, str]:
    if type(time_ns) is float:  # stored as a whole number of ns (test_mapping: the range)
        time_ns = int(time_ns)
    head = '{"type":' + to_json_reference(message_type) + ',"seq":'
    body = {
        "workflow_id": common["workflow_id"],
        "project_id": common["project_id"],
        "trace_id": common["trace_id"],
        "span_id": common["span_id"],
        "parent_span_id": common["parent_span_id"],
        "kind": common["kind"],
        "name": common["name"],
        "timestamp": iso_time_reference(time_ns),
        "time_unix_nano": time_ns,
        "attributes": dict(attributes) if isinstance(attributes, Mapping) else {},
        "service": common["service"],
        "env": common["env"],
    }
    return head, "," + to_json_reference(body)[1:]


# -- random values ----------------------------------------------------------------------------

_TEXT = "ab \"'\\/\n\t\x00\x1f\u2028é日🚀`{}[],:"


def _text(rnd: random.Random) -> str:
    return "".join(rnd.choice(_TEXT) for _ in range(rnd.randint(0, 10)))


def _value(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if r < 0.3:
        return _text(rnd)
    if r < 0.4:
        return rnd.randint(-(2**70), 2**70)
    if r < 0.5:
        return rnd.choice([0.1, -0.0, 1e300, float("nan"), float("inf"), 2.5, True, False, None])
    if r < 0.55:
        return object()  # default=str
    if depth < 2 and r < 0.8:
        return tuple(_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3)))
    if depth < 2:
        return {_text(rnd): _value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}
    return _text(rnd)


class _Repr:
    def __str__(self) -> str:
        return "<same text every time>"


def _stable(rnd: random.Random, depth: int = 0) -> Any:
    """Like _value, but the same text each time it is encoded (no object addresses)."""
    value = _value(rnd, depth)
    return _Repr() if type(value) is object else value


def test_to_json_is_json_dumps() -> None:
    rnd = random.Random(1)
    for _ in range(3000):
        value = _stable(rnd)
        assert to_json(value) == to_json_reference(value)


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(str):
    pass


_EVERY_CHAR = "".join(map(chr, range(0x80))) + "é日🚀\u2028\ufeff"


def _json_value(rnd: random.Random, depth: int = 0) -> Any:
    """Values of every kind the JSON text meets, and of the kinds it leaves to Python."""
    r = rnd.random()
    if r < 0.3:
        text = "".join(rnd.choice(_EVERY_CHAR) for _ in range(rnd.randint(0, 12)))
        return text + "\udc80" if rnd.random() < 0.05 else text
    if r < 0.4:
        return rnd.choice([0, -1, 2**63 - 1, -(2**63), 2**63, 10**40, -(10**40)])
    if r < 0.5:
        return rnd.choice([0.1, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 2.5, 1 / 3])
    if r < 0.55:
        return rnd.choice([True, False, None, float("nan"), float("-inf"), _Level.HIGH])
    if r < 0.58:
        return rnd.choice([_Name("sub"), _Repr(), b"bytes", 1.5j])
    if depth < 3 and r < 0.75:
        items = [_json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
        return items if rnd.random() < 0.5 else tuple(items)
    if depth < 3:
        keys = [_text(rnd) for _ in range(rnd.randint(0, 4))]
        if rnd.random() < 0.05:
            keys.append(rnd.choice([1, 2.5, True, None]))  # type: ignore[arg-type]
        return {k: _json_value(rnd, depth + 1) for k in keys}
    return _text(rnd)


@pytest.mark.skipif(_speedups is None, reason="spangraph._speedups was not built")
def test_c_json_text_is_the_python_encoding_or_declines() -> None:
    rnd = random.Random(6)
    written = declined = 0
    for _ in range(20_000):
        value = _json_value(rnd)
        text = _speedups.json_text(value)
        if text is None:
            declined += 1
        else:
            written += 1
            assert text == mapping._py_encode(value), value
        assert to_json(value) == to_json_reference(value)
    assert written > 10_000 and declined > 1_000  # both paths were taken
    for value in (float("nan"), [float("inf")], {"k": "\udc80"}, {1: 2}, _Name("x"), _Level.HIGH):
        assert _speedups.json_text(value) is None
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        _speedups.json_text(deep)


@pytest.mark.skipif(_speedups is None, reason="spangraph._speedups was not built")
def test_c_json_text_leaves_the_programs_strings_as_they_were() -> None:
    """No UTF-8 copy is left cached inside a non-ASCII str: attribute values are the
    program's own strings (a prompt, a document) and would grow by their UTF-8 size."""
    text = "文" * 100_000
    size = sys.getsizeof(text)
    assert _speedups.json_text({"prompt": text}) == mapping._py_encode({"prompt": text})
    assert sys.getsizeof(text) == size


def test_iso_time_is_the_datetime_text() -> None:
    rnd = random.Random(2)
    base = 1_700_000_000_000_000_000
    values = [0, 1, 499, 500, 501, 999_999_499, 999_999_500, 999_999_501]
    values += [253_402_300_798_999_999_000, 253_402_300_799_000_000_000]
    for _ in range(100_000):
        r = rnd.random()
        if r < 0.3:
            values.append(base + rnd.randint(0, 10**15))
        elif r < 0.6:  # ties at half a microsecond, which the float decides
            values.append(base + rnd.randint(0, 10**12) // 1000 * 1000 + 500)
        elif r < 0.8:  # around a second's boundary
            second = (base // 10**9 + rnd.randint(0, 10**6)) * 10**9
            values.append(second + rnd.choice([-501, -500, -499, -1, 0, 1, 499, 500, 501]))
        else:
            values.append(rnd.randint(0, 253_402_300_799 * 10**9))
    for value in values:
        assert iso_time(value) == iso_time_reference(value), value
    if _speedups is not None:  # the C text of live messages: the same, or None (Python's)
        for value in values:
            assert _speedups.iso_time(value) in (iso_time_reference(value), None), value
        assert _speedups.iso_time(253_402_300_799_999_999_999) is None
        assert _speedups.iso_time(-1) is None and _speedups.iso_time(1.5e18) is None
    odds = (-1, -(10**18), 253_402_300_799_999_999_999, 253_402_300_800 * 10**9, 10**30)
    for odd in (*odds, 1.5e18, float("nan")):
        try:
            expected: Any = iso_time_reference(odd)  # type: ignore[arg-type]
        except Exception as exc:
            expected = type(exc)
        try:
            got: Any = iso_time(odd)  # type: ignore[arg-type]
        except Exception as exc:
            got = type(exc)
        assert got == expected, odd


def _common(rnd: random.Random) -> dict[str, Any]:
    keys = ("span_id", "trace_id", "parent_span_id", "workflow_id", "execution_id")
    keys += ("branch_id", "project_id", "kind", "name", "service", "env")
    return {k: (None if rnd.random() < 0.2 else _text(rnd)) for k in keys}


def test_live_message_is_the_plain_encoding() -> None:
    rnd = random.Random(3)
    for _ in range(3000):
        common = _common(rnd)
        message_type = rnd.choice([sc.SPAN_STARTED, sc.SPAN_ENDED, _text(rnd)])
        time_ns = rnd.choice([0, 1_700_000_000_123_456_789, rnd.randint(0, 2**62)])
        r = rnd.random()
        attributes: Any
        if r < 0.6:
            attributes = {_text(rnd): _stable(rnd) for _ in range(rnd.randint(0, 5))}
        elif r < 0.7:
            attributes = None
        elif r < 0.8:
            attributes = ["not", "a", "mapping"]
        else:
            attributes = Resource.create({"k": _text(rnd)}).attributes  # a Mapping, no dict
        expected = live_message_reference(message_type, common, time_ns, attributes)
        assert live_message(message_type, common, time_ns, attributes) == expected
        parts = live_message_parts(common)
        assert live_message(message_type, common, time_ns, attributes, parts) == expected
        json.loads(expected[0] + "7" + expected[1])  # still one JSON object


@pytest.mark.skipif(_speedups is None, reason="spangraph._speedups was not built")
def test_c_live_message_is_the_python_one() -> None:
    assert live_message is _speedups.live_message  # what the processors call
    rnd = random.Random(5)
    for _ in range(3000):
        common = _common(rnd)
        parts = live_message_parts(common)
        message_type = rnd.choice([sc.SPAN_STARTED, sc.SPAN_ENDED, "tool.call", _text(rnd)])
        time_ns = rnd.choice(
            [0, 1_700_000_000_123_456_500, rnd.randint(0, 2**62), 2**64, -5, 10**30]
        )
        attributes = {_text(rnd): _stable(rnd) for _ in range(rnd.randint(0, 5))}
        if rnd.random() < 0.1:
            attributes["big"] = "b" * 10_000  # cut by to_json
        for args in (
            (message_type, common, time_ns, attributes, parts),
            (message_type, common, time_ns, attributes),
        ):
            try:
                expected: Any = mapping._py_live_message(*args)
            except Exception as exc:
                expected = type(exc)
            try:
                got: Any = live_message(*args)
            except Exception as exc:
                got = type(exc)
            assert got == expected, args[:3]


def test_live_message_takes_keywords_as_the_python_one() -> None:
    """The C function took positional arguments only (TypeError on ``parts=``)."""
    common = _common(random.Random(7))
    parts = live_message_parts(common)
    expected = mapping._py_live_message("span.started", common, 5, {"a": 1}, parts)
    assert live_message("span.started", common, 5, {"a": 1}, parts=parts) == expected
    assert (
        live_message(message_type="span.started", common=common, time_ns=5, attributes={"a": 1})
        == expected
    )


@pytest.mark.skipif(_speedups is None, reason="spangraph._speedups was not built")
def test_c_json_text_of_a_long_string_asks_for_what_it_writes() -> None:
    """It reserved six bytes for every byte of a string, rounded up to a power of two
    (a 40 MB value: 256 MiB at once), and under a memory limit failed where the Python
    encoder did not."""
    code = (
        "import resource\n"
        "from spangraph import _speedups\n"
        "value = {'doc': 'x' * 40_000_000}\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status')"
        " if l.startswith('VmSize:'))\n"
        "limit = size + 200 * 2**20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "print(len(_speedups.json_text(value)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(40_000_000 + 10)]


def test_live_message_of_odd_types_and_times() -> None:
    common = _common(random.Random(4))
    for message_type in ("x", 'q"uote', ("tuple",), 5, None):
        for time_ns in (0, 1_700_000_000_000_000_500, 1.7e18, True):
            args = (message_type, common, time_ns, {"a": 1})
            assert live_message(*args) == live_message_reference(*args)  # type: ignore[arg-type]


# -- attributes and common() ------------------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tp = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    yield tp
    tp.shutdown()


def test_node_props_copy_the_attributes_as_before(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    attrs = {"spangraph.kind": "step", "b": (1, 2), "a": "x", "spangraph.workflow.id": "w"}
    with tracer.start_as_current_span("s", attributes=attrs) as span:
        span.set_attribute("late", True)
    assert isinstance(span, ReadableSpan)
    _, props = SpanMapper("p").node_props(span, ended=True)
    rest = {k: v for k, v in dict(span.attributes or {}).items() if k not in mapping.PROMOTED}
    assert props["attributes"] == to_json_reference(rest)
    assert list(json.loads(props["attributes"])) == ["b", "a", "late"]

    class NoInternals:  # the SDK's internals missing: the public API
        def __init__(self, inner: ReadableSpan) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "_attributes":
                raise AttributeError(name)
            return getattr(self._inner, name)

    _, again = SpanMapper("p").node_props(NoInternals(span), ended=True)  # type: ignore[arg-type]
    assert again == props


class _Recording(dict):  # type: ignore[type-arg]
    """A dict that remembers every key read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self.read.add(key)
        return super().__contains__(key)


def test_common_reads_only_the_listed_attributes(provider: TracerProvider) -> None:
    """The live worker reuses a span's ``common`` while the attributes listed in
    COMMON_ATTRIBUTES are unchanged: common() (kind_of included) must read no other."""
    with provider.get_tracer("t").start_as_current_span("s") as span:
        pass
    everything = {key: "zzz-not-a-kind" for key in COMMON_ATTRIBUTES}
    for attributes in ({}, {"other": 1}, everything, {sc.KIND: "nope"}, {sc.KIND: "step"}):
        recording = _Recording(attributes)
        SpanMapper("p").common(span, recording)
        assert recording.read <= set(COMMON_ATTRIBUTES), recording.read - set(COMMON_ATTRIBUTES)
    assert len(set(COMMON_ATTRIBUTES)) == len(COMMON_ATTRIBUTES)


def test_kind_of_a_span_without_any_kind_key_is_span_at_once() -> None:
    """``kind_of`` answers ``span`` for a dict that has none of ``_KIND_KEYS`` without
    reading the keys one by one: the keys it reads past ``spangraph.kind`` must all be
    in that set, and the fast answer the same as the full one on random attributes."""
    recording = _Recording({"other": 1})  # (the slow path: not a plain dict)
    assert mapping.kind_of(recording) == sc.KIND_SPAN
    assert recording.read - {sc.KIND, mapping.LOGFIRE_SPAN_TYPE} <= mapping._KIND_KEYS
    assert recording.read >= mapping._KIND_KEYS

    rng = random.Random(7)
    values = ["zzz", "chat", "LLM", "tool", "task", "ai.generateText", "generation", "x"]
    values += [v for _, table in mapping._FOREIGN_KINDS for v in list(table)[:3]]
    keys = [*COMMON_ATTRIBUTES, "other", "gen_ai.system", "logfire.span_type"]
    for _ in range(3000):
        attributes = {
            rng.choice(keys): rng.choice([*values, "log", 1, None])
            for _ in range(rng.randrange(0, 4))
        }
        assert mapping.kind_of(attributes) == mapping.kind_of(_Recording(attributes)), attributes


# -- the live worker: a span's mapping kept from its start to its end ---------------------------


class _NoPublisher:
    def publish(self, messages: Any) -> None:  # pragma: no cover - the worker is stopped
        pass


def _processor(keep: bool) -> LiveEventProcessor:
    proc = LiveEventProcessor(_NoPublisher(), project="p")  # type: ignore[arg-type]
    proc.shutdown()  # _prepare is called directly below
    if not keep:  # the plain path: map every item anew

        def fresh(span: Any, span_id: int, attributes: dict[str, Any], keep: bool) -> Any:
            common = proc._mapper.common(span, attributes)
            return common, live_message_parts(common)

        proc._mapped = fresh  # type: ignore[method-assign]
    return proc


def _story(provider: TracerProvider) -> Iterator[tuple[Any, ...]]:
    """Items of a workflow, yielded as the processor gets them, whose spans change (name,
    kind, workflow id, project) between their start and their end, with live events."""
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", attributes={sc.WORKFLOW_ID: "wf"}) as root:
        yield (_START, root, root.start_time)
        for i in range(12):
            with tracer.start_as_current_span(f"s{i}", attributes={"i": i}) as span:
                yield (_START, span, span.start_time)
                yield (_EVENT, span, 10 + i, "tick", {"n": i})
                if i % 4 == 1:
                    span.update_name(f"renamed-{i}")
                if i % 4 == 2:
                    span.set_attribute(sc.KIND, "tool")
                if i % 4 == 3:
                    span.set_attribute(sc.PROJECT_ID, "other")
                    span.set_attribute(sc.WORKFLOW_ID, "moved")
                span.add_event("added", {"k": "v"})
                yield (_EVENT, span, 20 + i, "tock", None)
            yield (_END, span, span.end_time)
    yield (_END, root, root.end_time)


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 1000])
def test_kept_mappings_give_the_same_messages(provider: TracerProvider, batch: int) -> None:
    """Fed the same items in the same batches while the spans run, a processor that keeps
    mappings and one that maps every item anew publish the same messages."""
    kept, plain = _processor(True), _processor(False)
    outputs: tuple[list[Any], list[Any]] = ([], [])
    pending: list[tuple[Any, ...]] = []

    def drain() -> None:
        for proc, out in zip((kept, plain), outputs, strict=True):
            out += proc._prepare(list(pending))[0]
        pending.clear()

    for item in _story(provider):
        pending.append(item)
        if len(pending) >= batch:
            drain()
    drain()
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 2 * 13 + 3 * 12
    assert not kept._kept  # every span ended: nothing kept
    names = {json.loads(head + "1" + tail)["name"] for _, _, head, tail in outputs[0]}
    if batch == 1:  # the messages sent before a rename carry the old name
        assert {"s1", "renamed-1"} <= names


def test_kept_mappings_are_bounded(
    provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans whose end never comes (dropped) do not pile up: past the bound the kept
    mappings are forgotten, and spans then map anew, to the same messages."""
    monkeypatch.setattr(live_module, "_MAX_KEPT", 10)
    tracer = provider.get_tracer("t")
    spans = [tracer.start_span(f"open-{i}") for i in range(25)]
    for span in spans:
        span.end()
    outputs = []
    for keep in (True, False):
        proc = _processor(keep)
        out = []
        for span in spans:
            out += proc._prepare([(_START, span, span.start_time)])[0]
            if keep:
                assert len(proc._kept) <= 10
        for span in spans:
            out += proc._prepare([(_END, span, span.end_time)])[0]
        outputs.append(out)
    assert outputs[0] == outputs[1]


def test_kept_mappings_forget_the_least_recently_used(
    provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More spans open than the bound: the span whose mapping was used longest ago goes,
    the others keep theirs (the whole map was once cleared, and every event of every open
    span was mapped again)."""
    monkeypatch.setattr(live_module, "_MAX_KEPT", 3)
    tracer = provider.get_tracer("t")
    spans = [tracer.start_span(f"open-{i}") for i in range(4)]
    proc = _processor(True)
    ids = [span.context.span_id for span in spans]
    for span in spans[:3]:
        proc._prepare([(_START, span, span.start_time)])
    proc._prepare([(_EVENT, spans[0], 1, "tick", None)])  # span 1 is now the oldest used
    proc._prepare([(_START, spans[3], spans[3].start_time)])
    assert set(proc._kept) == {ids[0], ids[2], ids[3]}
    for span in spans:
        span.end()


def test_events_remembered_per_span_keep_the_last_ones(
    provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_module, "_SENT_PER_SPAN", 3)
    span = provider.get_tracer("t").start_span("long")
    proc = _processor(True)
    proc._prepare([(_START, span, span.start_time)])
    for t in range(1, 8):  # a span that does not say how many it keeps (a rebuilt one)
        proc._prepare([(_EVENT, span, t, "tick", None, live_module._SENT_PER_SPAN)])
    assert list(proc._sent_live[span.context.span_id]) == [("tick", 5), ("tick", 6), ("tick", 7)]
    for t in range(8, 1100):  # the SDK's span, which keeps 128: at least 1 024
        proc._prepare([(_EVENT, span, t, "tick", None)])
    assert len(proc._sent_live[span.context.span_id]) == 1024
    span.end()


def test_events_remembered_by_all_spans_together_are_bounded(
    provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans never ended, each with events sent live: past the bound the span open the
    longest forgets its events (before: up to 1 024 a span for 100 000 spans)."""
    monkeypatch.setattr(live_module, "_MAX_SENT_EVENTS", 10)
    spans = [provider.get_tracer("t").start_span(f"open-{i}") for i in range(5)]
    proc = _processor(True)
    for span in spans:
        proc._prepare([(_START, span, span.start_time)])
        for t in range(1, 5):
            proc._prepare([(_EVENT, span, t, "tick", None)])
    ids = [span.context.span_id for span in spans]
    assert list(proc._sent_live) == ids[-2:]  # 2 x 4 events: the others were forgotten
    assert proc._sent_count == 8
    spans[-1].end()
    proc._prepare([(_END, spans[-1], spans[-1].end_time)])
    assert proc._sent_count == 4 and list(proc._sent_live) == ids[-2:-1]
    for span in spans[:-1]:
        span.end()


def test_events_kept_follows_the_spans_own_limit() -> None:
    from opentelemetry.sdk.trace import SpanLimits

    def kept(limits: SpanLimits) -> int | None:
        span = TracerProvider(span_limits=limits).get_tracer("t").start_span("s")
        span.end()
        return live_module.events_kept(span)

    assert kept(SpanLimits(max_events=SpanLimits.UNSET)) is None  # it keeps them all
    assert kept(SpanLimits(max_events=5000)) == 5000
    assert kept(SpanLimits(max_events=10)) == 1024
    assert live_module.events_kept(object()) == live_module._SENT_PER_SPAN


def test_resources_cache_forgets_the_least_recently_used() -> None:
    """65 Resources in turn: each miss drops only the one used longest ago (the cache was
    once cleared whole past 64, and such a rotation missed on every span)."""
    from types import SimpleNamespace

    from opentelemetry.sdk.resources import Resource

    from spangraph.mapping import Resources

    resources = [Resource.create({"service.name": f"svc-{i}"}) for i in range(65)]
    cache = Resources()
    for resource in resources[:64]:
        cache.service_env(SimpleNamespace(resource=resource))  # type: ignore[arg-type]
    cache.service_env(SimpleNamespace(resource=resources[0]))  # type: ignore[arg-type]
    assert cache.service_env(SimpleNamespace(resource=resources[64])) == ("svc-64", None)  # type: ignore[arg-type]
    assert len(cache._cache) == 64
    assert id(resources[0]) in cache._cache and id(resources[1]) not in cache._cache


def test_has_any_is_the_public_property(provider: TracerProvider) -> None:
    from opentelemetry.trace import Link

    from spangraph.processors.graph import _has_any

    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("a") as a:
        pass
    with tracer.start_as_current_span("b", links=[Link(a.get_span_context())]) as b:
        b.add_event("e")

    class Plain:  # no SDK internals: the public properties
        def __init__(self, events: tuple[Any, ...], links: tuple[Any, ...]) -> None:
            self.events, self.links = events, links

    spans: list[Any] = [a, b, a._readable_span(), b._readable_span(), Plain((), (1,))]
    spans.append(Plain((1,), ()))
    for span in spans:
        for name in ("events", "links"):
            assert _has_any(span, name) == bool(getattr(span, name)), (span, name)
