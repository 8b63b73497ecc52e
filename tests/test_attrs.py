"""_attrs: attribute values of any type made safe for OpenTelemetry, never raising."""

from __future__ import annotations

import enum
import json
import re
from typing import Any

import pytest
import redis

import spangraph
from spangraph import queries
from spangraph._attrs import MAX_VALUE_CHARS, clean, clean_value, cut_json, truncate, truncate_text
from spangraph.processors.live import stream_key
from spangraph.testing import capture


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Named:
    def __str__(self) -> str:
        return "Named!"


@pytest.mark.parametrize("value", [True, False, 0, -5, 2**63 - 1, -(2**63), 1.5, "text", ""])
def test_primitives_pass_unchanged(value: Any) -> None:
    out = clean_value(value)
    assert out == value
    assert type(out) is type(value)


def test_none_stays_none() -> None:
    assert clean_value(None) is None


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_huge_ints_become_text(value: int) -> None:
    assert clean_value(value) == str(value)


def assert_cut_once(out: Any, text: str) -> None:
    """``out`` is ``text`` cut once: a start of it and a marker counting the characters
    that are missing, MAX_VALUE_CHARS characters in all."""
    match = re.fullmatch(r"(.*)…\[truncated (\d+) chars\]", out, re.DOTALL)
    assert match is not None, out[-60:]
    assert text.startswith(match[1]) and int(match[2]) == len(text) - len(match[1])
    assert len(out) == MAX_VALUE_CHARS


@pytest.mark.parametrize("extra", [1, 123, 10_000, 91_808, 1_000_000])
def test_long_strings_are_cut_to_the_limit_with_a_marker_counting_the_cut(extra: int) -> None:
    text = "a" * (MAX_VALUE_CHARS + extra)
    out = clean_value(text)
    assert_cut_once(out, text)
    assert clean_value(out) == out == truncate(out)  # cutting again leaves it alone
    assert clean_value("b" * MAX_VALUE_CHARS) == "b" * MAX_VALUE_CHARS


def test_truncate_limit() -> None:
    assert truncate("a" * 40, 30) == "a" * 9 + "…[truncated 31 chars]"
    assert truncate("abc", 3) == "abc"
    assert truncate("abcdef", 3) == "…[truncated 6 chars]"  # a limit shorter than the marker


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, 2, 3], (1, 2, 3)),
        (("a", "b"), ("a", "b")),
        ([1.5, 2.5], (1.5, 2.5)),
        ([True, False], (True, False)),
        ([], ()),
    ],
)
def test_homogeneous_sequences_become_tuples(value: Any, expected: tuple[Any, ...]) -> None:
    out = clean_value(value)
    assert out == expected
    assert isinstance(out, tuple)


class _Float64(float):
    """Stands in for numpy.float64; its __str__ and __float__ are not its value."""

    def __str__(self) -> str:
        return "float64!"

    def __float__(self) -> float:
        return 42.0


class _Level(enum.IntEnum):
    HIGH = 3


class _Count(int):
    def __int__(self) -> int:
        raise ValueError("no int here")


class _Op(str, enum.Enum):  # noqa: UP042 - the point: its str() is "_Op.SEARCH"
    SEARCH = "search"


def test_sequences_of_primitive_subclasses_hold_the_plain_values() -> None:
    """OpenTelemetry before 1.45 dropped a sequence holding a subclass (numpy.float64, an
    IntEnum): the attribute was lost."""
    out = clean_value([_Float64(0.1), 0.2])
    assert out == (0.1, 0.2) and [type(v) for v in out] == [float, float]
    assert [type(v) for v in clean_value([_Level.HIGH, 4])] == [int, int]
    assert clean_value([_Level.HIGH]) == (3,)
    assert clean_value([_Count(5), 6]) == (5, 6)  # the value, not what __int__ says
    strings = clean_value([_Op.SEARCH, "x"])
    assert strings == ("search", "x") and [type(v) for v in strings] == [str, str]
    assert clean_value([_Op.SEARCH, 1]) == '["search", 1]'  # mixed: JSON, as before


@pytest.mark.parametrize(
    "value",
    [[1, "a"], [1, None], [[1, 2], [3]], [True, 1], [1, 2.0]],
)
def test_mixed_or_nested_sequences_become_json(value: Any) -> None:
    out = clean_value(value)
    assert isinstance(out, str)
    assert json.loads(out) == value


