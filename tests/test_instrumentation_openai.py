"""OpenAIInstrumentor against a local fake OpenAI API (no network) that replays recorded
responses: JSON answers, ``text/event-stream`` streams, an HTTP 500. Spans are checked in
memory, in the real graph and as live messages on a real Redis subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import wrapt
from openai import AsyncOpenAI, OpenAI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import StatusCode

import spangraph
from conftest import ForkedChild
from spangraph import semconv as sc
from spangraph.instrumentation.openai import OpenAIInstrumentor, wait_reaped
from spangraph.processors.live import project_channel
from spangraph.testing import SpanCapture, capture

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
ROOT = Path(__file__).resolve().parent.parent

CHAT_TOKENS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
CHAT_MESSAGE = "".join(CHAT_TOKENS)
RESPONSE_TOKENS = [
    "In", " a", " quiet", " forest", ",", " a", " unicorn", " danced", " under", " the",
    " moon", ".",
]  # fmt: skip
RESPONSE_MESSAGE = "".join(RESPONSE_TOKENS)
MESSAGES = [{"role": "user", "content": "Say hello"}]


# -- the fake OpenAI API ----------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)


class FakeOpenAI:
    """Serves ``/v1/chat/completions`` and ``/v1/responses`` from the recorded fixtures,
    the way the API does: JSON, or SSE in chunked transfer encoding, one event a chunk."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.fail_next: int | None = None
        self.stream_fixture: str | None = None
        self.edit_json: Callable[[dict[str, Any]], None] | None = None
        """Changes the JSON answers (a test's own variant of a fixture)."""
        self.edit_stream: Callable[[str], str] | None = None
        """Changes the streamed answers' text (events split on blank lines)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
                fake.requests.append((self.path, body))
                try:
                    fake.answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed a stream early

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.fail_next = None
        self.stream_fixture = None
        self.edit_json = None
        self.edit_stream = None

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return self.json(handler, status, "error_500.json")
        if handler.path == "/v1/chat/completions":
            if body.get("stream"):
                usage = (body.get("stream_options") or {}).get("include_usage")
                default = (
                    "chat_completion_stream_usage.txt" if usage else "chat_completion_stream.txt"
                )
                return self.sse(handler, self.stream_fixture or default)
            name = (
                "chat_completion_tool_calls.json" if body.get("tools") else "chat_completion.json"
            )
            return self.json(handler, 200, name)
        if handler.path == "/v1/responses":
            if body.get("stream"):
                return self.sse(handler, self.stream_fixture or "response_stream.txt")
            return self.json(handler, 200, "response.json")
        handler.send_error(404)

    def json(self, handler: BaseHTTPRequestHandler, status: int, fixture: str) -> None:
        data = (FIXTURES / fixture).read_bytes()
        if self.edit_json is not None and status == 200:
            body = json.loads(data)
            self.edit_json(body)
            data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.send_header("x-request-id", "req_5f1c0e8b2a4d4c7e9b3a6d1f0e2c4b8a")
        handler.send_header("openai-processing-ms", "412")
        handler.end_headers()
        handler.wfile.write(data)

    def sse(self, handler: BaseHTTPRequestHandler, fixture: str) -> None:
        text = (FIXTURES / fixture).read_text()
        if self.edit_stream is not None:
            text = self.edit_stream(text)
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream; charset=utf-8")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("cache-control", "no-cache")
        handler.send_header("x-request-id", "req_9a2b7c4d1e8f4a6b8c0d2e4f6a8b0c2d")
        handler.end_headers()
        for event in text.split("\n\n"):
            if event.strip():
                data = (event + "\n\n").encode()
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def fake(fake_server: FakeOpenAI) -> FakeOpenAI:
    fake_server.reset()
    return fake_server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[OpenAI]:
    c = OpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
    yield c
    c.close()


@pytest.fixture
async def aclient(fake: FakeOpenAI) -> Any:
    c = AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
    yield c
    await c.close()


def chat_helpers(client: Any) -> Any:
    """Where chat's ``parse`` and ``stream`` are: ``client.chat.completions`` from SDK
    1.92 on, ``client.beta.chat.completions`` before."""
    if hasattr(client.chat.completions, "parse"):
        return client.chat.completions
    return client.beta.chat.completions


def beta_chat_classes() -> list[type]:
    """The beta chat resource classes of SDKs before 1.92 (none after)."""
    try:
        from openai.resources.beta.chat import completions
    except ImportError:
        return []
    return [completions.Completions, completions.AsyncCompletions]


@pytest.fixture
def instrumented() -> Iterator[OpenAIInstrumentor]:
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def cap(instrumented: OpenAIInstrumentor, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    """Spans in memory; fails the test if any span was ended twice."""
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"), capture() as c:
        yield c
    doubles = [r for r in caplog.records if "ended span" in r.getMessage()]
    assert not doubles, [r.getMessage() for r in doubles]


def llm_span(cap: SpanCapture) -> ReadableSpan:
    """The one LLM span, ended exactly once."""
    spans = cap.find(kind=sc.KIND_LLM)
    assert len(spans) == 1, [(s.name, s.attributes) for s in cap.spans]
    ids = [s.context.span_id for s in cap.spans]
    assert ids.count(spans[0].context.span_id) == 1
    return spans[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def assert_chat(span: ReadableSpan, *, usage: bool = True, state: str = "completed") -> None:
    a = attrs(span)
    assert span.name == "chat gpt-4o-mini"
    assert a[sc.KIND] == "llm"
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert a[sc.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[sc.GEN_AI_RESPONSE_ID].startswith("chatcmpl-")
    assert a[sc.STATE] == state
    if usage:
        assert (a[sc.GEN_AI_USAGE_INPUT_TOKENS], a[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (19, 9)
    else:
        assert sc.GEN_AI_USAGE_INPUT_TOKENS not in a
        assert sc.GEN_AI_USAGE_OUTPUT_TOKENS not in a
    assert span.status.status_code is not StatusCode.ERROR
    assert span.end_time is not None


def assert_response(span: ReadableSpan) -> None:
    a = attrs(span)
    assert span.name == "chat gpt-4o-mini"
    assert a[sc.KIND] == "llm"
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert a[sc.GEN_AI_RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert a[sc.GEN_AI_RESPONSE_ID] == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert (a[sc.GEN_AI_USAGE_INPUT_TOKENS], a[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (36, 12)
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[sc.STATE] == "completed"


# -- non-streaming ------------------------------------------------------------------------


def test_chat_completion(cap: SpanCapture, client: OpenAI) -> None:
    result = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0.2, max_tokens=64
    )
    assert isinstance(result, openai.types.chat.ChatCompletion)
    assert result.choices[0].message.content == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    a = attrs(span)
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert a[sc.GEN_AI_REQUEST_MAX_TOKENS] == 64
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": CHAT_MESSAGE, "finish_reason": "stop"}
    assert "Say hello" not in json.dumps(a)  # the prompt is never recorded


def test_request_settings_and_server_of_the_conventions(cap: SpanCapture, client: OpenAI) -> None:
    """GenAI's request attributes beyond temperature and the like, and the server
    called (an OpenAI-compatible server is told apart by it)."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        n=2,
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=-0.25,
        stop=["END", "STOP"],
    )
    a = attrs(llm_span(cap))
    assert a[sc.GEN_AI_REQUEST_CHOICE_COUNT] == 2
    assert a[sc.GEN_AI_REQUEST_SEED] == 7
    assert a[sc.GEN_AI_REQUEST_FREQUENCY_PENALTY] == 0.5
    assert a[sc.GEN_AI_REQUEST_PRESENCE_PENALTY] == -0.25
    assert a[sc.GEN_AI_REQUEST_STOP_SEQUENCES] == ("END", "STOP")
    assert a[sc.SERVER_ADDRESS] == client.base_url.host == "127.0.0.1"
    assert a[sc.SERVER_PORT] == client.base_url.port
    cap.clear()
    client.chat.completions.create(model="m", messages=MESSAGES, n=1, stop="END", seed=True)
    a = attrs(llm_span(cap))
    assert sc.GEN_AI_REQUEST_CHOICE_COUNT not in a  # 1: the default, left out
    assert a[sc.GEN_AI_REQUEST_STOP_SEQUENCES] == ("END",)
    assert sc.GEN_AI_REQUEST_SEED not in a  # a bool is no seed


