"""StreamedCalls (processors/_streams.py): which Logfire spans wait for their stream's
record, how records find them, and the bound on what waits. Pure logic; the graph it
writes is tested in test_conventions.py against the real server."""

from __future__ import annotations

import json
from typing import Any

from spangraph.processors._streams import MAX_WAITING, StreamedCalls

REQUEST = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.input.messages": "[]",
    "request_data": '{"model":"gpt-4o-mini"}',
    "logfire.span_type": "span",
}
PROPS = {"trace_id": "ab" * 16, "parent_span_id": "cd" * 8, "start_ns": 1_000, "end_ns": 2_000}


def record(tokens: int = 5, **extra: Any) -> dict[str, Any]:
    return {**REQUEST, "logfire.span_type": "log", "gen_ai.usage.output_tokens": tokens, **extra}


def test_a_record_answers_the_request_that_waits_for_it() -> None:
    calls = StreamedCalls()
    assert calls.ended(REQUEST, "r1", "LLM", PROPS) is None
    assert len(calls) == 1
    row = calls.ended(record(), "log1", None, {**PROPS, "end_ns": 9_000})
    assert row is not None and row["span_id"] == "r1"
    assert row["props"]["end_ns"] == 9_000 and row["props"]["duration_ms"] == 0.008
    # the request's whole end row, so that the node is whole whichever write lands
    assert row["props"]["trace_id"] == PROPS["trace_id"]
    assert row["props"]["start_ns"] == PROPS["start_ns"]
    assert json.loads(row["props"]["attributes"])["gen_ai.usage.output_tokens"] == 5
    assert "state" not in row["props"]  # the record did not fail
    assert len(calls) == 0
    assert calls.ended(record(), "log2", None, PROPS) is None  # nothing waits now


def test_what_never_waits() -> None:
    calls = StreamedCalls()
    plain = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}
    assert calls.ended(plain, "a", "LLM", PROPS) is None  # not Logfire's
    answered = {**REQUEST, "gen_ai.response.id": "chatcmpl-1"}
    assert calls.ended(answered, "b", "LLM", PROPS) is None  # answered at once
    assert calls.ended(REQUEST, "c", "LLM", {**PROPS, "status": "ERROR"}) is None  # failed
    assert calls.ended(REQUEST, "d", "Step", PROPS) is None  # no model call
    assert calls.ended({"logfire.span_type": "log"}, "e", None, PROPS) is None  # a log line
    # another library's model call made through Logfire's TracerProvider (which marks
    # every span it makes) that reports its answer under other keys: no request of Logfire's
    other = {k: v for k, v in REQUEST.items() if k != "request_data"}
    assert calls.ended(other, "f", "LLM", PROPS) is None
    assert len(calls) == 0


def test_other_parents_models_or_inputs_are_other_calls() -> None:
    calls = StreamedCalls()
    calls.ended(REQUEST, "r1", "LLM", PROPS)
    for other in (
        record(**{"gen_ai.request.model": "gpt-4o"}),
        record(**{"gen_ai.input.messages": '[{"role":"user"}]'}),
    ):
        assert calls.ended(other, "x", None, PROPS) is None
    assert calls.ended(record(), "x", None, {**PROPS, "parent_span_id": "ef" * 8}) is None
    assert calls.ended(record(), "x", None, PROPS)["span_id"] == "r1"  # type: ignore[index]


def test_other_instructions_or_parameters_are_other_calls() -> None:
    """Two calls of one model on one input under one parent, with other system
    instructions or parameters: each record finds its own request."""
    calls = StreamedCalls()
    strict = {**REQUEST, "gen_ai.system_instructions": "be strict"}
    warm = {**REQUEST, "gen_ai.system_instructions": "be kind", "gen_ai.request.temperature": 1.0}
    calls.ended(strict, "strict", "LLM", PROPS)
    calls.ended(warm, "warm", "LLM", PROPS)
    answer = calls.ended({**warm, **record()}, "l1", None, PROPS)
    assert answer is not None and answer["span_id"] == "warm"
    answer = calls.ended({**strict, **record()}, "l2", None, PROPS)
    assert answer is not None and answer["span_id"] == "strict"


def test_a_call_made_with_no_span_open_finds_its_record_in_another_trace() -> None:
    """With no span open, Logfire writes the record in a trace of its own: calls at the
    root are paired by their request alone."""
    calls = StreamedCalls()
    root = {"trace_id": "ab" * 16, "start_ns": 1_000, "end_ns": 2_000}
    calls.ended(REQUEST, "r1", "LLM", root)
    elsewhere = {"trace_id": "ef" * 16, "start_ns": 5_000, "end_ns": 5_000}
    answer = calls.ended(record(), "l1", None, elsewhere)
    assert answer is not None and answer["span_id"] == "r1"
    assert answer["props"]["trace_id"] == "ab" * 16  # the request's own trace


def test_the_same_call_twice_is_answered_oldest_first_and_a_replay_waits_once() -> None:
    calls = StreamedCalls()
    calls.ended(REQUEST, "r1", "LLM", PROPS)
    calls.ended(REQUEST, "r1", "LLM", PROPS)  # its end again (a replay)
    calls.ended(REQUEST, "r2", "LLM", PROPS)
    assert len(calls) == 2
    assert calls.ended(record(1), "l1", None, PROPS)["span_id"] == "r1"  # type: ignore[index]
    assert calls.ended(record(2), "l2", None, PROPS)["span_id"] == "r2"  # type: ignore[index]
    assert calls.ended(record(3), "l3", None, PROPS) is None


def test_a_failed_record_fails_its_call() -> None:
    calls = StreamedCalls()
    calls.ended(REQUEST, "r1", "LLM", PROPS)
    failed = {**PROPS, "status": "ERROR", "status_message": "APIError: boom"}
    row = calls.ended(record(**{"error.type": "APIError"}), "l1", None, failed)
    assert row is not None
    assert (row["props"]["state"], row["props"]["status"]) == ("failed", "ERROR")
    assert row["props"]["status_message"] == "APIError: boom"
    assert json.loads(row["props"]["attributes"])["error.type"] == "APIError"


def test_what_waits_is_bounded_the_oldest_going_first() -> None:
    calls = StreamedCalls()
    for i in range(MAX_WAITING + 10):
        calls.ended({**REQUEST, "gen_ai.input.messages": str(i % 3)}, f"r{i}", "LLM", PROPS)
    assert len(calls) == MAX_WAITING
    # the first ten went: the oldest of input "0" still waiting is r12
    row = calls.ended(record(**{"gen_ai.input.messages": "0"}), "l", None, PROPS)
    assert row is not None and row["span_id"] == "r12"
    assert len(calls) == MAX_WAITING - 1