def test_sequence_of_objects_becomes_text() -> None:
    out = clean_value([Named(), Named()])
    assert out == ("Named!", "Named!")
    mixed = clean_value([Named(), 1])
    assert mixed == '["Named!", 1]'


def test_dicts_become_json() -> None:
    out = clean_value({"a": 1, "b": [1, 2], "c": {"d": None}, "e": "é"})
    assert isinstance(out, str)
    assert json.loads(out) == {"a": 1, "b": [1, 2], "c": {"d": None}, "e": "é"}
    assert "é" in out  # not escaped


def test_dict_with_objects_uses_their_str() -> None:
    assert json.loads(clean_value({"x": Named()})) == {"x": "Named!"}


def test_dict_with_unserializable_keys_falls_back_to_str() -> None:
    out = clean_value({(1, 2): "tuple key"})
    assert out == str({(1, 2): "tuple key"})


def test_objects_become_str() -> None:
    assert clean_value(Named()) == "Named!"
    assert clean_value(b"bytes") == "b'bytes'"
    assert clean_value(object()).startswith("<object object at")


def test_huge_json_is_truncated() -> None:
    out = clean_value({"k": "v" * 20000})
    assert isinstance(out, str)
    assert len(out) < 20000
    assert "…[truncated " in out


@pytest.mark.parametrize(
    "value",
    [
        Unprintable(),
        [Unprintable(), 1],
        [Unprintable(), Unprintable()],
        {"a": Unprintable()},
        {(1, 2): Unprintable()},
        [{(1, 2): 3}, 1],
    ],
)
def test_unprintable_values_never_raise(value: Any) -> None:
    out = clean_value(value)
    assert isinstance(out, str | tuple)


def test_unprintable_object_has_a_marker() -> None:
    assert clean_value(Unprintable()) == "<unprintable Unprintable>"


def test_self_referencing_values_never_raise() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert clean_value(loop) == "[[...]]"
    d: dict[str, Any] = {}
    d["self"] = d
    assert clean_value(d) == "{'self': {...}}"


def test_clean_drops_none_and_stringifies_keys() -> None:
    out = clean({"a": 1, "b": None, 3: "x", "l": [1, 2]})
    assert out == {"a": 1, "3": "x", "l": (1, 2)}


def test_clean_empty() -> None:
    assert clean(None) == {}
    assert clean({}) == {}


def test_event_with_odd_values_end_to_end() -> None:
    with capture() as cap:
        with spangraph.step("s"):
            ok = spangraph.event(
                "x",
                obj=object(),
                d={"a": 1},
                big="x" * 20000,
                bad=Unprintable(),
                mixed=[Unprintable(), 1],
                huge=2**100,
                nothing=None,
            )
        assert ok is True
    (ev,) = cap.events("x")
    attrs = ev.attributes
    assert set(attrs) == {"obj", "d", "big", "bad", "mixed", "huge"}
    assert all(isinstance(v, str) for v in attrs.values())
    assert json.loads(attrs["d"]) == {"a": 1}
    assert_cut_once(attrs["big"], "x" * 20000)
    assert attrs["huge"] == str(2**100)
    assert attrs["bad"] == "<unprintable Unprintable>"


def test_step_attributes_and_handle_set_are_cleaned() -> None:
    attributes = {"cfg": {"k": [1, 2]}, "o": Named()}
    with capture() as cap, spangraph.step("s", attributes=attributes) as s:
        s.set(rows=[1, 2, 3], bad=Unprintable(), skip=None)
    attrs = dict(cap.find("s")[0].attributes or {})
    assert json.loads(attrs["cfg"]) == {"k": [1, 2]}
    assert attrs["o"] == "Named!"
    assert attrs["rows"] == (1, 2, 3)
    assert attrs["bad"] == "<unprintable Unprintable>"
    assert "skip" not in attrs


