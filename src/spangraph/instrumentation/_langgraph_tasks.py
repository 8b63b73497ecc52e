"""Node executions as ``step`` spans (one per attempt), parallel tasks as ``branch`` spans.

LangGraph runs every task of a superstep through ``run_with_retry`` /
``arun_with_retry``, which call ``task.proc`` once per attempt. The wrapper hands
LangGraph a copy of the task whose ``proc`` opens one step span per call — so RetryPolicy
attempts are separate spans with ``spangraph.step.attempt``, linked ``retry_of`` — and,
when the task is one of several in its superstep (``Send`` fan-out, or several nodes
triggered at once), runs the whole task inside a ``branch`` span.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final

from opentelemetry.trace import Link

from .. import semconv as sc
from .._attrs import clean_value
from .._spans import _add_event, _error_attrs, _Frame, _Options
from ..branching import Branch
from ..genai import _capturing as _capturing_content
from ..instrument import MAX_RETRIES
from ._langgraph_runs import INTERRUPTED, current_run_state, own

_log = logging.getLogger("spangraph.instrumentation.langgraph")

NODE: Final = "langgraph.node"
SUPERSTEP: Final = "langgraph.step"
TRIGGERS: Final = "langgraph.triggers"
TASK_ID: Final = "langgraph.task.id"
BRANCH_INDEX: Final = "langgraph.branch.index"
BRANCH_COUNT: Final = "langgraph.branch.count"
BUBBLE_UP: Final = "langgraph.bubble_up"
SEND_ARG: Final = "langgraph.send.arg"
"""The argument of the ``Send`` that made the task (its node's input), bounded."""
RETRYABLE: Final = "langgraph.retry.retryable"
"""False on a failed attempt whose error none of the node's RetryPolicies retries."""
JITTER: Final = "jitter"

_PUSH: Final = "__pregel_push"  # LangGraph's PUSH: the path of a task made by a Send

_HIDDEN_TAG: Final = "langsmith:hidden"  # LangGraph's TAG_HIDDEN (the __start__ task)

_parallel: dict[str, tuple[int, int]] = {}
"""Task id -> (index, count) for tasks that run beside others in their superstep."""
_parallel_lock = threading.Lock()


def reset() -> None:
    with _parallel_lock:
        _parallel.clear()


def _hidden(task: Any) -> bool:
    config = getattr(task, "config", None) or {}
    return _HIDDEN_TAG in (config.get("tags") or ())


def _send_arg(task: Any) -> Any:
    """The argument of the ``Send`` that made ``task`` (its path: ``(PUSH, index, …)``;
    a functional API call's is ``(PUSH, parent path, …)``), as an attribute value; else
    None."""
    path: Sequence[Any] = getattr(task, "path", None) or ()
    if len(path) < 2 or path[0] != _PUSH or type(path[1]) is not int:
        return None
    if not _capturing_content():  # the node's input: content (the GenAI switch)
        return None
    return clean_value(task.input)


# -- parallel tasks of one superstep ------------------------------------------------------


def _mark_parallel(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    """Materialise the tick's tasks and mark them when several will run at once."""
    if args:
        tasks = tuple(args[0])
        args = (tasks, *args[1:])
    else:
        tasks = tuple(kwargs.get("tasks") or ())
        kwargs = {**kwargs, "tasks": tasks}
    visible = [t for t in tasks if not _hidden(t) and getattr(t, "id", None)]
    if len(visible) < 2:
        return args, kwargs, []
    with _parallel_lock:
        for index, task in enumerate(visible):
            _parallel[task.id] = (index, len(visible))
    return args, kwargs, [t.id for t in visible]


def _unmark(ids: list[str]) -> None:
    with _parallel_lock:
        for task_id in ids:
            _parallel.pop(task_id, None)


def wrap_tick(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        args, kwargs, ids = _mark_parallel(args, kwargs)
    except Exception:
        _log.debug("spangraph: could not inspect a LangGraph superstep", exc_info=True)
        ids = []
    gen = wrapped(*args, **kwargs)
    return _unmark_after(gen, ids) if ids else gen


def wrap_atick(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        args, kwargs, ids = _mark_parallel(args, kwargs)
    except Exception:
        _log.debug("spangraph: could not inspect a LangGraph superstep", exc_info=True)
        ids = []
    agen = wrapped(*args, **kwargs)
    return _aunmark_after(agen, ids) if ids else agen


def _unmark_after(gen: Iterator[Any], ids: list[str]) -> Iterator[Any]:
    try:
        return (yield from gen)
    finally:
        _unmark(ids)


async def _aunmark_after(agen: AsyncIterator[Any], ids: list[str]) -> AsyncIterator[Any]:
    try:
        async for item in agen:
            yield item
    finally:
        try:
            await agen.aclose()  # type: ignore[attr-defined]
        finally:
            _unmark(ids)


def _branch_frame(task: Any) -> _Frame | None:
    with _parallel_lock:
        mark = _parallel.get(task.id)
    if mark is None:
        return None
    index, count = mark
    attrs = {
        NODE: task.name,
        TASK_ID: task.id,
        BRANCH_INDEX: index,
        BRANCH_COUNT: count,
        SEND_ARG: _send_arg(task),
    }
    opts = _Options(kind=sc.KIND_BRANCH, name=task.name, attributes=attrs, handle_cls=Branch)
    return _Frame(opts, task.name, None, ())


# -- tasks and their attempts -------------------------------------------------------------


def _policies(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[Any]:
    policy = getattr(task, "retry_policy", None) or (
        args[1] if len(args) > 1 else kwargs.get("retry_policy")
    )
    if not policy:
        return ()
    return (policy,) if hasattr(policy, "max_attempts") else tuple(policy)


def _traced_call(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], _Frame | None] | None:
    """The arguments with an instrumented copy of the task, and its branch frame."""
    try:
        task = args[0] if args else kwargs["task"]
        if _hidden(task) or isinstance(task.proc, _StepProc):
            return None
        proc = _StepProc(task, _policies(task, args, kwargs))
        traced = dataclasses.replace(task, proc=proc)
        if args:
            args = (traced, *args[1:])
        else:
            kwargs = {**kwargs, "task": traced}
        return args, kwargs, _branch_frame(task)
    except Exception:
        _log.debug("spangraph: could not instrument a LangGraph task", exc_info=True)
        return None


def wrap_run_with_retry(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    traced = _traced_call(args, kwargs)
    if traced is None:
        return wrapped(*args, **kwargs)
    args, kwargs, branch = traced
    if branch is None:
        return wrapped(*args, **kwargs)
    branch.attach()
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _finish(branch, exc)
        raise
    finally:
        branch.detach()
    branch.finish(None)
    return result


def wrap_arun_with_retry(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    async def run() -> Any:
        traced = _traced_call(args, kwargs)
        if traced is None:
            return await wrapped(*args, **kwargs)
        new_args, new_kwargs, branch = traced
        if branch is None:
            return await wrapped(*new_args, **new_kwargs)
        branch.attach()
        try:
            result = await wrapped(*new_args, **new_kwargs)
        except BaseException as exc:
            _finish(branch, exc)
            raise
        finally:
            branch.detach()
        branch.finish(None)
        return result

    return run()


def _bubble_up(exc: BaseException) -> bool:
    """LangGraph's control flow (interrupts, commands to the parent graph): no failure."""
    from langgraph.errors import GraphBubbleUp

    return isinstance(exc, GraphBubbleUp)


def _will_retry_on(policy: Any, exc: Exception) -> bool | None:
    """Whether ``policy`` retries ``exc`` — as LangGraph decides it — or None when that
    takes a predicate of the user's (never called here: it may have side effects)."""
    from langgraph.types import default_retry_on

    retry_on = policy.retry_on
    if isinstance(retry_on, type):
        return isinstance(exc, retry_on)
    if isinstance(retry_on, Sequence):
        return isinstance(exc, tuple(retry_on))
    if retry_on is default_retry_on:
        return bool(default_retry_on(exc))
    return None


def _cancelled_by_node(
    node: str, exc: BaseException | None, asynchronous: bool
) -> Exception | None:
    """LangGraph's ``NodeCancelledError`` when ``exc`` is an ``asyncio.CancelledError``
    the node raised itself, which LangGraph turns into a node failure; else None.

    As LangGraph tells them apart (``_is_user_raised_cancelled``): a sync node has no
    task to cancel, so its CancelledError is its own; an async node's is its own when
    nobody asked to cancel its task (``cancelling() == 0``) — a cancellation from outside
    (the caller's ``task.cancel()``, a sibling's failure) stays a cancellation."""
    if not isinstance(exc, asyncio.CancelledError):
        return None
    try:
        from langgraph.errors import NodeCancelledError
    except ImportError:  # a LangGraph that lets it end the task as a cancellation
        return None
    if asynchronous:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            return None
    error = NodeCancelledError(node)
    error.__cause__ = exc  # as LangGraph raises it: ``from`` the node's error
    return error


def _finish(frame: _Frame, exc: BaseException | None) -> None:
    if exc is not None and _bubble_up(exc):
        frame.handle.set(**{BUBBLE_UP: type(exc).__name__})
        exc = None
    frame.finish(exc)


def wrap_arun_with_timeout(
    wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    """LangGraph's node timeout (``add_node(..., timeout=)``) cancels the task running
    the node, then raises ``NodeTimeoutError``: the step sees only the cancellation.
    Tell it why before the cancellation reaches it (on the task's next turn)."""

    async def run() -> Any:
        try:
            return await wrapped(*args, **kwargs)
        except Exception as exc:
            from langgraph.errors import NodeTimeoutError  # there since node timeouts are

            if isinstance(exc, NodeTimeoutError):
                task = args[0] if args else kwargs.get("task")
                proc = getattr(task, "proc", None)
                if isinstance(proc, _StepProc) and proc._current is not None:
                    proc._timeouts[proc._current] = exc  # the attempt that ran: this one
            raise

    return run()


class _StepProc:
    """Stands in for ``task.proc``: each call is one attempt, one ``step`` span."""

    __slots__ = ("_attempt", "_current", "_policies", "_previous", "_proc", "_task", "_timeouts")

    def __init__(self, task: Any, policies: Sequence[Any]) -> None:
        self._task = task
        self._proc = task.proc
        self._policies = policies
        self._attempt = 0
        self._previous: _Frame | None = None
        self._current: _Frame | None = None
        self._timeouts: dict[_Frame, Exception] = {}
        """The NodeTimeoutError of each attempt LangGraph stopped for its node timeout."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proc, name)

    def _start(self) -> _Frame | None:
        try:
            self._attempt += 1
            task = self._task
            metadata = (task.config or {}).get("metadata") or {}
            attrs: dict[str, Any] = {
                NODE: task.name,
                SUPERSTEP: metadata.get("langgraph_step"),
                TRIGGERS: [str(t) for t in (task.triggers or ())],
                TASK_ID: task.id,
                SEND_ARG: _send_arg(task),
            }
            links: tuple[Link, ...] = ()
            if self._previous is not None:
                previous = self._previous.handle.span.get_span_context()
                links = (Link(previous, {sc.LINK_TYPE: sc.LINK_RETRY_OF}),)
            opts = _Options(
                kind=sc.KIND_STEP, name=task.name, attributes=attrs, retries=self._retries()
            )
            frame = own(_Frame(opts, task.name, self._attempt, links))
            self._current = frame
            return frame
        except Exception:
            _log.debug("spangraph: could not start a LangGraph step span", exc_info=True)
            return None

    def _retries(self) -> int:
        """The retries of the node's one policy, for ``spangraph.step.max_attempts``.

        LangGraph, not spangraph, retries the node, and its ``max_attempts`` is not
        checked: it may be ``float("inf")``, ``2.5`` or ``10**30``. Only a whole number
        within spangraph's own bound on retries is recorded (a larger integer would fail
        the OTLP export of the span's batch); every attempt is a span all the same."""
        if len(self._policies) != 1:
            return 0
        max_attempts = self._policies[0].max_attempts
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            return 0
        return max_attempts - 1 if 1 <= max_attempts <= MAX_RETRIES + 1 else 0

    def _end(self, frame: _Frame, exc: BaseException | None, *, asynchronous: bool = False) -> None:
        self._previous = frame
        timed_out = None
        timeout_error = self._timeouts.pop(frame, None)
        if timeout_error is not None:
            # stopped by LangGraph's node timeout (the cancellation it sent, whatever the
            # node made of it): the attempt failed with LangGraph's error
            exc = timeout_error
            timeout = getattr(exc, "timeout", None)
            timed_out = float(timeout) if isinstance(timeout, int | float) else 0.0
        try:
            cancelled_by_node = _cancelled_by_node(self._task.name, exc, asynchronous)
            if cancelled_by_node is not None:
                # the node raised CancelledError itself: LangGraph fails the node with
                # NodeCancelledError (never retried), so the attempt fails with it too
                exc = cancelled_by_node
            elif exc is not None and _bubble_up(exc):
                from langgraph.errors import GraphInterrupt

                interrupted = isinstance(exc, GraphInterrupt)
                frame.handle.set(**{BUBBLE_UP: type(exc).__name__, INTERRUPTED: interrupted})
                run = current_run_state()
                if interrupted and run is not None:
                    run.interrupted(self._task.name, exc)
                exc = None
            elif isinstance(exc, Exception):
                self._retry_events(frame, exc)
        except Exception:
            _log.debug("spangraph: could not record a LangGraph step's outcome", exc_info=True)
        frame.finish(exc, timed_out=timed_out)

    def _retry_events(self, frame: _Frame, exc: Exception) -> None:
        """``retry.scheduled`` / ``retry.exhausted`` as LangGraph's RetryPolicy decides
        (the first policy that retries the error applies). An error that no policy
        retries ends the node with this attempt: the step's ``max_attempts`` says so
        (``attempt 1/3`` would promise more), and ``langgraph.retry.retryable`` why."""
        if not self._policies:
            return
        policy = None
        for candidate in self._policies:
            matches = _will_retry_on(candidate, exc)
            if matches is None:  # a predicate of the user's decides: unknown here
                return
            if matches:
                policy = candidate
                break
        attempt = self._attempt
        span = frame.handle.span
        if policy is None:
            span.set_attribute(RETRYABLE, False)
            span.set_attribute(sc.STEP_MAX_ATTEMPTS, attempt)
            return
        if attempt >= policy.max_attempts:
            _add_event(span, sc.RETRY_EXHAUSTED, {sc.EVENT_ATTEMPT: attempt, **_error_attrs(exc)})
            return
        delay = min(
            policy.max_interval, policy.initial_interval * policy.backoff_factor ** (attempt - 1)
        )
        attrs = {sc.EVENT_ATTEMPT: attempt, sc.EVENT_DELAY_MS: delay * 1000, **_error_attrs(exc)}
        if policy.jitter:
            attrs[JITTER] = True  # LangGraph adds up to 1 s at random
        _add_event(span, sc.RETRY_SCHEDULED, attrs)

    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        frame = self._start()
        if frame is None:
            return self._proc.invoke(input, config, **kwargs)
        frame.attach()
        try:
            result = self._proc.invoke(input, config, **kwargs)
        except BaseException as exc:
            self._end(frame, exc)
            raise
        finally:
            frame.detach()
        self._end(frame, None)
        return result

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        frame = self._start()
        if frame is None:
            return await self._proc.ainvoke(input, config, **kwargs)
        frame.attach()
        try:
            result = await self._proc.ainvoke(input, config, **kwargs)
        except BaseException as exc:
            self._end(frame, exc, asynchronous=True)
            raise
        finally:
            frame.detach()
        self._end(frame, None)
        return result

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        frame = self._start()
        agen = self._proc.astream(input, config, **kwargs)
        while True:
            if frame is not None:
                frame.attach()
            try:
                value = await agen.__anext__()
            except StopAsyncIteration:
                if frame is not None:
                    self._end(frame, None)
                return
            except BaseException as exc:
                if frame is not None:
                    self._end(frame, exc, asynchronous=True)
                raise
            finally:
                if frame is not None:
                    frame.detach()
            try:
                yield value
            except BaseException as exc:  # closed or cancelled by LangGraph mid-stream
                if frame is not None:
                    self._end(frame, exc if not isinstance(exc, GeneratorExit) else None)
                    frame = None
                await agen.aclose()
                raise