def test_usage_details_cached_and_reasoning_tokens(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    """The prompt's tokens served from the cache and the answer's spent reasoning, from
    both APIs' usage, streamed or not; left out when the usage does not tell them."""

    def chat_usage(body: dict[str, Any]) -> None:
        body["usage"]["prompt_tokens_details"]["cached_tokens"] = 12
        body["usage"]["completion_tokens_details"]["reasoning_tokens"] = 5

    def responses_usage(body: dict[str, Any]) -> None:
        body["usage"]["input_tokens_details"]["cached_tokens"] = 30
        body["usage"]["output_tokens_details"]["reasoning_tokens"] = 8

    def details(a: dict[str, Any]) -> tuple[Any, Any]:
        return (
            a.get(sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
            a.get(sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        )

    fake.edit_json = chat_usage
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert details(attrs(llm_span(cap))) == (12, 5)
    cap.clear()
    fake.edit_json = responses_usage
    client.responses.create(model="gpt-4o-mini", input="story")
    assert details(attrs(llm_span(cap))) == (30, 8)
    cap.clear()
    fake.edit_stream = lambda text: text.replace('"cached_tokens":0', '"cached_tokens":3')
    for _ in client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ):
        pass
    assert details(attrs(llm_span(cap))) == (3, 0)  # reported as 0: recorded as 0
    cap.clear()
    fake.edit_stream = lambda text: text.replace('"reasoning_tokens":0', '"reasoning_tokens":4')
    for _ in client.responses.create(model="gpt-4o-mini", input="story", stream=True):
        pass
    assert details(attrs(llm_span(cap))) == (0, 4)
    cap.clear()
    fake.edit_stream = None
    fake.stream_fixture = "chat_completion_stream_null_choices.txt"  # usage without details
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass
    assert details(attrs(llm_span(cap))) == (None, None)


def test_openai_attributes_of_the_conventions(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    """The API called, the service tier asked for and given, the backend's fingerprint,
    whether the answer is streamed and the kind of output asked for."""
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        service_tier="default",
        response_format={"type": "json_object"},
    )
    a = attrs(llm_span(cap))
    assert a[sc.OPENAI_API_TYPE] == "chat_completions"
    assert a[sc.OPENAI_REQUEST_SERVICE_TIER] == "default"
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert a[sc.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] == "fp_0ba0d124f1"
    assert a[sc.GEN_AI_OUTPUT_TYPE] == "json"
    assert sc.GEN_AI_REQUEST_STREAM not in a  # unset: not streamed
    cap.clear()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        service_tier="auto",
        response_format={"type": "text"},
    )
    for _ in stream:
        pass
    a = attrs(llm_span(cap))
    assert a[sc.GEN_AI_REQUEST_STREAM] is True
    assert sc.OPENAI_REQUEST_SERVICE_TIER not in a  # auto: the default, left out
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == "default"  # from the chunks
    assert a[sc.OPENAI_RESPONSE_SYSTEM_FINGERPRINT] == "fp_0ba0d124f1"
    assert a[sc.GEN_AI_OUTPUT_TYPE] == "text"
    cap.clear()
    # (the lowest SDK supported takes no service_tier on the Responses API)
    takes_tier = "service_tier" in inspect.signature(client.responses.create).parameters
    client.responses.create(
        model="gpt-4o-mini",
        input="story",
        **({"service_tier": "flex"} if takes_tier else {}),
        text={"format": {"type": "json_schema", "name": "story", "schema": {"type": "object"}}},
    )
    a = attrs(llm_span(cap))
    assert a[sc.OPENAI_API_TYPE] == "responses"
    assert a.get(sc.OPENAI_REQUEST_SERVICE_TIER) == ("flex" if takes_tier else None)
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert sc.OPENAI_RESPONSE_SYSTEM_FINGERPRINT not in a  # the Responses API has none
    assert a[sc.GEN_AI_OUTPUT_TYPE] == "json"
    cap.clear()
    for _ in client.responses.create(model="gpt-4o-mini", input="story", stream=True):
        pass
    a = attrs(llm_span(cap))
    assert (a[sc.GEN_AI_REQUEST_STREAM], a[sc.OPENAI_API_TYPE]) == (True, "responses")
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert sc.GEN_AI_OUTPUT_TYPE not in a  # no output format asked for


def test_structured_output_is_json(cap: SpanCapture, client: OpenAI, fake: FakeOpenAI) -> None:
    from pydantic import BaseModel

    class Greeting(BaseModel):
        greeting: str

    def as_json(body: dict[str, Any]) -> None:
        if "choices" in body:
            body["choices"][0]["message"]["content"] = '{"greeting": "hi"}'
        else:
            body["output"][0]["content"][0]["text"] = '{"greeting": "hi"}'

    fake.edit_json = as_json
    chat = chat_helpers(client).parse(
        model="gpt-4o-mini", messages=MESSAGES, response_format=Greeting
    )
    assert chat.choices[0].message.parsed == Greeting(greeting="hi")
    assert attrs(llm_span(cap))[sc.GEN_AI_OUTPUT_TYPE] == "json"
    cap.clear()
    answer = client.responses.parse(model="gpt-4o-mini", input="hi", text_format=Greeting)
    assert answer.output_parsed == Greeting(greeting="hi")
    assert attrs(llm_span(cap))[sc.GEN_AI_OUTPUT_TYPE] == "json"


def test_chat_completion_tool_calls_records_names_not_arguments(
    cap: SpanCapture, client: OpenAI
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools)
    assert result.choices[0].finish_reason == "tool_calls"
    span = llm_span(cap)
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("tool_calls",)
    assert (
        attrs(span)[sc.GEN_AI_USAGE_INPUT_TOKENS],
        attrs(span)[sc.GEN_AI_USAGE_OUTPUT_TOKENS],
    ) == (81, 20)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete["tool_calls"] == ("get_weather",)
    assert complete["message"] == ""
    assert "Paris" not in json.dumps([dict(e.attributes or {}) for e in span.events])


def test_responses_create(cap: SpanCapture, client: OpenAI) -> None:
    result = client.responses.create(model="gpt-4o-mini", input="Tell me a story")
    assert result.output_text == RESPONSE_MESSAGE
    span = llm_span(cap)
    assert_response(span)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": RESPONSE_MESSAGE, "finish_reason": "stop"}


def test_request_runs_inside_the_span(
    cap: SpanCapture, client: OpenAI, instrumented: OpenAIInstrumentor
) -> None:
    with spangraph.workflow("outer") as run:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    span = llm_span(cap)
    [outer] = cap.find("outer")
    assert span.parent is not None and span.parent.span_id == outer.context.span_id
    assert attrs(span)[sc.WORKFLOW_ID] == run.workflow_id


# -- streaming ----------------------------------------------------------------------------


def test_chat_stream_exhausted_with_usage(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert isinstance(stream, openai.Stream)
    assert cap.find(kind=sc.KIND_LLM) == []  # still open
    texts = [c.choices[0].delta.content for c in stream if c.choices]
    assert "".join(t or "" for t in texts) == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert sc.LLM_INCOMPLETE not in attrs(span)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {
        "message": CHAT_MESSAGE,
        "finish_reason": "stop",
        "streamed_tokens": len(CHAT_TOKENS),
    }
    assert events(span, sc.TOKEN) == []  # live only
    stream.close()  # after the end: nothing more happens
    assert len(cap.spans) == 1


def test_chat_stream_without_usage_requests_none(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == CHAT_MESSAGE
    [(_, body)] = fake.requests
    assert "stream_options" not in body  # the request is left as the user made it
    assert_chat(llm_span(cap), usage=False)


def test_chat_stream_closed_early(cap: SpanCapture, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    it = iter(stream)
    for _ in range(3):  # role chunk, "Hello", "!"
        next(it)
    assert cap.find(kind=sc.KIND_LLM) == []
    stream.close()
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "completed"  # as a generator its consumer closes early
    assert a[sc.LLM_INCOMPLETE] is True  # ... but the answer was not read to its end
    assert sc.GEN_AI_RESPONSE_FINISH_REASONS not in a
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": "Hello!", "streamed_tokens": 2}
    stream.close()
    assert len(cap.spans) == 1


def test_chat_stream_break_in_with_block(cap: SpanCapture, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with stream as s:
        assert s is stream
        for chunk in s:
            if chunk.choices[0].delta.content == " How":
                break
        assert cap.find(kind=sc.KIND_LLM) == []
    [complete] = events(llm_span(cap), sc.LLM_COMPLETE)
    assert complete["message"] == "Hello! How"


def test_chat_stream_break_then_garbage_collected(cap: SpanCapture, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    for chunk in stream:
        if chunk.choices[0].delta.content == "!":
            break
    last_chunk_ns = time.time_ns()
    time.sleep(0.05)
    assert cap.find(kind=sc.KIND_LLM) == []
    del stream, chunk
    gc.collect()
    assert wait_reaped()
    span = llm_span(cap)
    assert attrs(span)[sc.STATE] == "completed"
    assert attrs(span)[sc.LLM_INCOMPLETE] is True
    assert span.end_time is not None and span.end_time <= last_chunk_ns  # at its last chunk
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete["message"] == "Hello!"


def test_chat_stream_never_read_then_garbage_collected(cap: SpanCapture, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    del stream
    gc.collect()
    assert wait_reaped()
    span = llm_span(cap)
    assert attrs(span)[sc.STATE] == "completed"
    assert events(span, sc.LLM_COMPLETE) == []  # nothing was received


def _without(*markers: str) -> Callable[[str], str]:
    """A stream's text without the events that hold any of ``markers``."""

    def edit(text: str) -> str:
        kept = [e for e in text.split("\n\n") if not any(m in e for m in markers)]
        return "\n\n".join(kept)

    return edit


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_stream_cut_before_its_end_fails_the_span(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI, api: str
) -> None:
    """A stream that ends without the model's finish reason (no final chunk, no
    ``[DONE]``; no ``response.completed``) reads to its end in the SDK, without an
    error: its answer was cut, and the span says so."""
    stream: Any
    if api == "chat":
        fake.edit_stream = _without('"finish_reason":"stop"', "[DONE]")
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        message = CHAT_MESSAGE
    else:
        fake.edit_stream = _without("response.completed")
        stream = client.responses.create(model="gpt-4o-mini", input="story", stream=True)
        message = RESPONSE_MESSAGE
    for _ in stream:
        pass
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "failed"
    assert a[sc.ERROR_TYPE] == "incomplete_stream"
    assert a[sc.LLM_INCOMPLETE] is True
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("error",)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "the stream ended before the model finished its answer"
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete["message"] == message
    assert complete["finish_reason"] == "error"
    assert events(span, "exception") == []  # nothing was raised


async def test_async_stream_consumer_cancelled_ends_cancelled(
    cap: SpanCapture, aclient: AsyncOpenAI
) -> None:
    """A consumer cancelled while it handles a chunk, in ``async with stream:``."""
    got: list[str] = []

    async def consume() -> None:
        stream = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
                    await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "cancelled"
    assert a[sc.LLM_INCOMPLETE] is True
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("cancelled",)
    assert span.status.status_code is not StatusCode.ERROR
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": "Hello", "finish_reason": "cancelled", "streamed_tokens": 1}


def test_stream_left_by_a_keyboard_interrupt_ends_cancelled(
    cap: SpanCapture, client: OpenAI
) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(KeyboardInterrupt), stream:
        for _ in stream:
            raise KeyboardInterrupt
    a = attrs(llm_span(cap))
    assert (a[sc.STATE], a[sc.LLM_INCOMPLETE]) == ("cancelled", True)


def test_time_to_first_chunk_of_streams(cap: SpanCapture, client: OpenAI) -> None:
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass
    span = llm_span(cap)
    first = attrs(span)[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK]
    assert span.end_time is not None and span.start_time is not None
    assert isinstance(first, float) and 0 < first < (span.end_time - span.start_time) / 1e9
    cap.clear()
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK not in attrs(llm_span(cap))  # not streamed


def test_chat_stream_error_event_fails_span(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    fake.stream_fixture = "chat_completion_stream_error.txt"
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="The server had an error") as excinfo:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert type(excinfo.value) is openai.APIError
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "failed"
    assert a[sc.ERROR_TYPE] == "openai.APIError"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == [sc.LLM_COMPLETE, "exception"]
    assert events(span, sc.LLM_COMPLETE)[0]["message"] == "Hello! How"


def test_responses_stream(cap: SpanCapture, client: OpenAI) -> None:
    stream = client.responses.create(model="gpt-4o-mini", input="Tell me a story", stream=True)
    deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
    assert deltas == RESPONSE_TOKENS
    span = llm_span(cap)
    assert_response(span)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {
        "message": RESPONSE_MESSAGE,
        "finish_reason": "stop",
        "streamed_tokens": len(RESPONSE_TOKENS),
    }


def test_responses_stream_failed_event_fails_span(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    """``response.failed`` is an event, not an exception: the stream ends normally and
    the span fails with the response's error code."""
    fake.stream_fixture = "response_stream_failed.txt"
    stream = client.responses.create(model="gpt-4o-mini", input="story", stream=True)
    assert [e.type for e in stream][-1] == "response.failed"
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "failed"
    assert a[sc.ERROR_TYPE] == "server_error"
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("error",)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "The model failed to generate a response."


def test_several_choices_stream_apart(cap: SpanCapture) -> None:
    """With ``n=2`` the deltas of both choices interleave: each choice keeps its own text,
    tokens of the second carry ``choice``."""
    from openai.types.chat import ChatCompletionChunk

    from spangraph.instrumentation._openai_call import CHAT, Call

    def chunk(index: int, content: str | None, finish: str | None = None) -> Any:
        delta = {} if content is None else {"content": content}
        return ChatCompletionChunk.model_validate(
            {
                "id": "chatcmpl-n2",
                "object": "chat.completion.chunk",
                "created": 1732230512,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
            }
        )

    call = Call(None, CHAT, {"model": "gpt-4o-mini", "n": 2})
    for c in [chunk(0, "Hi"), chunk(1, "Hey"), chunk(0, " there"), chunk(1, " you")]:
        call.on_chunk(c)
    call.on_chunk(chunk(0, None, "stop"))
    call.on_chunk(chunk(1, None, "length"))
    call.finish(None, exhausted=True)
    span = llm_span(cap)
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop", "length")
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete["message"] == "Hi there"
    assert complete["choices"] == ("Hi there", "Hey you")
    assert complete["streamed_tokens"] == 4


def test_chat_stream_helper(cap: SpanCapture, client: OpenAI) -> None:
    """``client.chat.completions.stream()`` calls ``create``: its span is recorded too."""
    with chat_helpers(client).stream(
        model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """What ends a span must not be a collection that happens to run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def test_stream_helpers_left_early_end_the_span(cap: SpanCapture, client: OpenAI) -> None:
    """The SDK's ``.stream()`` helpers close the HTTP response, never the stream, when
    left or closed: the span ended only when the collector found the stream."""
    with no_cyclic_gc():
        with chat_helpers(client).stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
            for event in stream:
                if event.type == "content.delta" and event.delta:
                    break
            assert cap.find(kind=sc.KIND_LLM) == []
        assert attrs(llm_span(cap))[sc.STATE] == "completed"
        [complete] = events(llm_span(cap), sc.LLM_COMPLETE)
        assert complete["message"] == "Hello"
        cap.clear()
        manager = client.responses.stream(model="gpt-4o-mini", input="hi")
        stream = manager.__enter__()
        next(iter(stream))
        stream.close()  # closed without leaving the block
        assert attrs(llm_span(cap))[sc.STATE] == "completed"
        manager.__exit__(None, None, None)
        assert len(cap.find(kind=sc.KIND_LLM)) == 1


async def test_async_stream_helper_left_early_ends_the_span(
    cap: SpanCapture, aclient: AsyncOpenAI
) -> None:
    with no_cyclic_gc():
        async with chat_helpers(aclient).stream(model="gpt-4o-mini", messages=MESSAGES) as stream:
            async for event in stream:
                if event.type == "content.delta":
                    break
            assert cap.find(kind=sc.KIND_LLM) == []
        assert attrs(llm_span(cap))[sc.STATE] == "completed"


def test_chat_stream_with_null_choices_and_deltas(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAI-compatible servers send chunks with ``choices: null``, a null ``delta`` or
    ``index``; the SDK does not validate them. They used to raise inside the recording,
    log a traceback per chunk and lose that chunk's usage and text."""
    fake.stream_fixture = "chat_completion_stream_null_choices.txt"
    with caplog.at_level(logging.ERROR, logger="spangraph"):
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        texts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta]
    assert "".join(t or "" for t in texts) == "Hello!"
    assert not [r for r in caplog.records if r.name == "spangraph"]
    span = llm_span(cap)
    a = attrs(span)
    assert (a[sc.GEN_AI_USAGE_INPUT_TOKENS], a[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == (5, 2)
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": "Hello!", "finish_reason": "stop", "streamed_tokens": 2}


def test_odd_request_values_are_left_out_or_cut(cap: SpanCapture, client: OpenAI) -> None:
    """A ``max_tokens`` beyond int64 used to be recorded as is (an OTLP exporter fails the
    whole batch on it); a huge model name is cut like any attribute."""
    model = "m" * 20_000
    client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2**70)
    span = llm_span(cap)
    a = attrs(span)
    assert sc.GEN_AI_REQUEST_MAX_TOKENS not in a
    assert len(a[sc.GEN_AI_REQUEST_MODEL]) < 9_000
    assert span.name == f"chat {a[sc.GEN_AI_REQUEST_MODEL]}"


def test_a_number_too_large_for_a_float_is_left_out(cap: SpanCapture, client: OpenAI) -> None:
    """``temperature=10**400`` raised OverflowError while the span started: the call had
    no span at all (and a traceback was logged)."""
    client.chat.completions.create(model="m", messages=MESSAGES, temperature=10**400)
    a = attrs(llm_span(cap))
    assert sc.GEN_AI_REQUEST_TEMPERATURE not in a
    assert a[sc.GEN_AI_REQUEST_MODEL] == "m"


# -- parse() ------------------------------------------------------------------------------


def test_chat_parse_is_recorded(cap: SpanCapture, client: OpenAI) -> None:
    """``parse()`` posts the request itself, without ``create``: it used to make no span."""
    result = chat_helpers(client).parse(model="gpt-4o-mini", messages=MESSAGES)
    assert result.choices[0].message.content == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": CHAT_MESSAGE, "finish_reason": "stop"}


def test_responses_parse_is_recorded(cap: SpanCapture, client: OpenAI) -> None:
    result = client.responses.parse(model="gpt-4o-mini", input="Tell me a story")
    assert result.output_text == RESPONSE_MESSAGE
    assert_response(llm_span(cap))


async def test_async_parse_is_recorded(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    result = await chat_helpers(aclient).parse(model="gpt-4o-mini", messages=MESSAGES)
    assert result.choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))
    cap.clear()
    answer = await aclient.responses.parse(model="gpt-4o-mini", input="Tell me a story")
    assert answer.output_text == RESPONSE_MESSAGE
    assert_response(llm_span(cap))


def test_parse_built_on_create_makes_one_span(
    client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK whose ``parse`` calls ``create`` (both instrumented) records one span."""
    from openai.resources.chat.completions import Completions

    def parse(self: Any, **kwargs: Any) -> Any:
        return self.create(**kwargs)

    monkeypatch.setattr(Completions, "parse", parse, raising=False)  # none before 1.92
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    try:
        with capture() as c:
            client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES)
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    assert [s.name for s in c.spans] == ["chat gpt-4o-mini", "chat gpt-4o-mini"]


# -- raw responses (with_raw_response, with_streaming_response) ---------------------------


def test_raw_response_parse_records_the_answer(cap: SpanCapture, client: OpenAI) -> None:
    """LangChain's ChatOpenAI calls ``with_raw_response.create(**payload)`` then
    ``.parse()``: the span waits for the parse and records the answer."""
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")
    assert cap.find(kind=sc.KIND_LLM) == []  # open until parsed
    answer = raw.parse()
    assert answer.choices[0].message.content == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    assert attrs(span)[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete == {"message": CHAT_MESSAGE, "finish_reason": "stop"}
    assert raw.parse() is answer  # parsed again: the same answer, no second record
    llm_span(cap)
    cap.clear()
    response = client.responses.with_raw_response.create(model="gpt-4o-mini", input="story")
    assert response.parse().output_text == RESPONSE_MESSAGE
    assert_response(llm_span(cap))
    cap.clear()
    parsed = chat_helpers(client).with_raw_response.parse(model="gpt-4o-mini", messages=MESSAGES)
    assert parsed.parse().choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))


async def test_async_raw_response_parse_records_the_answer(
    cap: SpanCapture, aclient: AsyncOpenAI
) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert cap.find(kind=sc.KIND_LLM) == []
    assert raw.parse().choices[0].message.content == CHAT_MESSAGE  # (parse() is not awaited)
    assert_chat(llm_span(cap))


def test_raw_response_of_a_stream_records_the_stream(cap: SpanCapture, client: OpenAI) -> None:
    """``include_response_headers=True`` streams through ``with_raw_response``: the
    stream ``parse()`` gives is recorded, even once the raw response is gone."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream = raw.parse()
    assert isinstance(stream, openai.Stream)
    del raw
    gc.collect()
    assert wait_reaped()
    assert cap.find(kind=sc.KIND_LLM) == []  # the stream's, open until read
    with stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    [complete] = events(span, sc.LLM_COMPLETE)
    assert complete["message"] == CHAT_MESSAGE
    assert complete["streamed_tokens"] == len(CHAT_TOKENS)


async def test_async_raw_response_of_a_stream_records_the_stream(
    cap: SpanCapture, aclient: AsyncOpenAI
) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    stream = raw.parse()
    assert isinstance(stream, openai.AsyncStream)
    async with stream:
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span, usage=False)
    assert events(span, sc.LLM_COMPLETE)[0]["message"] == CHAT_MESSAGE


def test_raw_response_never_parsed_ends_when_dropped(cap: SpanCapture, client: OpenAI) -> None:
    """Only the headers read: the span ends when the raw response is garbage collected,
    at the time the response arrived, with what the request told."""
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    arrived_ns = time.time_ns()
    assert raw.status_code == 200
    time.sleep(0.05)
    assert cap.find(kind=sc.KIND_LLM) == []
    del raw
    gc.collect()
    assert wait_reaped()
    span = llm_span(cap)
    assert attrs(span)[sc.STATE] == "completed"
    assert attrs(span)[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert span.end_time is not None and span.end_time <= arrived_ns
    assert events(span, sc.LLM_COMPLETE) == []


def test_streaming_response_parsed_or_closed(cap: SpanCapture, client: OpenAI) -> None:
    """``with_streaming_response``: recorded when parsed, ended when its block is left."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    ) as raw:
        answer = raw.parse()
    assert answer.choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))
    cap.clear()
    with no_cyclic_gc():
        with client.responses.with_streaming_response.create(
            model="gpt-4o-mini", input="story"
        ) as raw:
            assert json.loads(raw.read())["output"][0]["type"] == "message"
            assert cap.find(kind=sc.KIND_LLM) == []
        span = llm_span(cap)  # left the block: closed, ended
    assert attrs(span)[sc.STATE] == "completed"


async def test_async_streaming_response_parsed(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    async with aclient.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    ) as raw:
        answer = await raw.parse()
    assert answer.choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))


# -- errors -------------------------------------------------------------------------------


def test_http_500_fails_span_and_raises_unchanged(
    cap: SpanCapture, client: OpenAI, fake: FakeOpenAI
) -> None:
    fake.fail_next = 500
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    exc = excinfo.value
    assert type(exc) is openai.InternalServerError
    assert exc.status_code == 500
    assert exc.body == json.loads((FIXTURES / "error_500.json").read_text())["error"]
    span = llm_span(cap)
    a = attrs(span)
    assert a[sc.STATE] == "failed"
    assert a[sc.ERROR_TYPE] == "openai.InternalServerError"
    assert span.status.status_code is StatusCode.ERROR
    assert "InternalServerError" in (span.status.description or "")
    [exception] = events(span, "exception")
    assert exception["exception.type"] == "openai.InternalServerError"
    assert events(span, sc.LLM_COMPLETE) == []


def test_connection_error_fails_span(cap: SpanCapture, closed_port: int) -> None:
    c = OpenAI(base_url=f"http://127.0.0.1:{closed_port}/v1", api_key="test", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        c.responses.create(model="gpt-4o-mini", input="hi")
    c.close()
    span = llm_span(cap)
    assert attrs(span)[sc.STATE] == "failed"
    assert attrs(span)[sc.ERROR_TYPE] == "openai.APIConnectionError"


# -- async --------------------------------------------------------------------------------


async def test_async_chat_completion(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    result = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert result.choices[0].message.content == CHAT_MESSAGE
    assert_chat(llm_span(cap))


async def test_async_responses(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    result = await aclient.responses.create(model="gpt-4o-mini", input="Tell me a story")
    assert result.output_text == RESPONSE_MESSAGE
    assert_response(llm_span(cap))


async def test_async_chat_stream_exhausted(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert isinstance(stream, openai.AsyncStream)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == CHAT_MESSAGE
    span = llm_span(cap)
    assert_chat(span)
    assert events(span, sc.LLM_COMPLETE)[0]["streamed_tokens"] == len(CHAT_TOKENS)


async def test_async_responses_stream(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    stream = await aclient.responses.create(model="gpt-4o-mini", input="story", stream=True)
    async with stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
    assert deltas == RESPONSE_TOKENS
    assert_response(llm_span(cap))


async def test_async_stream_break_then_aclose(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    async for chunk in stream:
        if chunk.choices[0].delta.content == "!":
            break
    assert cap.find(kind=sc.KIND_LLM) == []
    await stream.close()
    await stream.aclose()
    [complete] = events(llm_span(cap), sc.LLM_COMPLETE)
    assert complete["message"] == "Hello!"


async def test_async_stream_break_in_async_with(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    async with stream as s:
        assert s is stream
        async for _chunk in s:
            break
    assert attrs(llm_span(cap))[sc.STATE] == "completed"


async def test_async_stream_garbage_collected(cap: SpanCapture, aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    async for chunk in stream:
        if chunk.choices[0].delta.content == "Hello":
            break
    del stream, chunk
    gc.collect()
    await asyncio.sleep(0)
    assert wait_reaped()
    [complete] = events(llm_span(cap), sc.LLM_COMPLETE)
    assert complete["message"] == "Hello"


async def test_async_http_500(cap: SpanCapture, aclient: AsyncOpenAI, fake: FakeOpenAI) -> None:
    fake.fail_next = 500
    with pytest.raises(openai.InternalServerError):
        await aclient.responses.create(model="gpt-4o-mini", input="hi", stream=True)
    span = llm_span(cap)
    assert attrs(span)[sc.STATE] == "failed"
    assert span.status.status_code is StatusCode.ERROR


async def test_async_cancelled_call_is_cancelled(cap: SpanCapture, fake: FakeOpenAI) -> None:
    started = threading.Event()
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            started.set()
            release.wait(10)

    server = _Server(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="t", max_retries=0
    )
    try:
        task = asyncio.create_task(c.chat.completions.create(model="m", messages=MESSAGES))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        release.set()
        await c.close()
        server.shutdown()
        server.server_close()
    span = llm_span(cap)
    assert span.name == "chat m"
    assert attrs(span)[sc.STATE] == "cancelled"


# -- instrumentor -------------------------------------------------------------------------


def test_uninstrument_restores_the_sdk(client: OpenAI) -> None:
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses

    classes = [Completions, AsyncCompletions, Responses, AsyncResponses, *beta_chat_classes()]
    methods = [(c, m) for c in classes for m in ("create", "parse") if m in vars(c)]
    assert len(methods) == 8  # beta's classes have parse only; the others both
    originals = [c.__dict__[m] for c, m in methods]
    instrumentor = OpenAIInstrumentor()
    for _ in range(2):  # uninstrument, then instrument again
        instrumentor.instrument()
        instrumentor.instrument()  # twice: warns, wraps nothing more
        try:
            assert all(isinstance(c.__dict__[m], wrapt.FunctionWrapper) for c, m in methods)
            assert not any(
                isinstance(c.__dict__[m].__wrapped__, wrapt.FunctionWrapper) for c, m in methods
            )
            with capture() as cap:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert len(cap.spans) == 1
        finally:
            instrumentor.uninstrument()
        instrumentor.uninstrument()  # twice: nothing happens
        assert [c.__dict__[m] for c, m in methods] == originals
    with capture() as cap:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        chat_helpers(client).parse(model="gpt-4o-mini", messages=MESSAGES)
    assert cap.spans == []


def test_uninstrument_also_stops_the_wrappers_the_sdk_kept(fake: FakeOpenAI) -> None:
    """A client's ``with_raw_response`` object keeps the ``create`` it found when first
    read: read while instrumented, its calls still made spans after ``uninstrument()``."""
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    with OpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response  # built now, with the wrapper
        with capture() as cap:
            raw.create(model="gpt-4o-mini", messages=MESSAGES).parse()
        assert len(cap.spans) == 1
        instrumentor.uninstrument()
        with capture() as cap:
            answer = raw.create(model="gpt-4o-mini", messages=MESSAGES).parse()
            client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert answer.choices[0].message.content == CHAT_MESSAGE
        assert cap.spans == []
        instrumentor.instrument()  # instrumented again: a new client's are traced
        try:
            with (
                OpenAI(base_url=fake.base_url, api_key="test", max_retries=0) as other,
                capture() as cap,
            ):
                other.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=MESSAGES
                ).parse()
            assert len(cap.spans) == 1
        finally:
            instrumentor.uninstrument()


def test_uninstrument_keeps_a_wrapper_another_library_added_after(
    client: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another tracer wraps ``create`` after spangraph: ``uninstrument()`` used to remove
    that library's wrapper (the outermost) and leave spangraph's recording."""
    from openai.resources.chat.completions import Completions

    monkeypatch.setattr(Completions, "create", Completions.__dict__["create"])  # restored
    theirs: list[str] = []

    def their_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        theirs.append(kwargs["model"])
        return wrapped(*args, **kwargs)

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument()
    try:
        wrapt.wrap_function_wrapper(Completions, "create", their_wrapper)
    finally:
        instrumentor.uninstrument()
    with capture() as cap:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert cap.spans == []  # spangraph's wrapper is gone ...
    assert theirs == ["gpt-4o-mini"]  # ... theirs still runs
    instrumentor.instrument()
    try:
        with capture() as cap:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        instrumentor.uninstrument()
    assert len(cap.spans) == 1 and theirs == ["gpt-4o-mini"] * 2


def test_without_the_sdk_instrument_raises_module_not_found() -> None:
    """``opentelemetry-instrument`` loads every instrumentor and skips, quietly, one whose
    library is missing (``ModuleNotFoundError``): importing ours needs no SDK."""
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "from spangraph.instrumentation.openai import OpenAIInstrumentor\n"
        "try:\n"
        "    OpenAIInstrumentor().instrument(skip_dep_check=True)\n"
        "except ModuleNotFoundError:\n"
        "    print('skipped')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "skipped"


def test_instrument_with_tracer_provider(client: OpenAI) -> None:
    provider = TracerProvider()
    mine = SpanCapture()
    provider.add_span_processor(mine)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with capture() as spangraphs:
            client.responses.create(model="gpt-4o-mini", input="hi")
    finally:
        instrumentor.uninstrument()
    assert spangraphs.spans == []
    [span] = mine.spans
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "spangraph.instrumentation.openai"
    assert_response(span)


def test_suppressed_instrumentation_makes_no_span(cap: SpanCapture, client: OpenAI) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert cap.spans == []


# -- the graph and live subscribers -------------------------------------------------------


class ProjectSubscriber:
    """A real Pub/Sub subscriber on a project's channel, confirmed on creation."""

    def __init__(self, client: redis.Redis, project: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(project_channel(project))
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "subscription not confirmed"
            message = self.pubsub.get_message(timeout=1)
            if message and message["type"] == "subscribe":
                break
        self.messages: list[dict[str, Any]] = []

    def until(self, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if not message or message["type"] != "message":
                continue
            data = json.loads(message["data"])
            self.messages.append(data)
            if done(data):
                return self.messages
        raise AssertionError(f"timed out; got {[m['type'] for m in self.messages]}")

    def close(self) -> None:
        self.pubsub.close()


def graph_events(store: Any, span_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = store.query(
        "MATCH (:Span {span_id: $id})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.name AS name, e.attributes AS attributes ORDER BY e.seq",
        {"id": span_id},
    )
    return [(r["name"], json.loads(r["attributes"] or "{}")) for r in rows]


def llm_node(store: Any, project: str) -> dict[str, Any]:
    rows = store.query(
        "MATCH (s:Span {project_id: $p, kind: 'llm'}) RETURN s AS s, labels(s) AS labels",
        {"p": project},
    )
    assert len(rows) == 1, rows
    return {**rows[0]["s"], "_labels": sorted(rows[0]["labels"])}


def _text_of(chunk: Any) -> str | None:
    if getattr(chunk, "type", None) == "response.output_text.delta":
        return chunk.delta
    choices = getattr(chunk, "choices", None)
    return choices[0].delta.content if choices else None


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_stream_tokens_live_only_and_message_in_graph(
    sg: spangraph.Spangraph,
    instrumented: OpenAIInstrumentor,
    redis_client: redis.Redis,
    client: OpenAI,
    api: str,
) -> None:
    project = sg.settings.project
    sub = ProjectSubscriber(redis_client, project)
    try:
        if api == "chat":
            stream: Any = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            expected_tokens, message, usage = CHAT_TOKENS, CHAT_MESSAGE, (19, 9)
        else:
            stream = client.responses.create(model="gpt-4o-mini", input="story", stream=True)
            expected_tokens, message, usage = RESPONSE_TOKENS, RESPONSE_MESSAGE, (36, 12)
        it = iter(stream)
        while not _text_of(next(it)):  # read up to the first text delta
            pass
        # that token reaches the subscriber while the span is still open
        got = sub.until(lambda m: m["type"] == "token")
        assert [m["type"] for m in got][:1] == ["span.started"]
        for _ in stream:
            pass
        assert spangraph.flush(10)
        messages = sub.until(lambda m: m["type"] == "span.ended")
    finally:
        sub.close()
    tokens = [m for m in messages if m["type"] == "token"]
    assert [m["attributes"]["text"] for m in tokens] == expected_tokens
    assert [m["attributes"]["index"] for m in tokens] == list(range(len(expected_tokens)))
    assert {m["kind"] for m in tokens} == {"llm"}
    assert {m["workflow_id"] for m in messages} == {messages[0]["trace_id"]}  # no workflow
    types = [m["type"] for m in messages]
    assert types.index(sc.LLM_COMPLETE) > max(i for i, t in enumerate(types) if t == "token")
    assert types[-1] == "span.ended" and types.count("span.ended") == 1
    ended = messages[-1]["attributes"]
    assert (ended[sc.GEN_AI_USAGE_INPUT_TOKENS], ended[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == usage

    assert sg.store is not None
    node = llm_node(sg.store, project)
    assert node["_labels"] == ["LLM", "Span"]
    assert node["kind"] == "llm"
    assert node["state"] == "completed"
    assert node["name"] == "chat gpt-4o-mini"
    stored = json.loads(node["attributes"])
    assert stored[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert stored[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert (stored[sc.GEN_AI_USAGE_INPUT_TOKENS], stored[sc.GEN_AI_USAGE_OUTPUT_TOKENS]) == usage
    kept = graph_events(sg.store, node["span_id"])
    assert [name for name, _ in kept] == [sc.LLM_COMPLETE]  # no token in the graph
    assert kept[0][1]["message"] == message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_stream_block_leaves_its_span_to_the_parent(
    sg: spangraph.Spangraph, instrumented: OpenAIInstrumentor, client: OpenAI
) -> None:
    """The child leaves ``with stream:`` (closing its copy) after the parent read the
    stream to its end: the span keeps the parent's end (before: the child's close ended
    it again, with the child's time)."""
    child = ForkedChild()
    with (
        child,
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ) as stream,
    ):
        child.fork()
        for _ in stream:
            pass
    assert child.release() == 0
    assert sg.store is not None
    node = llm_node(sg.store, sg.settings.project)
    assert node["state"] == "completed"
    assert node["end_ns"] == stream._self_call.span.end_time


@pytest.mark.parametrize("how", ["keyword", "environment"])
def test_content_capture_off_keeps_the_text_out_of_graph_and_live(
    sg: spangraph.Spangraph,
    redis_client: redis.Redis,
    client: OpenAI,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """instrument(capture_content=False), or OpenTelemetry's GenAI content switch set to
    false: tokens go out live with their index only, llm.complete has no message."""
    instrumentor = OpenAIInstrumentor()
    if how == "keyword":
        instrumentor.instrument(capture_content=False)
    else:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
        instrumentor.instrument()
    sub = ProjectSubscriber(redis_client, sg.settings.project)
    try:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        for _ in stream:
            pass
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert spangraph.flush(10)
        messages = sub.until(lambda m: m["type"] == "span.ended")
        messages = sub.until(lambda m: m["type"] == "span.ended")  # the second call's
    finally:
        sub.close()
        instrumentor.uninstrument()
    tokens = [m["attributes"] for m in messages if m["type"] == "token"]
    assert tokens == [{"index": i} for i in range(len(CHAT_TOKENS))]
    completes = [m["attributes"] for m in messages if m["type"] == sc.LLM_COMPLETE]
    assert completes == [
        {"finish_reason": "stop", "streamed_tokens": len(CHAT_TOKENS)},
        {"finish_reason": "stop"},
    ]
    assert CHAT_TOKENS[2] not in json.dumps(messages)
    assert sg.store is not None
    rows = sg.store.query(
        "MATCH (s:Span {project_id: $p, kind: 'llm'})-[:HAS_EVENT]->(e:Event) "
        "RETURN e.attributes AS attributes",
        {"p": sg.settings.project},
    )
    assert len(rows) == 2 and all("message" not in json.loads(r["attributes"]) for r in rows)


def test_capture_content_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="capture_content"):
        OpenAIInstrumentor().instrument(capture_content="no")
    assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry  # nothing patched


def test_tracer_provider_must_be_a_provider() -> None:
    """Before: the tracer's own AttributeError ('str' object has no attribute
    'get_tracer')."""
    with pytest.raises(TypeError, match="tracer_provider must be an OpenTelemetry"):
        OpenAIInstrumentor().instrument(tracer_provider="x")
    assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry  # nothing patched


def test_failed_call_in_the_graph(
    sg: spangraph.Spangraph, instrumented: OpenAIInstrumentor, client: OpenAI, fake: FakeOpenAI
) -> None:
    fake.fail_next = 500
    with spangraph.workflow("ask") as run, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert spangraph.flush(10)
    assert sg.store is not None
    node = llm_node(sg.store, sg.settings.project)
    assert node["state"] == "failed"
    assert node["workflow_id"] == run.workflow_id
    assert "exception" in [name for name, _ in graph_events(sg.store, node["span_id"])]


# -- the docs' example --------------------------------------------------------------------


def _section_example(heading: str) -> str:
    text = (ROOT / "docs" / "integrations.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_docs_example_runs(
    tmp_path: Path, fake: FakeOpenAI, graph_url: str, embedded_server: Any, store: Any
) -> None:
    script = tmp_path / "example.py"
    script.write_text(_section_example("## OpenAI"))
    env = {
        **os.environ,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "test",
        "SPANGRAPH_GRAPH_URL": graph_url,
        "SPANGRAPH_REDIS_URL": embedded_server.redis_url,
        "SPANGRAPH_HOME": str(tmp_path / "home"),
    }
    env.pop("NEO4J_URI", None)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert CHAT_MESSAGE in proc.stdout and RESPONSE_MESSAGE in proc.stdout
    rows = store.query(
        "MATCH (w:Workflow {name: 'greet'})-[:PARENT_OF]->(s:LLM) "
        "RETURN s.name AS name, s.state AS state, s.attributes AS attributes"
    )
    assert [(r["name"], r["state"]) for r in rows] == [("chat gpt-4o-mini", "completed")] * 2
    usages = sorted(json.loads(r["attributes"])[sc.GEN_AI_USAGE_INPUT_TOKENS] for r in rows)
    assert usages == [19, 36]