def test_long_values_are_stored_and_streamed_cut_once(
    sg: spangraph.Spangraph, redis_client: redis.Redis
) -> None:
    """The SDK cuts a long value; the processors, which cut values of plain OpenTelemetry
    spans, leave it as it is: the graph and the live stream hold one cut, whose marker
    counts what was cut."""
    big, message, error = "x" * 100_000, "m" * 50_000, "e" * 30_000
    with spangraph.workflow("wf-long") as run:
        with spangraph.step("s") as s:
            s.set(big=big)
            spangraph.event("ev", big=big)
        with spangraph.llm("model") as call:
            call.complete(message)
        with pytest.raises(ValueError), spangraph.step("fails"):
            raise ValueError(error)
    assert spangraph.flush(10)
    assert sg.store is not None
    wid = run.workflow_id
    spans = {r["name"]: r for r in queries.workflow_spans(sg.store, wid)}
    assert_cut_once(spans["s"]["attributes"]["big"], big)
    events = {e["name"]: e for e in queries.workflow_events(sg.store, wid)}
    assert_cut_once(events["ev"]["attributes"]["big"], big)
    assert_cut_once(events["llm.complete"]["attributes"]["message"], message)
    assert_cut_once(events["step.failed"]["attributes"]["error.message"], error)

    live = [json.loads(f[b"data"]) for _, f in redis_client.xrange(stream_key(wid))]
    ended = next(m for m in live if m["type"] == "span.ended" and m["name"] == "s")
    assert_cut_once(ended["attributes"]["big"], big)
    by_type = {m["type"]: m for m in live}
    assert_cut_once(by_type["ev"]["attributes"]["big"], big)
    assert_cut_once(by_type["llm.complete"]["attributes"]["message"], message)
    assert_cut_once(by_type["step.failed"]["attributes"]["error.message"], error)


class SurrogateText:
    def __str__(self) -> str:
        return "bad\udcffend"


@pytest.mark.parametrize(
    "value",
    ["bad\udcffend", ["bad\udcffend"], {"k": "bad\udcffend"}, SurrogateText()],
)
def test_lone_surrogates_become_replacement_characters(value: Any) -> None:
    """A str with a lone surrogate (``os.fsdecode`` of bytes that are not UTF-8) is no
    value an OTLP exporter can encode: it dropped the attribute ("Failed to encode key"),
    so Jaeger never had it. spangraph's API hands every exporter U+FFFD instead."""
    cleaned = clean_value(value)
    text = cleaned[0] if isinstance(cleaned, tuple) else cleaned
    assert "\ufffd" in text and "\udcff" not in text
    text.encode()  # strict UTF-8: no error


def test_encodable_text_is_left_as_it_is() -> None:
    for text in ("plain", "héllo wörld ✓", "\U0001f600"):
        assert clean_value(text) is text


