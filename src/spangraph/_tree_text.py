"""A run as text: one line per span, indented by depth (``spangraph query tree``, the
demo)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from . import queries
from . import semconv as sc
from ._terminal import printable


def print_tree(roots: list[queries.TreeNode], out: Callable[[str], None]) -> None:
    """One line per span, indented by depth: kind, name, state, duration (the name
    column narrows as the indent grows, down to one character: below 20 levels the
    columns no longer line up), then the attempt of a step that may be retried
    (``attempt 2/4``), the tokens a model call reported (``1,200 in / 34 out tokens``),
    the tool a tool span called when its name does not say it (``calls get_weather``),
    the first line of a failed span's error where it arose (``— ValueError: boom``),
    ``interrupted`` on a LangGraph node or run that stopped to ask a person, and the run of
    a workflow started inside (``(run <workflow_id>)``)."""
    for root in roots:
        run = root.span.get("workflow_id")
        for depth, node in root.walk():
            span = node.span
            width = max(1, 40 - 2 * depth)
            kind = printable(str(span.get("kind", "?")))
            state = printable(str(span.get("state", "?")))
            notes = [_attempt(span), _tokens(span), _tool(span), interrupted(span), _error(node)]
            own = span.get("workflow_id")  # a workflow started inside: a run of its own
            if depth and own and own != run:
                notes.append(f"(run {printable(str(own))})")
            out(
                f"  {'  ' * depth}{kind:<9} {printable(shown_name(span)):<{width}} "
                f"{state:<10} {_took(span)}" + "".join(f"  {n}" for n in notes if n)
            )


def shown_name(span: dict[str, Any]) -> str:
    """A span's name as the tree shows it: for a span Logfire named by a message template
    (``Chat Completion with {request_data[model]!r}``), its message (``logfire.msg``), as
    the web UI shows it."""
    name = str(span.get("name"))
    attributes = span.get("attributes")
    message = attributes.get("logfire.msg") if isinstance(attributes, dict) else None
    return message if isinstance(message, str) and message and "{" in name else name


_ERROR_CHARS = 100
"""The most of an error a tree line shows (``--json`` has it whole)."""


def _error(node: queries.TreeNode) -> str | None:
    """The first line of a failed span's error, on the span where it arose: not on a
    span whose failed child says the same (the error going up the tree once)."""
    span = node.span
    if span.get("state") != sc.STATE_FAILED:
        return None
    message = error_text(span)
    if message is None:
        # no message: the type of error an instrumentation recorded (`error.type`, with
        # the HTTP status), as the web UI says it, where it arose
        message = _error_type(span)
        if message is None or any(
            child.span.get("state") == sc.STATE_FAILED and _error_type(child.span) == message
            for child in node.children
        ):
            return None
        return f"— Error: {printable(message[:_ERROR_CHARS])}"
    if any(
        child.span.get("state") == sc.STATE_FAILED and _same_error(message, child.span)
        for child in node.children
    ):
        return None
    return f"— {printable(first_line(message))}"


EXCEPTION: Final = "exception"
"""Key of a tree span's last recorded exception (``Type: message``) that the caller of
:func:`print_tree` adds where a failed span has no status message
(:func:`spangraph.queries.exception_texts`)."""


def error_text(span: dict[str, Any]) -> str | None:
    """What a span says of its error: its status message, else its last recorded
    exception (:data:`EXCEPTION`), else ``None``."""
    for message in (span.get("status_message"), span.get(EXCEPTION)):
        if isinstance(message, str) and message.strip():
            return message
    return None


_OPENING: Final = re.compile(r"[\[{(]+")
_TRACEBACK: Final = "Traceback (most recent call last):"
_JS_FRAME: Final = re.compile(
    r"\n[ \t]+at (?:[^\n]* \([^\n]*:\d+(?::\d+)?\)|\S+:\d+(?::\d+)?)[ \t]*(?:\n|$)"
)
"""A JavaScript stack's first frame: ``at name (file:line:col)`` or ``at file:line:col``
(not prose that goes on with "at" on a line of its own)."""
_TYPED_LINE: Final = re.compile(r"[A-Za-z_$][\w$.]*: (.*)")


def without_stack(message: str) -> str:
    """An error message without the Python traceback (OpenInference's LangChain spans
    append one, with or without a line break before it) or the JavaScript stack after
    it (and the ``Error: message`` line before such a stack that repeats the message);
    a message that is only a traceback: its last line, the error. As the web UI shows
    it."""
    at = message.find(_TRACEBACK)
    if at >= 0 and message[:at].strip():
        message = message[:at]
    elif at >= 0:
        lines = [line for line in message.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    frame = _JS_FRAME.search(message)
    if frame is not None and frame.start() > 0:
        lines = message[: frame.start()].split("\n")
        first = next((line.strip() for line in lines if line.strip()), "")
        typed = _TYPED_LINE.fullmatch(lines[-1].strip())
        # the stack's own "Error: message" line, when it repeats the message above it
        if len(lines) > 1 and typed is not None and typed[1] == first:
            lines.pop()
        message = "\n".join(lines)
    return message.strip()


def first_line(message: str, limit: int = _ERROR_CHARS) -> str:
    """The first line of an error message that is not blank (its stack left out: see
    :func:`without_stack`), at most ``limit`` characters (cut with ``...``): with the next one when it ends with ``:`` (``Error
    while generating output:`` says nothing without its cause), and the whole message on
    one line when it is JSON written over several (``[``, ``{`` first)."""
    lines = [line.strip() for line in without_stack(message).splitlines() if line.strip()]
    if not lines:
        return ""
    text = f"{lines[0]} {lines[1]}" if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    if _OPENING.fullmatch(text):
        text = " ".join(lines)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _error_type(span: dict[str, Any]) -> str | None:
    """``api_error (HTTP 500)``: a failed span's ``error.type`` and HTTP status, when it
    has either, else ``None``."""
    attributes = span.get("attributes")
    if not isinstance(attributes, dict):
        return None
    kind = attributes.get("error.type")
    code = attributes.get("http.response.status_code")
    kind = kind if isinstance(kind, str) and kind.strip() else None
    code = f"HTTP {code}" if isinstance(code, int) and not isinstance(code, bool) else None
    if kind and code:
        return f"{kind} ({code})"
    return kind or code


_TIMEOUT = re.compile(r"TimeoutError: (exceeded its timeout of \S+ s)")


def _same_error(message: str, child: dict[str, Any]) -> bool:
    """Whether ``child``'s error is ``message``, gone up unchanged: the same text (a
    stack after it aside), the same text after an exception type (``Type: text``), or a
    step's timeout (``TimeoutError: exceeded its timeout of 0.5 s``) that the span above
    names (``TimeoutError: step 'fetch' exceeded its timeout of 0.5 s``), as the web UI
    tells them."""
    told = error_text(child)
    if told is None:
        return False
    if told == message:
        return True
    message, told = without_stack(message), without_stack(told)  # each span's differs
    if told == message:
        return True
    # the same error with its type before it (`MidStreamFallbackError: litellm.Mid...`,
    # where the child's instrumentation wrote the message alone)
    typed = _TYPED_LINE.fullmatch(message)
    if typed is not None and typed[1] == told:
        return True
    fired = _TIMEOUT.fullmatch(told)
    name = child.get("name")
    return (
        fired is not None
        and message.startswith("TimeoutError: ")
        and message.endswith(f" {fired[1]}")
        and isinstance(name, str)
        and name in message
    )


_TOOL_NAMES = ("gen_ai.tool.name", "tool.name", "ai.toolCall.name")
"""Where a tool span says which tool it called: OpenTelemetry GenAI, OpenInference, the
Vercel AI SDK."""


def _tool(span: dict[str, Any]) -> str | None:
    """``calls get_weather``: the tool a tool span called, when its name does not say it
    (smolagents' ``SimpleTool``, LlamaIndex's ``FunctionTool.acall``)."""
    if span.get("kind") != "tool":
        return None
    attributes = span.get("attributes") or {}
    for key in _TOOL_NAMES:
        name = attributes.get(key)
        if isinstance(name, str) and name:
            said = re.search(
                rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", str(span.get("name") or "")
            )
            return None if said else f"calls {printable(name)}"
    return None


def _took(span: dict[str, Any]) -> str:
    """The duration column: milliseconds, ``…`` while running (or its process died),
    ``-`` for an option never explored (it never ran)."""
    if span.get("state") == sc.STATE_UNEXPLORED:
        return f"{'-':>9}   "
    value = span.get("duration_ms")
    return f"{value:9.1f} ms" if isinstance(value, int | float) else "      …   "


def _attempt(span: dict[str, Any]) -> str | None:
    """``attempt 2/4`` for a step that is a retry or may be retried, else ``None``."""
    attributes = span.get("attributes")
    if not isinstance(attributes, dict):
        return None
    attempt, most = attributes.get(sc.STEP_ATTEMPT), attributes.get(sc.STEP_MAX_ATTEMPTS)
    if type(attempt) is not int:
        return None
    if type(most) is int and most > 1:
        return f"attempt {attempt}/{most}"
    return f"attempt {attempt}" if attempt > 1 else None


def _tokens(span: dict[str, Any]) -> str | None:
    """``1,200 in / 34 out tokens`` for a model call that reported its usage."""
    attributes = span.get("attributes")
    if span.get("kind") != sc.KIND_LLM or not isinstance(attributes, dict):
        return None
    counts = [_count(attributes, keys) for keys in (_INPUT_KEYS, _OUTPUT_KEYS)]
    if not any(type(c) is int for c in counts):
        return None
    said = [
        f"{c:,} {side}" for c, side in zip(counts, ("in", "out"), strict=True) if type(c) is int
    ]
    return " / ".join(said) + " tokens"


_INPUT_KEYS = (sc.GEN_AI_USAGE_INPUT_TOKENS, sc.OPENINFERENCE_TOKEN_COUNT_PROMPT)
_OUTPUT_KEYS = (sc.GEN_AI_USAGE_OUTPUT_TOKENS, sc.OPENINFERENCE_TOKEN_COUNT_COMPLETION)
"""Where a model call's token counts are: OpenTelemetry's, else OpenInference's (spans
other instrumentations sent)."""


def _count(attributes: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = attributes.get(key)
        if type(value) is int:
            return value
    return _langfuse_count(attributes, keys is _OUTPUT_KEYS)


_LANGFUSE_KEYS = (("input", "prompt_tokens", "input_tokens"),
                  ("output", "completion_tokens", "output_tokens"))  # fmt: skip
"""Where Langfuse's usage details (JSON) hold the input and the output tokens: its own
names, or those of the provider's answer it was given."""


def _langfuse_count(attributes: dict[str, Any], output: bool) -> int | None:
    """A count from Langfuse's ``langfuse.observation.usage_details``, else ``None``."""
    text = attributes.get(sc.LANGFUSE_USAGE_DETAILS)
    names = _LANGFUSE_KEYS[output]
    if not isinstance(text, str) or not text.startswith("{") or all(k not in text for k in names):
        return None
    try:
        details = json.loads(text)
    except (ValueError, RecursionError):  # (JSON nested thousands deep)
        return None
    for key in names:
        value = details.get(key) if isinstance(details, dict) else None
        if type(value) is int:
            return value
    return None


def interrupted(span: dict[str, Any]) -> str | None:
    """``interrupted`` for a LangGraph node or run that stopped at an ``interrupt()``
    (its span ended ``completed``: the run waits for an answer)."""
    attributes = span.get("attributes")
    if isinstance(attributes, dict) and attributes.get(sc.LANGGRAPH_INTERRUPTED) is True:
        return "interrupted"
    return None
