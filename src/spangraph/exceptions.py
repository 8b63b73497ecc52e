"""Errors raised by spangraph.

The tree::

    SpangraphError                  base of everything spangraph raises on purpose
    ├── ConfigurationError          a setting is invalid (names the setting)  — also a ValueError
    ├── StoreError                  the graph store answered with an error
    │   └── StoreUnavailableError   the graph store cannot be reached (transient: retried)
    │       └── StoreTimeoutError   the graph store did not answer a write in time
    ├── LiveUnavailableError        the Redis for live events cannot be reached (transient)
    └── EmbeddedServerError         the embedded FalkorDB/Redis server cannot start or stop

    ProgramExited                   never raised: the outcome of a span left open at exit

Span processors never raise any of these into user code: they count, log and retry.
They reach users only from explicit calls such as :func:`spangraph.configure`,
the query library and the CLI.
"""

from __future__ import annotations

from ._aio import CancelledError

__all__ = [
    "ConfigurationError",
    "EmbeddedServerError",
    "LiveUnavailableError",
    "ProgramExited",
    "SpangraphError",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
]


class SpangraphError(Exception):
    """Base class of every error spangraph raises on purpose."""


class ConfigurationError(SpangraphError, ValueError):
    """A setting is invalid. The message names the setting and the bad value."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class StoreError(SpangraphError):
    """The graph store rejected a statement (not retried)."""


class StoreUnavailableError(StoreError):
    """The graph store cannot be reached right now (retried with backoff)."""


class StoreTimeoutError(StoreUnavailableError):
    """The graph store did not answer a write within its timeout (it may still have
    applied it; writes are idempotent). Retried like any unavailability; a batch that
    times out again is split, so that one span the store cannot finish does not hold
    back the others."""


class LiveUnavailableError(SpangraphError):
    """The Redis server for live events cannot be reached right now."""


class EmbeddedServerError(SpangraphError):
    """The embedded FalkorDB/Redis server could not be started, found or stopped."""


class ProgramExited(CancelledError):
    """Never raised: the outcome spangraph records for a span of its own (a workflow, a
    step, any block or decorated function) still open when the program exits, which
    would otherwise never end: one held by a daemon thread, a task never finished, a
    generator never closed. At exit, before its processors flush, spangraph ends each
    such span, newest first, as ``cancelled`` (a workflow's ``workflow.cancelled`` event
    gives ``error.type`` ``spangraph.exceptions.ProgramExited``). A process killed
    (SIGKILL, ``os._exit``) runs no exit code: its spans stay ``running``."""