def test_names_and_keys_from_the_api_reach_an_otlp_exporter() -> None:
    """A lone surrogate in a step's or an event's name failed the OTLP encoding of the
    whole export (every span of the batch lost on the way to Jaeger); in a key, the
    exporter dropped the attribute; in a decision's choice, the choice."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    bad = "file-\udcff"
    with capture() as cap, spangraph.workflow("wf"), spangraph.step(bad) as step:
        step.set(**{bad: 1})
        spangraph.event(bad, **{bad: bad})
        with spangraph.decision("route", options=[bad, "b"]) as d:
            d.choose(bad)
    encode_spans(cap.spans).SerializeToString()  # strict UTF-8 all through: no error
    mended = "file-\ufffd"
    [step_span] = cap.find(mended)
    assert mended in (step_span.attributes or {})
    [event] = [e for e in step_span.events if e.name == mended]
    assert dict(event.attributes or {}) == {mended: mended}
    [route] = cap.find("route")
    attributes = route.attributes or {}
    assert attributes["spangraph.decision.chosen"] == mended
    assert attributes["spangraph.decision.options"] == (mended, "b")


# -- JSON cut inside ---------------------------------------------------------------------

TOOL_CALL = {"type": "tool_call", "id": "toolu_01A09q", "name": "get_weather",
             "arguments": {"city": "Paris", "unit": "celsius"}}  # fmt: skip


def _messages(text_chars: int) -> list[dict[str, Any]]:
    """A model's answer as OpenTelemetry's GenAI conventions write it in one attribute
    (``gen_ai.output.messages``): a long text part, then a tool call."""
    return [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "w" * text_chars}, TOOL_CALL],
            "finish_reason": "tool_call",
        }
    ]


def test_long_json_text_is_cut_inside_and_stays_json() -> None:
    """Cut at its end, the JSON of a model's messages lost the tool call after a long text
    (and was no longer JSON): cut inside, the long text is cut and the rest kept."""
    text = json.dumps(_messages(40_000))
    cut = truncate_text(text)
    assert len(cut) <= MAX_VALUE_CHARS
    [message] = json.loads(cut)
    assert message["parts"][1] == TOOL_CALL and message["finish_reason"] == "tool_call"
    long_part = message["parts"][0]["content"]
    assert re.fullmatch(r"w+…\[truncated (\d+) chars\]", long_part)
    kept = len(long_part) - len(long_part.partition("…")[2]) - 1
    assert kept + int(re.findall(r"\d+", long_part.partition("…")[2])[0]) == 40_000
    assert len(cut) > MAX_VALUE_CHARS * 0.9  # as much of the text as fits
    assert clean_value(text) == cut  # spangraph's own API cuts text so
    # a map or list value (JSON text) as well
    out = clean_value({"messages": _messages(40_000)})
    assert json.loads(out)["messages"][0]["parts"][1] == TOOL_CALL


@pytest.mark.parametrize(
    "text",
    [
        "[INFO] " + "z" * 10_000,  # looks like JSON, is not
        json.dumps([{"role": "user", "content": "y" * 2_000}] * 400),  # 400 strings: no fit
        json.dumps(_messages(2 * 2**20)),  # over 1 MiB: not read
        json.dumps("s" * 10_000),  # JSON, but of a string
    ],
    ids=["not-json", "too-many-strings", "over-1-mib", "json-string"],
)
def test_other_long_text_is_cut_at_its_end(text: str) -> None:
    assert truncate_text(text) == truncate(text)


def test_cut_json_of_what_fits_and_what_cannot() -> None:
    assert cut_json({"a": [1, 2]}) == '{"a":[1,2]}'
    assert cut_json([object()] * 2000) is None  # 2 000 strings of at least 64 characters
    assert cut_json({"x": "é" * 9000}, limit=200) == json.dumps(
        {"x": "é" * 162 + "…[truncated 8838 chars]"}, ensure_ascii=False, separators=(",", ":")
    )
    circular: list[Any] = []
    circular.append(circular)
    assert cut_json(circular) is None


def test_another_instrumentations_long_messages_stay_json_in_the_graph_and_live(
    sg: spangraph.Spangraph, provider: Any, redis_client: redis.Redis
) -> None:
    """A span of another instrumentation (Anthropic's SDK, OpenLLMetry, OpenAI's v2 with
    content on) with the answer as JSON in ``gen_ai.output.messages``, and OpenLLMetry's
    event for each streamed chunk: the graph and the live stream keep the tool call, and
    the chunk events stay out of the graph."""
    text = json.dumps(_messages(40_000))
    with spangraph.workflow("wf-messages") as run:
        span = provider.get_tracer("other").start_span(
            "anthropic.messages.create",
            attributes={"gen_ai.operation.name": "chat", "gen_ai.output.messages": text},
        )
        for _ in range(5):
            span.add_event("gen_ai.content.completion.chunk")
        span.add_event("gen_ai.choice", {"index": 0})
        span.end()
    assert spangraph.flush(10)
    assert sg.store is not None
    spans = {r["name"]: r for r in queries.workflow_spans(sg.store, run.workflow_id)}
    stored = spans["anthropic.messages.create"]["attributes"]["gen_ai.output.messages"]
    assert len(stored) <= MAX_VALUE_CHARS and json.loads(stored)[0]["parts"][1] == TOOL_CALL
    events = queries.workflow_events(sg.store, run.workflow_id)
    assert [e["name"] for e in events if e["span_name"] != "wf-messages"] == ["gen_ai.choice"]
    live = [json.loads(f[b"data"]) for _, f in redis_client.xrange(stream_key(run.workflow_id))]
    ended = next(m for m in live if m["type"] == "span.ended" and m["kind"] == "llm")
    assert json.loads(ended["attributes"]["gen_ai.output.messages"]) == json.loads(stored)


def test_deeply_nested_json_is_cut_inside() -> None:
    """450 lists deep: the walk for the longest string recursed twice a level and gave
    up (RecursionError), and the value was cut at its end, no longer JSON."""
    value: Any = "x" * 10_000
    for _ in range(450):
        value = [value]
    cut = truncate_text(json.dumps(value))
    inner = json.loads(cut)
    for _ in range(450):
        [inner] = inner
    assert inner.startswith("x" * 100) and inner.endswith(" chars]")


def test_a_map_of_over_1_mib_is_cut_at_its_end() -> None:
    """Cutting inside reads the value again: past 1 MiB of JSON, it is cut at its end."""
    value = {"messages": _messages(2 * 2**20)}
    assert clean_value(value) == truncate(json.dumps(value, ensure_ascii=False))
    small = {"messages": _messages(40_000)}
    assert json.loads(clean_value(small))["messages"][0]["parts"][1] == TOOL_CALL
