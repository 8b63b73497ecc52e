"""Sleeping, timeouts and cancellation in whichever async library runs the code: asyncio
(and anything on its loop: uvloop, anyio's asyncio backend) or trio (directly or through
anyio). trio is looked up in ``sys.modules`` only, never imported; asyncio is imported by
the code that runs on it (no asyncio, no asyncio cancellation: ``import spangraph`` in a
program without it does not load it)."""

from __future__ import annotations

import sys
from typing import Any, TypeGuard


def _trio() -> Any:
    """The trio module when the calling code runs in a trio task, else ``None``."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # not in trio (asyncio, or no loop at all)
        return None
    return trio


async def sleep(seconds: float) -> None:
    trio = _trio()
    if trio is None:
        import asyncio

        await asyncio.sleep(seconds)
    else:
        await trio.sleep(seconds)


def timeout(seconds: float) -> Any:
    """An async context manager that stops its block after ``seconds`` and raises
    ``TimeoutError`` from it, with ``expired()``: ``asyncio.timeout``, or its like on
    trio."""
    trio = _trio()
    if trio is not None:
        return _TrioTimeout(trio, seconds)
    import asyncio

    return asyncio.timeout(seconds)


class _TrioTimeout:
    """``asyncio.timeout`` on trio: a cancel scope with a deadline; the cancellation it
    causes leaves the block as ``TimeoutError``."""

    def __init__(self, trio: Any, seconds: float) -> None:
        self._trio, self._seconds = trio, seconds
        self._scope: Any = None

    async def __aenter__(self) -> _TrioTimeout:
        trio = self._trio
        self._scope = trio.CancelScope(deadline=trio.current_time() + self._seconds)
        self._scope.__enter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        suppressed = bool(self._scope.__exit__(exc_type, exc, tb))
        if self._scope.cancelled_caught:
            raise TimeoutError from exc
        return suppressed

    def expired(self) -> bool:
        return self._scope is not None and bool(self._scope.cancel_called)


class CancelledError(BaseException):
    """A coroutine ended without finishing, in a program that has not imported asyncio
    (trio, or a coroutine never run): a cancellation (:func:`is_cancellation`)."""


def cancelled_error(message: str) -> BaseException:
    """How spangraph records a coroutine ended without finishing: asyncio's
    ``CancelledError`` with ``message``, or, where asyncio was never imported, this
    module's (asyncio is not imported for it: this runs in finalizers and at exit)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return CancelledError(message)
    error: BaseException = asyncio.CancelledError(message)
    return error


def is_cancellation(exc: BaseException | None) -> TypeGuard[BaseException]:
    """Whether ``exc`` cancels the code rather than failing it: asyncio's
    ``CancelledError`` (or this module's), ``KeyboardInterrupt``, trio's ``Cancelled``,
    or greenlet's ``GreenletExit`` (a greenlet killed: gevent's ``kill()``, eventlet's)."""
    if isinstance(exc, KeyboardInterrupt | CancelledError):
        return True
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    if trio is not None and isinstance(exc, trio.Cancelled):
        return True
    greenlet = sys.modules.get("greenlet")
    exit_type = getattr(greenlet, "GreenletExit", None)
    return isinstance(exit_type, type) and isinstance(exc, exit_type)
